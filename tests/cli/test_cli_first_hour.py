"""What a user meets in the CLI's first hour (issue 12): help, version, completion, "did you mean",
refusals that come at once, endpoints with only versions, auto-deploy flags, ``endpoint add --wait``.

Against a real control plane (or a real all-in-one server) in a thread, the CLI in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.client import Client
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import RunningControlPlane, run_uvicorn_in_thread
from tests.serving.helpers import train_sklearn

# -- help, version, completion -----------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    def walk(cmd: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(get_command(app), []))


def test_every_help_page_is_clean() -> None:
    """No ``<bool>`` after a flag, no raw backticks, every default as ``[default: ...]``."""
    runner = CliRunner()
    paths = _command_paths()
    assert ["endpoint", "add"] in paths and ["k8s", "render"] in paths and ["diff"] in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
        page = result.stdout
        where = " ".join(path) or "modelyard"
        assert result.exit_code == 0, (where, result.output)
        assert "<bool>" not in page, (where, page)
        assert "`" not in page, (where, page)
        assert "(default" not in page.lower(), (where, page)
        assert page.lower().count("default:") == page.lower().count("[default:"), (where, page)
    add = runner.invoke(app, ["endpoint", "add", "--help"], env={"COLUMNS": "250"}).stdout
    assert "pytorch" in add and "torch," not in add.replace("pytorch", "")
    assert "--wait" in add and "--no-wait" in add
    upload = runner.invoke(app, ["model", "upload", "--help"], env={"COLUMNS": "250"}).stdout
    assert "pytorch" in upload and "torch," not in upload.replace("pytorch", "")


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"modelyard {installed_version('modelyard')}"


@pytest.mark.slow
def test_shell_completion_script_and_answers() -> None:
    script = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert script.exit_code == 0 and "_MODELYARD_COMPLETE=complete_bash" in script.stdout
    help_page = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "--install-completion" in help_page
    # what bash asks the installed command when <TAB> follows "modelyard endp"
    env = {
        **os.environ,
        "_MODELYARD_COMPLETE": "complete_bash",
        "COMP_WORDS": "modelyard endp",
        "COMP_CWORD": "1",
    }
    done = subprocess.run(
        [str(Path(sys.executable).with_name("modelyard"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["endpoint"], (done.stdout, done.stderr)


@pytest.mark.slow
def test_cli_import_stays_light() -> None:
    """``import modelyard.cli.main`` (every command's start) pulls no web, data or HTTP stack."""
    code = (
        "import sys, modelyard.cli.main; "
        "print([m for m in ('numpy', 'httpx', 'sqlalchemy', 'fastapi', 'uvicorn', 'pydantic', 'rich') "
        "if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["endpoints", "list"], "'endpoint'"),
        (["modle", "list"], "'model'"),
        (["endpoint", "ad"], "'add'"),
        (["auto-deploy", "updte"], "'update'"),
        (["end", "list"], "'endpoint'"),  # a prefix: typer's own difflib cut-off finds nothing
        (["token", "rev"], "'revoke'"),
    ],
)
def test_did_you_mean_for_commands(args: list[str], suggestion: str) -> None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert f"Did you mean {suggestion}" in result.output, result.output


# -- refused at once ---------------------------------------------------------------------------


def test_engine_mistakes_are_refused_at_once(
    run_cli: CliHarness, client: Client, model_file: Path, tmp_path: Path
) -> None:
    code = tmp_path / "p.py"
    code.write_text("class Preprocess:\n    pass\n")
    revision = client.get_service("default")["revision"]
    store = Path(str(run_cli.env["MODELYARD_HOME"])) / "artifacts"
    stored = sorted(store.rglob("*")) if store.exists() else []
    # an engine that needs a model, without one: before the code is even uploaded
    no_model = run_cli("endpoint", "add", "--endpoint", "iris", "--engine", "sklearn",
                       "--preprocess", str(code), ok=False)  # fmt: skip
    assert "engine 'sklearn' serves a model" in no_model.stderr and "--model-id" in no_model.stderr
    assert (sorted(store.rglob("*")) if store.exists() else []) == stored, "the code was not uploaded"
    # the engine under the name people type
    torch = run_cli("endpoint", "add", "--endpoint", "m", "--engine", "torch", "--model-id", "x", ok=False)
    assert "'pytorch'" in torch.stderr
    # a typo: the control plane refuses it and says which it meant
    model_id = run_cli("model", "upload", "--name", "iris", "--project", "demo", "--framework", "sklearn",
                       "--path", str(model_file)).stdout.split()[-1]  # fmt: skip
    typo = run_cli(
        "endpoint", "add", "--endpoint", "iris", "--engine", "sklaern", "--model-id", model_id, ok=False
    )
    assert "unknown engine 'sklaern' (did you mean 'sklearn'?)" in typo.stderr
    assert client.get_service("default")["revision"] == revision, "nothing was written"
    assert client.list_endpoints("default") == []
    # custom runs the user's code: without code there is nothing to run
    no_code = run_cli("endpoint", "add", "--endpoint", "code", "--engine", "custom", ok=False)
    assert "engine 'custom' runs your code: give --preprocess" in no_code.stderr
    assert client.get_service("default")["revision"] == revision, "nothing was written"
    # engines without a model need none
    run_cli("endpoint", "add", "--endpoint", "code", "--engine", "custom", "--preprocess", str(code))
    # an auto-deploy rule always has models: no model flags needed there
    run_cli("auto-deploy", "add", "--endpoint", "auto", "--engine", "sklearn", "--name", "iris")


def test_unknown_framework_is_refused(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    result = run_cli("model", "upload", "--name", "m", "--project", "p", "--framework", "torch",
                     "--path", str(model_file), ok=False)  # fmt: skip
    assert "unknown --framework 'torch'" in result.stderr and "Did you mean 'pytorch'?" in result.stderr
    assert "sklearn" in result.stderr  # the known ones are named
    assert client.list_models() == []
    run_cli(
        "model",
        "upload",
        "--name",
        "m",
        "--project",
        "p",
        "--framework",
        "pytorch",
        "--path",
        str(model_file),
    )


# -- an endpoint with versions only ------------------------------------------------------------


CODE = "class Preprocess:\n    def process(self, data, state, collect=None):\n        return data\n"


def test_show_and_remove_without_version_name_the_versions(
    run_cli: CliHarness, client: Client, tmp_path: Path
) -> None:
    code = tmp_path / "echo.py"
    code.write_text(CODE)
    for version in ("1", "2", "10"):
        run_cli("endpoint", "add", "--endpoint", "iris", "--version", version, "--engine", "custom",
                "--preprocess", str(code))  # fmt: skip
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "other",
        "--version",
        "1",
        "--engine",
        "custom",
        "--preprocess",
        str(code),
    )

    shown = run_cli("endpoint", "show", "--endpoint", "iris")
    assert [e["key"] for e in json.loads(shown.stdout)] == ["iris/1", "iris/2", "iris/10"]
    assert "exists only as versions iris/1, iris/2, iris/10" in shown.stderr and "--version" in shown.stderr
    one = json.loads(run_cli("endpoint", "show", "--endpoint", "iris", "--version", "2").stdout)
    assert one["key"] == "iris/2" and "replicas" in one
    listed = json.loads(run_cli("endpoint", "show", "--endpoint", "iris", "--all").stdout)
    assert len(listed) == 3
    missing = run_cli("endpoint", "show", "--endpoint", "nope", ok=False)
    assert "'nope' not found" in missing.stderr

    refused = run_cli("endpoint", "remove", "--endpoint", "iris", ok=False)
    assert "iris/1, iris/2, iris/10" in refused.stderr
    assert "--version" in refused.stderr and "--all" in refused.stderr
    assert len(client.list_endpoints("default")) == 4, "nothing removed"

    both = run_cli("endpoint", "remove", "--endpoint", "iris", "--version", "1", "--all", ok=False)
    assert "not both" in both.stderr
    removed = run_cli("endpoint", "remove", "--endpoint", "iris", "--all")
    assert removed.stdout.count("removed") == 3
    assert [e["key"] for e in client.list_endpoints("default")] == ["other/1"]


# -- auto-deploy flags -------------------------------------------------------------------------


def test_auto_deploy_takes_options_aux_and_tensors(
    run_cli: CliHarness, client: Client, model_file: Path
) -> None:
    run_cli("model", "upload", "--name", "iris", "--project", "demo", "--framework", "sklearn",
            "--path", str(model_file), "--publish")  # fmt: skip
    run_cli("auto-deploy", "add", "--endpoint", "auto", "--engine", "sklearn", "--name", "iris",
            "--option", "method=predict_proba", "--aux", "threshold=0.5",
            "--input-name", "x0", "x1", "--input-type", "float32", "float32",
            "--output-name", "y", "--output-type", "int64")  # fmt: skip
    deployed = client.get_endpoint("default", "auto/1")
    assert deployed["options"] == {"method": "predict_proba"} and deployed["auxiliary"] == {"threshold": 0.5}
    assert [(t["name"], t["dtype"]) for t in deployed["inputs"]] == [("x0", "float32"), ("x1", "float32")]
    assert [t["name"] for t in deployed["outputs"]] == ["y"]

    # update merges --option/--aux (key= removes), replaces tensors; existing versions keep theirs...
    run_cli("auto-deploy", "update", "--endpoint", "auto", "--option", "max_batch_size=8", "method=",
            "--aux", "mode=fast", "--input-name", "features", "--input-size", "[-1,4]")  # fmt: skip
    rule = client.get_auto_deploy("default", "auto")
    assert rule["options"] == {"max_batch_size": 8}
    assert rule["auxiliary"] == {"threshold": 0.5, "mode": "fast"}
    assert [(t["name"], t["shape"]) for t in rule["inputs"]] == [("features", [-1, 4])]
    assert client.get_endpoint("default", "auto/1")["options"] == {"method": "predict_proba"}
    # ...unless asked
    run_cli("auto-deploy", "update", "--endpoint", "auto", "--apply-to-existing")
    now = client.get_endpoint("default", "auto/1")
    assert now["options"] == {"max_batch_size": 8}
    assert [t["name"] for t in now["inputs"]] == ["features"]


# -- endpoint add --wait -----------------------------------------------------------------------


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, CliHarness]]:
    app_ = create_all_in_one_app(settings.model_copy(update={"sync_wait_s": 5}))
    with run_uvicorn_in_thread(app_) as url:
        yield url, CliHarness(cli_env(url, settings.resolved_home()))


@pytest.mark.slow
def test_add_wait_reports_ready_or_the_load_error(served: tuple[str, CliHarness], tmp_path: Path) -> None:
    _, cli = served
    good = tmp_path / "good.pkl"
    train_sklearn(good)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    good_id = cli("model", "upload", "--name", "good", "--project", "p", "--framework", "sklearn",
                  "--path", str(good)).stdout.split()[-1]  # fmt: skip
    bad_id = cli("model", "upload", "--name", "bad", "--project", "p", "--framework", "sklearn",
                 "--path", str(bad)).stdout.split()[-1]  # fmt: skip

    ready = cli("endpoint", "add", "--endpoint", "good", "--version", "1", "--engine", "sklearn",
                "--model-id", good_id, "--wait")  # fmt: skip
    assert "endpoint 'good/1' ready on 1/1 replica(s)" in ready.stdout, ready.stdout

    failed = cli("endpoint", "add", "--endpoint", "bad", "--version", "1", "--engine", "sklearn",
                 "--model-id", bad_id, "--wait", ok=False)  # fmt: skip
    assert "endpoint 'bad/1' failed to load on " in failed.stderr
    assert "bad.pkl" in failed.stderr or "pickle" in failed.stderr.lower(), failed.stderr
    assert "endpoint remove" in failed.stderr

    # not a terminal (CliRunner, scripts, pipes): no wait, and no claim that it serves
    quick = cli("endpoint", "add", "--endpoint", "bad", "--version", "2", "--engine", "sklearn",
                "--model-id", bad_id)  # fmt: skip
    assert "added to service 'default'" in quick.stdout and "endpoint list" in quick.stdout
    assert "serving" not in quick.stdout


def test_add_wait_without_replicas_returns_at_once(
    run_cli: CliHarness, control_plane: RunningControlPlane, tmp_path: Path
) -> None:
    code = tmp_path / "echo.py"
    code.write_text(CODE)
    result = run_cli(
        "endpoint", "add", "--endpoint", "code", "--engine", "custom", "--preprocess", str(code), "--wait"
    )
    assert "no replica of service 'default' is running" in result.stdout
