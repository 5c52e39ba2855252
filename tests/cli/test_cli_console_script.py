"""The installed ``modelyard`` console script, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.client import Client
from tests.servers import RunningControlPlane, free_port

SCRIPT = Path(sys.executable).with_name("modelyard")


def _run(*args: str, url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env.update(MODELYARD_URL=url, MODELYARD_HOME=str(home))
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed")


def test_console_script_upload_and_add(
    control_plane: RunningControlPlane, client: Client, tmp_path: Path
) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"m" * 4096)
    upload = _run(
        "model",
        "upload",
        "--name",
        "iris",
        "--project",
        "demo",
        "--framework",
        "sklearn",
        "--path",
        str(model),
        "--tags",
        "a",
        "b",
        url=control_plane.url,
        home=control_plane.home,
    )
    assert upload.returncode == 0, upload.stderr
    model_id = upload.stdout.strip().splitlines()[-1]
    assert sorted(client.get_model(model_id)["tags"]) == ["a", "b"]

    add = _run(
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
        "float32",
        "--input-size",
        "[1,4]",
        "[-1]",
        url=control_plane.url,
        home=control_plane.home,
    )
    assert add.returncode == 0, add.stderr
    inputs = client.get_endpoint("default", "iris/1")["inputs"]
    assert [(t["name"], t["shape"]) for t in inputs] == [("x0", [1, 4]), ("x1", [-1])]

    refused = _run("model", "remove", model_id, url=control_plane.url, home=control_plane.home)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "iris/1" in refused.stderr


def test_console_script_control_plane_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _run("service", "list", url=url, home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: cannot reach the control plane at {url}")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_console_script_usage_error_is_not_a_traceback(tmp_path: Path) -> None:
    result = _run("endpoint", "add", "--endpoint", "x", url="http://127.0.0.1:9", home=tmp_path)
    assert result.returncode == 2
    assert "--engine" in result.stderr and "Traceback" not in result.stderr
