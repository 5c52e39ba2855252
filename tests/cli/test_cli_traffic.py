"""``modelyard canary`` and ``modelyard auto-deploy`` against a real all-in-one server (thread).

The first test is the walkthrough of docs/canary.md "publish a model and it gets 10%, the previous one
90%", command for command.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, train_sklearn, wait_for

BODY = {"x0": 1, "x1": 2}


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, CliHarness]]:
    app = create_all_in_one_app(settings.model_copy(update={"sync_wait_s": 5}))
    with run_uvicorn_in_thread(app) as url:
        yield url, CliHarness(cli_env(url, settings.resolved_home()))


def split(url: str, path: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(n):
            r = http.post(path, json=BODY)
            assert r.status_code == 200, r.text
            seen[r.headers["x-modelyard-endpoint"]] += 1
    return seen


def upload(cli: CliHarness, model: Path) -> str:
    out = cli("model", "upload", "--name", "iris", "--project", "demo", "--framework", "sklearn",
              "--path", str(model), "--publish")  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_readme_walkthrough_publish_gets_ten_percent(served: tuple[str, CliHarness], tmp_path: Path) -> None:
    url, cli = served
    model = tmp_path / "model.pkl"
    train_sklearn(model)
    code = tmp_path / "p.py"
    code.write_text(PREPROCESS_XY.replace("TAG", "v1"))
    upload(cli, model)
    cli("auto-deploy", "add", "--endpoint", "iris_auto", "--engine", "sklearn", "--name", "iris.*",
        "--project", "demo", "--published", "--max-versions", "2", "--preprocess", str(code))  # fmt: skip
    cli("canary", "add", "--endpoint", "iris_ab", "--weights", "0.1", "0.9",
        "--input-endpoint-prefix", "iris_auto")  # fmt: skip
    wait_for(lambda: httpx.post(f"{url}/serve/iris_ab", json=BODY).status_code == 200)
    assert split(url, "/serve/iris_ab", 20) == Counter({"iris_auto/1": 20})  # one version: all of it
    # the one command: publish a new model
    upload(cli, model)
    wait_for(lambda: len(split(url, "/serve/iris_ab", 30)) == 2)
    seen = split(url, "/serve/iris_ab", 400)
    assert set(seen) == {"iris_auto/1", "iris_auto/2"}
    assert 0.04 < seen["iris_auto/2"] / 400 < 0.17, seen  # the new one gets 10%
    # a third: it gets 10%, the second 90%, the first is retired
    upload(cli, model)
    wait_for(lambda: set(split(url, "/serve/iris_ab", 40)) == {"iris_auto/2", "iris_auto/3"})
    listed = cli("auto-deploy", "list").stdout
    assert "iris_auto/2 iris_auto/3" in listed and "p.py" in listed
    listed = cli("canary", "list").stdout
    assert "iris_ab" in listed and "iris_auto/3 iris_auto/2" in listed


def test_update_with_apply_to_existing_and_remove(served: tuple[str, CliHarness], tmp_path: Path) -> None:
    url, cli = served
    model = tmp_path / "model.pkl"
    train_sklearn(model)
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text(PREPROCESS_XY.replace("TAG", "one"))
    two.write_text(PREPROCESS_XY.replace("TAG", "two"))
    upload(cli, model)
    cli("auto-deploy", "add", "--endpoint", "auto", "--engine", "sklearn", "--name", "iris",
        "--max-versions", "3", "--preprocess", str(one))  # fmt: skip
    cli("auto-deploy", "update", "--endpoint", "auto", "--preprocess", str(two))
    upload(cli, model)

    def codes() -> dict[str, str]:
        return {v: httpx.post(f"{url}/serve/auto/{v}", json=BODY).json().get("code", "") for v in ("1", "2")}

    wait_for(lambda: codes() == {"1": "one", "2": "two"})  # each version keeps the code it was deployed with
    cli("auto-deploy", "update", "--endpoint", "auto", "--preprocess", str(two), "--apply-to-existing")
    wait_for(lambda: codes() == {"1": "two", "2": "two"})
    cli("auto-deploy", "remove", "--endpoint", "auto")
    assert "no auto-deploy rules" in cli("auto-deploy", "list").stdout
    wait_for(lambda: httpx.post(f"{url}/serve/auto/1", json=BODY).status_code == 404)


def test_canary_add_list_remove_and_sticky(served: tuple[str, CliHarness], tmp_path: Path) -> None:
    _, cli = served
    model = tmp_path / "model.pkl"
    train_sklearn(model)
    upload(cli, model)
    cli("auto-deploy", "add", "--endpoint", "iris", "--engine", "sklearn", "--name", "iris")
    out = cli("canary", "add", "--endpoint", "c", "--weights", "1", "1", "--input-endpoints", "iris/1",
              "iris", "--sticky-key", "header:X-User-Id", "--shadow", "iris/1")  # fmt: skip
    assert "canary 'c'" in out.stdout
    listed = cli("canary", "list").stdout
    assert "header:X-User-Id" in listed and "iris/1 iris" in listed
    assert '"sticky_key": "header:X-User-Id"' in cli("canary", "list", "--json").stdout
    cli("canary", "remove", "--endpoint", "c")
    assert "no canaries" in cli("canary", "list").stdout


BAD = [
    (["canary", "add", "--endpoint", "c", "--weights", "-1", "2", "--input-endpoints", "iris/1", "iris/2"],
     "not negative"),
    (["canary", "add", "--endpoint", "c", "--weights", "0", "0", "--input-endpoints", "iris/1", "iris/2"],
     "sum to zero"),
    (["canary", "add", "--endpoint", "c", "--weights", "1", "--input-endpoints", "iris/1", "iris/2"],
     "one weight per target"),
    (["canary", "add", "--endpoint", "c", "--weights", "1", "1", "--input-endpoints", "iris/1", "iris/9"],
     "iris/9"),
    (["canary", "add", "--endpoint", "c", "--weights", "1", "1", "--input-endpoints", "iris/1", "c"],
     "itself"),
    (["canary", "add", "--endpoint", "c", "--weights", "1", "--input-endpoints", "iris/1",
      "--input-endpoint-prefix", "iris"], "either"),
    (["canary", "remove", "--endpoint", "nope"], "not found"),
    (["auto-deploy", "add", "--endpoint", "a", "--engine", "sklearn", "--name", "iris(["],
     "not a valid regular expression"),
    (["auto-deploy", "add", "--endpoint", "a", "--engine", "sklearn", "--name", "x", "--max-versions", "0"],
     "at least 1"),
    (["auto-deploy", "remove", "--endpoint", "nope"], "not found"),
]  # fmt: skip


def test_bad_input_is_one_clear_error_line(served: tuple[str, CliHarness], tmp_path: Path) -> None:
    url, cli = served
    model = tmp_path / "model.pkl"
    train_sklearn(model)
    upload(cli, model)
    upload(cli, model)
    cli(
        "auto-deploy",
        "add",
        "--endpoint",
        "iris",
        "--engine",
        "sklearn",
        "--name",
        "iris",
        "--max-versions",
        "2",
    )
    revision = httpx.get(f"{url}/api/services/default").json()["revision"]
    for args, reason in BAD:
        result = cli(*args, ok=False)
        assert reason in result.stderr, (args, result.stderr)
    assert httpx.get(f"{url}/api/services/default").json()["revision"] == revision
