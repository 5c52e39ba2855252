"""``modelyard.Client`` against a real control plane served by uvicorn in a thread."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

import modelyard
from modelyard import errors
from modelyard.client import Client, pack_folder
from modelyard.config import ServiceConfig, TensorSpec
from modelyard.settings import Settings
from tests.servers import RunningControlPlane, free_port, run_control_plane


def _model_file(tmp_path: Path, size: int = 3 * 1024 * 1024 + 17) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return path


def test_client_is_exported_lazily() -> None:
    assert modelyard.Client is Client


def test_defaults_come_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text("from-file\n")
    monkeypatch.setenv("MODELYARD_HOME", str(home))
    monkeypatch.setenv("MODELYARD_URL", "http://example.invalid:1234/")
    monkeypatch.delenv("MODELYARD_TOKEN", raising=False)
    with Client() as c:
        assert c.url == "http://example.invalid:1234"
        assert c.token == "from-file"
    monkeypatch.setenv("MODELYARD_TOKEN", "from-env")
    with Client() as c:
        assert c.token == "from-env"
    with Client("http://other:1", token="explicit") as c:
        assert (c.url, c.token) == ("http://other:1", "explicit")


def test_services(client: Client) -> None:
    assert "default" in {s["name"] for s in client.list_services()}
    created = client.create_service("fraud", description="scores payments")
    assert created["name"] == "fraud" and created["description"] == "scores payments"
    assert client.get_service("fraud")["revision"] == created["revision"]
    with pytest.raises(errors.Conflict, match="fraud"):
        client.create_service("fraud")
    with pytest.raises(errors.BadRequest):
        client.create_service("no/slashes")
    client.remove_service("fraud")
    with pytest.raises(errors.NotFound, match="fraud"):
        client.get_service("fraud")


def test_upload_file_streams_and_downloads_back(client: Client, tmp_path: Path) -> None:
    path = _model_file(tmp_path)
    calls: list[tuple[int, int]] = []
    ref = client.upload_file(path, progress=lambda done, total: calls.append((done, total)))
    data = path.read_bytes()
    assert ref == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "filename": "model.pkl",
        "kind": "file",
    }
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
    assert len(calls) >= 4  # chunked: 1 MiB at a time

    back = client.download(ref["sha256"], tmp_path / "back.bin")
    assert back.read_bytes() == data
    into_dir = client.download(ref["sha256"], tmp_path)
    assert into_dir == tmp_path / ref["sha256"]

    with pytest.raises(errors.NotFound):
        client.download("0" * 64, tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()
    with pytest.raises(errors.NotFound, match="nope"):
        client.upload_file(tmp_path / "nope")


def test_upload_folder_is_packed(client: Client, tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .impl import Preprocess\n")
    (pkg / "impl.py").write_text("class Preprocess: ...\n")
    (pkg / "__pycache__" / "impl.cpython-311.pyc").write_bytes(b"junk")
    ref = client.upload_file(pkg)
    assert ref["kind"] == "folder" and ref["filename"] == "mypkg.tar.gz"
    again = client.upload_file(pkg)
    assert again["sha256"] == ref["sha256"]  # packing is deterministic

    blob = client.download(ref["sha256"], tmp_path / "pkg.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["mypkg/__init__.py", "mypkg/impl.py"]


def test_pack_folder_ignores_mtimes(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    first = pack_folder(folder, tmp_path / "1.tar.gz").read_bytes()
    (folder / "a.txt").write_text("a")  # touched, same content
    second = pack_folder(folder, tmp_path / "2.tar.gz").read_bytes()
    assert first == second


def test_models(client: Client, tmp_path: Path) -> None:
    path = _model_file(tmp_path, 1000)
    first = client.upload_model(path, "iris", "demo", "sklearn", tags=["a"], metadata={"acc": 0.9})
    assert first["version"] == 1 and first["tags"] == ["a"] and first["published"] is False
    assert first["metadata"] == {"acc": 0.9}
    assert first["artifact"]["filename"] == "model.pkl"
    second = client.upload_model(path, "iris", "demo", "sklearn", publish=True)
    assert second["version"] == 2 and second["published"] is True
    other = client.upload_model(path, "wine", "demo", "xgboost", tags=["a", "b"])

    assert [m["id"] for m in client.list_models()] == [other["id"], second["id"], first["id"]]
    assert [m["id"] for m in client.list_models(name="iris")] == [second["id"], first["id"]]
    assert [m["id"] for m in client.list_models(name="i.*")] == [second["id"], first["id"]]
    assert client.list_models(name="ir") == []  # full match
    assert [m["id"] for m in client.list_models(tags=["a", "b"])] == [other["id"]]
    assert [m["id"] for m in client.list_models(published=True)] == [second["id"]]
    assert [m["id"] for m in client.list_models(framework="xgboost")] == [other["id"]]
    assert len(client.list_models(limit=1)) == 1

    assert client.publish_model(first["id"])["published"] is True
    assert sorted(client.tag_model(first["id"], add=["x", "y"])["tags"]) == ["a", "x", "y"]
    assert sorted(client.tag_model(first["id"], remove=["a"])["tags"]) == ["x", "y"]
    assert client.get_model(first["id"])["tags"] == client.tag_model(first["id"])["tags"]

    client.remove_model(other["id"])
    with pytest.raises(errors.NotFound):
        client.get_model(other["id"])


def test_register_model_url(client: Client, settings: Settings, tmp_path: Path) -> None:
    remote = tmp_path / "remote.onnx"
    remote.write_bytes(b"onnx!")
    with pytest.raises(errors.BadRequest, match="path on the control plane's disk"):
        client.register_model_url(str(remote), "net", "demo", "onnx")  # refused by default
    allowing = settings.model_copy(update={"model_url_schemes": [*settings.model_url_schemes, "file"]})
    with run_control_plane(allowing) as running, Client(running.url, settings=allowing) as c:
        model = c.register_model_url(str(remote), "net", "demo", "onnx", tags=["r"])
    assert model["artifact"]["sha256"] == hashlib.sha256(b"onnx!").hexdigest()
    assert model["url"] == str(remote)


def test_endpoints_and_config(client: Client, tmp_path: Path) -> None:
    path = _model_file(tmp_path, 500)
    model = client.upload_model(path, "iris", "demo", "sklearn", publish=True)
    code = tmp_path / "preprocess.py"
    code.write_text("class Preprocess: ...\n")
    before = client.get_service("default")["revision"]

    ep = client.add_endpoint(
        "default",
        "iris",
        version="1",
        engine="sklearn",
        model_id=model["id"],
        preprocess=code,
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
        outputs=[{"name": "y", "dtype": "int64"}],
        options={"max_batch_size": 8},
        auxiliary={"k": "v"},
    )
    assert ep["key"] == "iris/1" and ep["model_id"] == model["id"]
    assert ep["preprocess"]["filename"] == "preprocess.py"
    assert ep["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]

    by_query = client.add_endpoint(
        "default",
        "iris",
        version="2",
        engine="sklearn",
        model_query={"name": "iris", "project": "demo", "published": True},
    )
    assert by_query["model_id"] == model["id"]
    with pytest.raises(errors.NotFound):
        client.add_endpoint("default", "x", engine="sklearn", model_query={"name": "none"})
    with pytest.raises(errors.NotFound):
        client.add_endpoint("default", "x", engine="sklearn", model_id="missing")

    updated = client.update_endpoint("default", "iris", "1", options={"max_batch_size": 16})
    assert updated["options"] == {"max_batch_size": 16}
    assert updated["inputs"] == ep["inputs"]
    assert client.get_endpoint("default", "iris/1")["options"] == {"max_batch_size": 16}
    assert [e["key"] for e in client.list_endpoints("default")] == ["iris/1", "iris/2"]

    config = client.get_config("default")
    assert isinstance(config, ServiceConfig)
    assert config.revision > before
    assert set(config.endpoint_map()) == {"iris/1", "iris/2"}
    assert config.endpoint_map()["iris/1"].options == {"max_batch_size": 16}
    assert client.get_config("default", after=config.revision, wait=0) is None

    with pytest.raises(errors.Conflict, match="iris/"):
        client.remove_model(model["id"])
    client.remove_endpoint("default", "iris", "1")
    client.remove_endpoint("default", "iris/2")
    assert client.list_endpoints("default") == []
    newer = client.get_config("default", after=config.revision, wait=0)
    assert newer is not None and newer.endpoints == []
    client.remove_model(model["id"])

    status = client.status("default")
    assert status["service"] == "default" and status["replicas"] == []


def test_tokens_and_roles(client: Client, control_plane: RunningControlPlane) -> None:
    created = client.create_token("ci", role="reader")
    assert created["role"] == "reader" and created["token"]
    assert {"ci"} <= {t["name"] for t in client.list_tokens()}

    reader = Client(control_plane.url, token=created["token"], settings=control_plane.settings)
    with reader:
        assert reader.list_services()
        with pytest.raises(errors.Forbidden, match="token given"):
            reader.create_service("nope")
        client.revoke_token("ci")
        with pytest.raises(errors.Forbidden):
            reader.create_service("nope")


def test_no_token_names_where_to_put_one(control_plane: RunningControlPlane, tmp_path: Path) -> None:
    elsewhere = Settings(home=tmp_path / "empty", _env_file=None)  # type: ignore[call-arg]
    with Client(control_plane.url, settings=elsewhere) as anonymous:
        assert anonymous.token is None
        assert anonymous.list_services()  # reads are open by default
        with pytest.raises(errors.Unauthorized) as caught:
            anonymous.create_service("x")
    assert "MODELYARD_TOKEN" in str(caught.value)
    assert str(elsewhere.token_file()) in str(caught.value)


def test_control_plane_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings(home=tmp_path, _env_file=None)  # type: ignore[call-arg]
    with Client(url, settings=settings) as c:
        with pytest.raises(errors.Unavailable, match=f"cannot reach the control plane at {url}"):
            c.list_services()
        with pytest.raises(errors.Unavailable, match="cannot reach the control plane"):
            c.upload_file(_model_file(tmp_path, 10))
        with pytest.raises(errors.Unavailable, match="cannot reach the inference server"):
            c.infer("iris", data={"x": 1})
