"""apply / diff / delete against a real control plane (uvicorn in a thread) through the SDK."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli import _common as common
from modelyard.cli.deploy import register
from modelyard.client import Client
from modelyard.deploy.apply import apply, delete, diff
from modelyard.deploy.plan import Plan, plan_spec
from modelyard.deploy.spec import parse_file
from modelyard.errors import NotFound
from modelyard.settings import Settings
from tests.servers import RunningControlPlane, run_control_plane

pytestmark = pytest.mark.slow

SPEC = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: iris, service: prod}
spec:
  framework: sklearn
  predictors:
    - name: a
      model: {name: iris, project: demo, version: 1}
      trafficWeight: 90
      autoScale: {minReplicas: 1, maxReplicas: 10, targetInflight: 8}
      batching: {maxBatchSize: 32, maxDelayMs: 5}
      preprocess: ./preprocess.py
    - name: b
      model: {name: iris, project: demo, version: 2}
      trafficWeight: 10
"""
PREPROCESS = (
    "class Preprocess:\n"
    "    def preprocess(self, body, state, collect_custom_statistics_fn=None):\n"
    "        return body\n"
)


@pytest.fixture
def control_plane(settings: Settings) -> Iterator[RunningControlPlane]:
    with run_control_plane(settings) as running:
        yield running


@pytest.fixture
def client(control_plane: RunningControlPlane) -> Iterator[Client]:
    with Client(control_plane.url, settings=control_plane.settings, timeout=10) as c:
        yield c


@pytest.fixture
def models(client: Client, tmp_path: Path) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    out = []
    for c in (1.0, 0.5):
        model = LogisticRegression(C=c).fit([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], [0, 1, 0, 1])
        path = tmp_path / f"iris-{c}.pkl"
        path.write_bytes(pickle.dumps(model))
        out.append(client.upload_model(path, name="iris", project="demo", framework="sklearn"))
    return out


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    (tmp_path / "preprocess.py").write_text(PREPROCESS)
    file = tmp_path / "inference.yaml"
    file.write_text(SPEC)
    return file


def revision(client: Client) -> int:
    return int(client.get_service("prod")["revision"])


def endpoints(client: Client) -> dict[str, dict]:
    return {e["key"]: e for e in client.list_endpoints("prod")}


def plans(file: Path) -> list[Plan]:
    return [plan_spec(s) for s in parse_file(file)]


def test_apply_is_idempotent_diff_shows_changes_delete_removes(
    client: Client, models: list[dict], spec_file: Path
) -> None:
    (before,) = diff(client, plans(spec_file))
    assert before.create_service and before.changed
    assert [(c.action, c.key) for c in before.endpoints] == [("create", "iris/a"), ("create", "iris/b")]
    with pytest.raises(NotFound):
        client.get_service("prod")  # diff wrote nothing

    (first,) = apply(client, plans(spec_file))
    assert first.changed
    current = endpoints(client)
    assert set(current) == {"iris/a", "iris/b"}
    a, b = current["iris/a"], current["iris/b"]
    assert a["model_id"] == models[0]["id"] and b["model_id"] == models[1]["id"]
    assert a["engine"] == "sklearn"
    assert a["options"] == {"max_batch_size": 32, "max_batch_delay_ms": 5} and b["options"] == {}
    assert a["preprocess"]["sha256"] == hashlib.sha256(PREPROCESS.encode()).hexdigest()
    assert b["preprocess"] is None
    assert first.canary is not None and first.canary.action == "create"
    (canary,) = client.list_canaries("prod")
    assert canary["canary"]["endpoint"] == "iris"
    assert canary["canary"]["targets"] == ["iris/a", "iris/b"] and canary["canary"]["weights"] == [90, 10]
    client.add_endpoint("prod", "other", "1", engine="sklearn", model_id=models[0]["id"])
    rev = revision(client)

    (second,) = apply(client, plans(spec_file))
    assert not second.changed
    assert [c.action for c in second.endpoints] == ["unchanged", "unchanged"]
    assert revision(client) == rev, "a second apply of the same file must not write"

    spec_file.write_text(SPEC.replace("maxBatchSize: 32", "maxBatchSize: 16").split("    - name: b")[0])
    (spec_file.parent / "preprocess.py").write_text(PREPROCESS + "# v2\n")
    (changes,) = diff(client, plans(spec_file))
    text = changes.render()
    assert "~ iris/a" in text and "options.max_batch_size: 32 → 16" in text
    assert "preprocess: preprocess.py (sha256" in text
    assert "- iris/b" in text and "other/1" not in text
    assert revision(client) == rev, "diff must not write"

    apply(client, plans(spec_file))
    assert revision(client) > rev
    current = endpoints(client)
    assert set(current) == {"iris/a", "other/1"}
    assert current["iris/a"]["options"]["max_batch_size"] == 16

    (removed,) = delete(client, plans(spec_file))
    assert [(c.action, c.key) for c in removed.endpoints] == [("delete", "iris/a")]
    assert set(endpoints(client)) == {"other/1"}, "delete leaves what the spec does not own"
    (again,) = delete(client, plans(spec_file))
    assert not again.endpoints


def test_model_selectors_and_apply_time_errors(client: Client, models: list[dict], tmp_path: Path) -> None:
    file = tmp_path / "inference.yaml"
    file.write_text(
        SPEC.replace("{name: iris, project: demo, version: 1}", "{name: iris, project: demo}")
        .replace("{name: iris, project: demo, version: 2}", "{id: " + models[0]["id"] + "}")
        .replace("      preprocess: ./preprocess.py\n", "")
    )
    apply(client, plans(file))
    current = endpoints(client)
    assert current["iris/a"]["model_id"] == models[1]["id"]  # the newest match
    assert current["iris/b"]["model_id"] == models[0]["id"]
    file.write_text(
        SPEC.replace("version: 2}", "version: 9}").replace("      preprocess: ./preprocess.py\n", "")
    )
    with pytest.raises(
        NotFound,
        match=r"inference.yaml:13: spec.predictors\[1\].model: "
        r"no model 'iris' in project 'demo' with version 9",
    ):
        diff(client, plans(file))


def test_cli_apply_diff_delete(
    control_plane: RunningControlPlane, models: list[dict], spec_file: Path
) -> None:
    app = typer.Typer(cls=common.Group)
    register(app)

    @app.callback()
    def _root() -> None:
        common.set_globals(common.Globals())

    runner = CliRunner()
    env = {
        "MODELYARD_URL": control_plane.url,
        "MODELYARD_HOME": str(control_plane.home),
        "MODELYARD_TOKEN": None,
    }

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    assert "+ iris/a" in run("diff", "-f", str(spec_file), "--exit-code", code=2)
    out = run("apply", "-f", str(spec_file))
    assert "+ iris/a" in out and "+ iris/b" in out
    out = run("apply", "-f", str(spec_file))
    assert "= iris/a (unchanged)" in out and "no changes" in out
    run("diff", "-f", str(spec_file), "--exit-code")
    assert "- iris/a" in run("delete", "-f", str(spec_file))
    bad = spec_file.parent / "bad.yaml"
    bad.write_text(SPEC.replace("trafficWeight: 10", "trafficWeight: -1"))
    assert f"error: {bad}:15: spec.predictors[1].trafficWeight: must be ≥ 0" in run(
        "apply", "-f", str(bad), code=1
    )
