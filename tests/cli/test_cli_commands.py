"""The ``modelyard`` CLI against a real control plane (uvicorn in a thread), in-process."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.client import Client
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import RunningControlPlane, free_port, run_control_plane


def _upload(run_cli: CliHarness, path: Path, *extra: str, name: str = "iris") -> str:
    result = run_cli(
        "model",
        "upload",
        "--name",
        name,
        "--project",
        "demo",
        "--framework",
        "sklearn",
        "--path",
        str(path),
        *extra,
    )
    return result.stdout.strip().splitlines()[-1]


# -- services -------------------------------------------------------------------------------


def test_service_create_list_remove(run_cli: CliHarness, client: Client) -> None:
    run_cli("service", "create", "fraud", "--description", "fraud scoring")
    assert client.get_service("fraud")["description"] == "fraud scoring"

    listed = run_cli("service", "list")
    assert "fraud" in listed.stdout and "fraud scoring" in listed.stdout
    as_json = json.loads(run_cli("service", "list", "--json").stdout)
    assert "fraud" in {s["name"] for s in as_json}

    taken = run_cli("service", "create", "fraud", ok=False)
    assert "fraud" in taken.stderr

    run_cli("service", "remove", "fraud")
    assert "fraud" not in {s["name"] for s in client.list_services()}
    missing = run_cli("service", "remove", "fraud", ok=False)
    assert "fraud" in missing.stderr


# -- models ---------------------------------------------------------------------------------


def test_model_upload_prints_id_alone_on_last_line(
    run_cli: CliHarness, client: Client, model_file: Path
) -> None:
    result = run_cli(
        "model",
        "upload",
        "--name",
        "iris",
        "--project",
        "demo",
        "--framework",
        "sklearn",
        "--path",
        str(model_file),
        "--tags",
        "a",
        "b",
        "--metadata",
        "acc=0.97",
        "owner=me",
        "--publish",
    )
    last = result.stdout.strip().splitlines()[-1]
    assert last == last.strip() and " " not in last
    model = client.get_model(last)
    assert model["name"] == "iris" and model["project"] == "demo"
    assert sorted(model["tags"]) == ["a", "b"]
    assert model["published"] is True
    assert model["metadata"] == {"acc": 0.97, "owner": "me"}
    assert model["artifact"]["filename"] == "model.pkl"
    assert model["artifact"]["size"] == model_file.stat().st_size


def test_model_upload_folder_and_url(
    run_cli: CliHarness, client: Client, control_plane: RunningControlPlane, tmp_path: Path
) -> None:
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "variables" / "v.bin").write_bytes(b"v")
    folder_id = _upload(run_cli, folder, name="tf")
    assert client.get_model(folder_id)["artifact"]["kind"] == "folder"

    remote = tmp_path / "remote.onnx"
    remote.write_bytes(b"onnx bytes")
    by_url = ("model", "upload", "--name", "net", "--project", "demo", "--framework", "onnx",
              "--url", str(remote))  # fmt: skip
    refused = run_cli(*by_url, ok=False)  # a path on the control plane's disk: not by default
    assert "path on the control plane's disk" in refused.stderr and "--path" in refused.stderr
    settings = control_plane.settings
    allowing = settings.model_copy(update={"model_url_schemes": [*settings.model_url_schemes, "file"]})
    with run_control_plane(allowing) as other:
        result = CliHarness(cli_env(other.url, other.home))(*by_url)
    url_model = client.get_model(result.stdout.strip().splitlines()[-1])
    assert url_model["artifact"]["size"] == len(b"onnx bytes")

    neither = run_cli("model", "upload", "--name", "x", "--project", "p", "--framework", "sklearn", ok=False)
    assert "--path" in neither.stderr and "--url" in neither.stderr


def test_model_list_show_publish_tag(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    first = _upload(run_cli, model_file)
    second = _upload(run_cli, model_file, "--tags", "prod")

    table = run_cli("model", "list").stdout
    assert first in table and second in table

    listed = json.loads(run_cli("model", "list", "--json", "--tags", "prod").stdout)
    assert [m["id"] for m in listed] == [second]
    assert json.loads(run_cli("model", "list", "--json", "--published").stdout) == []
    assert len(json.loads(run_cli("model", "list", "--json", "--name", "ir.*").stdout)) == 2
    assert json.loads(run_cli("model", "list", "--json", "--project", "other").stdout) == []

    shown = json.loads(run_cli("model", "show", first).stdout)
    assert shown["id"] == first and shown["version"] == 1

    run_cli("model", "publish", first)
    assert client.get_model(first)["published"] is True
    assert [m["id"] for m in json.loads(run_cli("model", "list", "--json", "--published").stdout)] == [first]

    run_cli("model", "tag", first, "--add", "x", "y", "z")
    assert sorted(client.get_model(first)["tags"]) == ["x", "y", "z"]
    run_cli("model", "tag", first, "--add", "w", "--add", "v", "--remove", "y", "x")
    assert sorted(client.get_model(first)["tags"]) == ["v", "w", "z"]

    missing = run_cli("model", "show", "no-such-model", ok=False)
    assert "no-such-model" in missing.stderr


def test_model_remove_refused_while_in_use(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    model_id = _upload(run_cli, model_file)
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--version",
        "1",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
    )

    refused = run_cli("model", "remove", model_id, ok=False)
    assert "iris/1" in refused.stderr
    assert client.get_model(model_id)["id"] == model_id

    run_cli("endpoint", "remove", "--endpoint", "iris", "--version", "1")
    run_cli("model", "remove", model_id)
    assert model_id not in {m["id"] for m in client.list_models()}


# -- endpoints ------------------------------------------------------------------------------


def test_endpoint_add_with_model_id_and_clearml_flags(
    run_cli: CliHarness, client: Client, model_file: Path
) -> None:
    model_id = _upload(run_cli, model_file)
    result = run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--version",
        "1",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
        "--input-name",
        "x0",
        "x1",
        "--input-type",
        "float32",
        "int64",
        "--input-size",
        "[1,4]",
        "[-1]",
        "--output-name",
        "y",
        "--output-type",
        "int64",
        "--output-size",
        "-1",
        "--option",
        "max_batch_size=8",
        "--option",
        "device=cpu",
        "--aux",
        "threshold=0.5",
        'labels=["a","b"]',
    )
    assert "iris/1" in result.stdout
    ep = client.get_endpoint("default", "iris", "1")
    assert ep["model_id"] == model_id
    assert ep["inputs"] == [
        {"name": "x0", "dtype": "float32", "shape": [1, 4]},
        {"name": "x1", "dtype": "int64", "shape": [-1]},
    ]
    assert ep["outputs"] == [{"name": "y", "dtype": "int64", "shape": [-1]}]
    assert ep["options"] == {"max_batch_size": 8, "device": "cpu"}
    assert ep["auxiliary"] == {"threshold": 0.5, "labels": ["a", "b"]}


def test_endpoint_add_single_shape_as_numbers(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    model_id = _upload(run_cli, model_file)
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "mnist",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
        "--input-size",
        "1",
        "28",
        "28",
        "--input-name",
        "INPUT__0",
        "--input-type",
        "float32",
    )
    ep = client.get_endpoint("default", "mnist")
    assert ep["inputs"] == [{"name": "INPUT__0", "dtype": "float32", "shape": [1, 28, 28]}]
    assert ep["version"] == ""


def test_endpoint_add_with_model_query(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    old = _upload(run_cli, model_file, "--publish")
    newest_published = _upload(run_cli, model_file, "--publish", "--tags", "prod", "eu")
    _upload(run_cli, model_file)  # newest, but not published
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--version",
        "2",
        "--engine",
        "sklearn",
        "--name",
        "iris",
        "--project",
        "demo",
        "--published",
    )
    assert client.get_endpoint("default", "iris/2")["model_id"] == newest_published

    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "tagged",
        "--engine",
        "sklearn",
        "--name",
        "iris",
        "--tags",
        "prod",
        "eu",
    )
    assert client.get_endpoint("default", "tagged")["model_id"] == newest_published
    assert old != newest_published

    none = run_cli(
        "endpoint", "add", "--endpoint", "x", "--engine", "sklearn", "--name", "nothing-matches", ok=False
    )
    assert none.stderr.startswith("error: ")

    both = run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "x",
        "--engine",
        "sklearn",
        "--model-id",
        old,
        "--name",
        "iris",
        ok=False,
    )
    assert "--model-id" in both.stderr


def test_endpoint_add_with_preprocess_file(
    run_cli: CliHarness, client: Client, model_file: Path, tmp_path: Path
) -> None:
    code = tmp_path / "preprocess.py"
    code.write_text("class Preprocess:\n    pass\n")
    model_id = _upload(run_cli, model_file)
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
        "--preprocess",
        str(code),
    )
    ref = client.get_endpoint("default", "iris")["preprocess"]
    assert ref["filename"] == "preprocess.py" and ref["kind"] == "file"
    assert client.download(ref["sha256"], tmp_path / "back.py").read_bytes() == code.read_bytes()


def test_endpoint_bad_flags_are_clear_errors(run_cli: CliHarness, model_file: Path) -> None:
    model_id = _upload(run_cli, model_file)
    base = ("endpoint", "add", "--endpoint", "iris", "--engine", "sklearn", "--model-id", model_id)
    mismatch = run_cli(*base, "--input-name", "a", "b", "--input-type", "float32", ok=False)
    assert "--input-type" in mismatch.stderr
    dtype = run_cli(*base, "--input-name", "a", "--input-type", "floaty", ok=False)
    assert "floaty" in dtype.stderr
    size = run_cli(*base, "--input-name", "a", "--input-size", "[1,", ok=False)
    assert "--input-size" in size.stderr
    option = run_cli(*base, "--option", "novalue", ok=False)
    assert "key=value" in option.stderr
    engine = run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--engine",
        "no-such-engine",
        "--model-id",
        model_id,
        ok=False,
    )
    assert "no-such-engine" in engine.stderr
    for verb in ("add", "update"):
        verb_base = ("endpoint", verb, "--endpoint", "iris", "--engine", "sklearn", "--model-id", model_id)
        both = run_cli(*verb_base, "--name", "iris", ok=False)
        assert "not both" in both.stderr and "--model-id" in both.stderr
        no_code = run_cli(*verb_base, "--preprocess", str(model_file.parent / "nope.py"), ok=False)
        assert "nope.py" in no_code.stderr and "does not exist" in no_code.stderr


def test_endpoint_update_list_remove(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    first = _upload(run_cli, model_file)
    second = _upload(run_cli, model_file)
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "iris",
        "--version",
        "1",
        "--engine",
        "sklearn",
        "--model-id",
        first,
        "--input-name",
        "x",
        "--input-type",
        "float32",
        "--input-size",
        "[-1,4]",
        "--option",
        "max_batch_size=4",
        "device=cpu",
    )
    revision = client.get_service("default")["revision"]

    run_cli(
        "endpoint",
        "update",
        "--endpoint",
        "iris",
        "--version",
        "1",
        "--model-id",
        second,
        "--input-type",
        "float64",
        "--option",
        "max_batch_size=16",
        "device=",
    )
    ep = client.get_endpoint("default", "iris/1")
    assert ep["model_id"] == second
    assert ep["inputs"] == [{"name": "x", "dtype": "float64", "shape": [-1, 4]}]
    assert ep["options"] == {"max_batch_size": 16}
    assert ep["engine"] == "sklearn"
    assert client.get_service("default")["revision"] > revision

    table = run_cli("endpoint", "list").stdout
    assert "iris/1" in table and "no replicas" in table
    listed = json.loads(run_cli("endpoint", "list", "--json").stdout)
    assert [e["key"] for e in listed] == ["iris/1"]
    shown = json.loads(run_cli("endpoint", "show", "--endpoint", "iris/1").stdout)
    assert shown["model_id"] == second

    run_cli("endpoint", "remove", "--endpoint", "iris", "--version", "1")
    assert client.list_endpoints("default") == []
    again = run_cli("endpoint", "remove", "--endpoint", "iris", "--version", "1", ok=False)
    assert "iris" in again.stderr


def test_endpoint_list_shows_replica_state(
    run_cli: CliHarness, client: Client, control_plane: RunningControlPlane, model_file: Path
) -> None:
    model_id = _upload(run_cli, model_file)
    run_cli("endpoint", "add", "--endpoint", "iris", "--engine", "sklearn", "--model-id", model_id)
    revision = client.get_service("default")["revision"]
    import httpx

    answer = httpx.put(
        f"{control_plane.url}/api/services/default/replicas/replica-a",
        json={"revision": revision, "endpoints": [{"key": "iris", "state": "ready"}]},
        headers={"authorization": f"Bearer {control_plane.admin_token}"},
    )
    assert answer.status_code == 204, answer.text
    table = run_cli("endpoint", "list").stdout
    assert "ready 1/1" in table

    status = run_cli("status").stdout
    assert "replica-a" in status and "ready" in status
    as_json = json.loads(run_cli("status", "--json").stdout)
    assert as_json["replicas"][0]["id"] == "replica-a"


def test_service_flag_and_env(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    client.create_service("other")
    model_id = _upload(run_cli, model_file)
    run_cli(
        "endpoint",
        "add",
        "--service",
        "other",
        "--endpoint",
        "a",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
    )
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "b",
        "--engine",
        "sklearn",
        "--model-id",
        model_id,
        MODELYARD_SERVICE="other",
    )
    assert {e["key"] for e in client.list_endpoints("other")} == {"a", "b"}


# -- tokens and auth ------------------------------------------------------------------------


def test_tokens_create_list_revoke(run_cli: CliHarness, control_plane: RunningControlPlane) -> None:
    created = run_cli("token", "create", "ci", "--role", "reader")
    plaintext = created.stdout.strip().splitlines()[-1]
    assert plaintext and " " not in plaintext
    assert "ci" in run_cli("token", "list").stdout
    assert {"ci"} <= {t["name"] for t in json.loads(run_cli("token", "list", "--json").stdout)}

    forbidden = run_cli(
        "--url", control_plane.url, "service", "create", "x", ok=False, MODELYARD_TOKEN=plaintext
    )
    assert forbidden.stderr.startswith("error: ")

    run_cli("token", "revoke", "ci")
    assert "ci" not in {t["name"] for t in json.loads(run_cli("token", "list", "--json").stdout)}


def test_missing_token_is_a_clear_error(control_plane: RunningControlPlane, tmp_path: Path) -> None:
    empty_home = tmp_path / "elsewhere"
    empty_home.mkdir()
    run_cli = CliHarness(cli_env(control_plane.url, empty_home))
    result = run_cli("service", "create", "x", ok=False)
    assert "token" in result.stderr.lower()
    assert "MODELYARD_TOKEN" in result.stderr
    assert run_cli("service", "list").exit_code == 0  # reads are open


def test_wrong_token_is_a_clear_error(run_cli: CliHarness) -> None:
    result = run_cli("--token", "not-a-token", "service", "create", "x", ok=False)
    assert "token" in result.stderr.lower()
    env_token = run_cli("service", "create", "x", ok=False, MODELYARD_TOKEN="nope")
    assert "token" in env_token.stderr.lower()


def test_control_plane_down_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run_cli = CliHarness(cli_env(url, tmp_path))
    result = run_cli("model", "list", ok=False)
    assert f"cannot reach the control plane at {url}" in result.stderr
    result = run_cli("--url", url, "endpoint", "list", ok=False)
    assert "cannot reach the control plane" in result.stderr
