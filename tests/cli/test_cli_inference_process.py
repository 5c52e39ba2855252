"""`modelyard inference` as a real process: a replica of one service, synced from its control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelyard.client import Client
from modelyard.settings import Settings
from tests.servers import free_port, run_control_plane
from tests.serving.helpers import PREPROCESS_XY, train_sklearn, wait_for

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


@pytest.mark.slow
def test_inference_command_serves_its_service(settings: Settings, tmp_path: Path) -> None:
    with run_control_plane(settings) as cp:
        with Client(cp.url, settings=settings) as client:
            client.create_service("fraud")
            model = train_sklearn(tmp_path / "m.pkl")
            code = tmp_path / "p.py"
            code.write_text(PREPROCESS_XY.replace("TAG", "fraud"))
            uploaded = client.upload_model(tmp_path / "m.pkl", name="m", project="p", framework="sklearn")
            client.add_endpoint(
                "fraud",
                endpoint="score",
                version="1",
                engine="sklearn",
                model_id=uploaded["id"],
                preprocess=code,
            )
        port = free_port()
        env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "replica-home")}
        proc = subprocess.Popen(
            [
                MODELYARD,
                "--token",
                cp.admin_token,
                "inference",
                "--service",
                "fraud",
                "--control-plane",
                cp.url,
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def answer() -> dict | None:
                try:
                    response = httpx.post(f"{url}/serve/score/1", json={"x0": 1, "x1": 2}, timeout=5)
                except httpx.HTTPError:
                    return None
                return response.json() if response.status_code == 200 else None

            assert wait_for(answer, timeout=60) == {"y": model.predict([[1, 2]]).tolist(), "code": "fraud"}
            # readiness is per worker process: the one that answered is ready, the other may still load
            assert wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 200, timeout=30)
            assert httpx.get(f"{url}/status").json()["service"] == "fraud"
            # the replica's state is visible on the control plane, per worker process
            replicas = wait_for(
                lambda: len(Client(cp.url, settings=settings).status("fraud")["replicas"]) == 2
            )
            assert replicas
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
