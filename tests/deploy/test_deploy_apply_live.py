"""apply / diff / delete against a real control plane (uvicorn in a thread) through the SDK."""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli import _common as common
from modelyard.cli.deploy import register
from modelyard.client import Client
from modelyard.deploy.apply import apply, delete, diff
from modelyard.deploy.plan import Plan, plan_spec
from modelyard.deploy.spec import parse_file
from modelyard.errors import NotFound, RevisionConflict
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


# -- concurrent writers --------------------------------------------------------------------------

WRITES = {"create_service", "add_endpoint", "add_canary", "remove_canary", "remove_endpoint"}


class Interleaved:
    """The SDK client, with another writer's change slipped in before some of apply's writes.

    ``meddle(n)`` runs before apply's ``n``-th write (1-based), through another client: the
    deterministic version of two people changing one service at once.
    """

    def __init__(self, client: Client, meddle: Callable[[int], None]) -> None:
        self.client = client
        self.meddle = meddle
        self.calls = 0
        self.conflicts = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if name not in WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.meddle(self.calls)
            try:
                return attr(*args, **kwargs)
            except RevisionConflict:
                self.conflicts += 1
                raise

        return write


def test_a_change_between_plan_and_write_is_not_lost_apply_plans_again(
    client: Client, control_plane: RunningControlPlane, models: list[dict], spec_file: Path
) -> None:
    apply(client, plans(spec_file))
    spec_file.write_text(SPEC.replace("trafficWeight: 90", "trafficWeight: 70").replace("10\n", "30\n"))
    other = Client(control_plane.url, settings=control_plane.settings, timeout=10)

    def meddle(n: int) -> None:
        if n == 1:  # after apply planned "iris/a unchanged, canary 90/10 -> 70/30"
            other.merge_endpoint("prod", "iris", "a", options={"max_batch_size": 99})
            other.add_endpoint("prod", "other", "1", engine="sklearn", model_id=models[0]["id"])

    interleaved = Interleaved(client, meddle)
    (changes,) = apply(interleaved, plans(spec_file))
    other.close()
    assert interleaved.conflicts == 1, "the first write was made against the planned revision"
    assert changes.attempts == 2 and changes.writes == 2  # canary, then iris/a set back
    assert "planned 2 times" in changes.render()
    (after,) = diff(client, plans(spec_file))
    assert not after.changed, after.render()  # without If-Match: iris/a kept max_batch_size 99
    current = endpoints(client)
    assert current["iris/a"]["options"] == {"max_batch_size": 32, "max_batch_delay_ms": 5}
    assert "other/1" in current, "a change to what the spec does not own stays"
    (canary,) = client.list_canaries("prod")
    assert canary["canary"]["weights"] == [70, 30]


def test_a_conflict_half_way_through_continues_from_what_was_written(
    client: Client, control_plane: RunningControlPlane, models: list[dict], spec_file: Path
) -> None:
    apply(client, plans(spec_file))
    spec_file.write_text(
        SPEC.replace("maxBatchSize: 32", "maxBatchSize: 16").replace("trafficWeight: 90", "trafficWeight: 80")
        .replace("trafficWeight: 10", "trafficWeight: 20")
    )  # fmt: skip
    other = Client(control_plane.url, settings=control_plane.settings, timeout=10)

    def meddle(n: int) -> None:
        if n == 2:  # iris/a is written; the canary is next
            other.merge_endpoint("prod", "iris", "b", options={"max_batch_size": 7})

    interleaved = Interleaved(client, meddle)
    rev = revision(client)
    (changes,) = apply(interleaved, plans(spec_file))
    other.close()
    assert interleaved.conflicts == 1 and changes.attempts == 2
    assert [(c.action, c.key) for c in changes.endpoints] == [("unchanged", "iris/a"), ("update", "iris/b")]
    assert changes.writes == 3  # iris/a; then iris/b set back and the canary
    assert revision(client) == rev + 4  # three of apply's writes and the other one
    (after,) = diff(client, plans(spec_file))
    assert not after.changed, after.render()
    assert endpoints(client)["iris/b"]["options"] == {}


def test_apply_gives_up_with_a_clear_message_when_the_service_never_settles(
    client: Client, control_plane: RunningControlPlane, models: list[dict], spec_file: Path
) -> None:
    apply(client, plans(spec_file))
    spec_file.write_text(SPEC.replace("maxBatchSize: 32", "maxBatchSize: 16"))
    other = Client(control_plane.url, settings=control_plane.settings, timeout=10)
    n = iter(range(1000))

    def meddle(_: int) -> None:
        other.merge_endpoint("prod", "iris", "b", auxiliary={"round": next(n)})

    with pytest.raises(RevisionConflict) as info:
        apply(Interleaved(client, meddle), plans(spec_file), attempts=3)
    other.close()
    message = info.value.message
    assert "apply of 'iris'" in message and "service 'prod' kept changing under it (3 plans" in message
    assert "run it again" in message
    (changes,) = apply(client, plans(spec_file))  # once it settles, apply finishes the job
    assert changes.attempts == 1
    assert not diff(client, plans(spec_file))[0].changed


OTHER_SPEC = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: iris, service: prod}
spec:
  framework: sklearn
  predictors:
    - name: a
      model: {name: iris, project: demo, version: 2}
      trafficWeight: 50
      batching: {maxBatchSize: 8, maxDelayMs: 1}
    - name: c
      model: {name: iris, project: demo, version: 1}
      trafficWeight: 50
"""


def apply_together(runs: dict[str, tuple[Client, Path]]) -> dict[str, int]:
    """Start one apply per entry at the same moment (threads); their attempts, by name."""
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []
    attempts: dict[str, int] = {}

    def run(name: str) -> None:
        c, file = runs[name]
        try:
            barrier.wait(10)
            (changes,) = apply(c, plans(file))
            attempts[name] = changes.attempts
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return attempts


def test_two_concurrent_applies_of_different_specs_leave_one_of_them_whole(
    control_plane: RunningControlPlane, models: list[dict], spec_file: Path
) -> None:
    """Never a mix: after both return, the service is exactly one spec (diff of it is empty)."""
    other_file = spec_file.parent / "other.yaml"
    other_file.write_text(OTHER_SPEC)
    files = {"x": spec_file, "y": other_file}
    clients = {k: Client(control_plane.url, settings=control_plane.settings, timeout=10) for k in files}
    try:
        for _ in range(6):
            apply_together({k: (clients[k], f) for k, f in files.items()})
            state = {k: diff(clients["x"], plans(f))[0].changed for k, f in files.items()}
            matching = [k for k, changed in state.items() if not changed]
            assert len(matching) == 1, (state, endpoints(clients["x"]), clients["x"].list_canaries("prod"))
    finally:
        for c in clients.values():
            c.close()
