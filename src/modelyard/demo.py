"""The bundled examples, deployed on ``modelyard serve --examples`` (what ``make serve`` runs).

Each folder under ``examples/`` has a ``deploy.py`` with ``ENDPOINTS``, ``SAMPLE`` and
``deploy(client, service, workdir)``
that trains its small model, registers it through the public SDK (the same calls a user
makes) and returns ``[(endpoint_key, sample_body)]``. Deploying is idempotent: an example
whose endpoints already exist in the service is left as it is.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from modelyard.settings import Settings

log = logging.getLogger("modelyard.demo")

ORDER = ("sklearn", "xgboost", "lightgbm", "custom", "ensemble", "pipeline")


def examples_dir() -> Path | None:
    """The repository's ``examples/`` folder, when modelyard runs from a checkout."""
    candidate = Path(__file__).resolve().parents[2] / "examples"
    return candidate if candidate.is_dir() else None


def deploy_examples(client: Any, service: str, root: Path) -> list[tuple[str, Any]]:
    """Deploy every example under ``root`` not yet deployed; return (endpoint key, sample) pairs."""
    existing = {e["key"] for e in client.list_endpoints(service)}
    samples: list[tuple[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ORDER:
            script = root / name / "deploy.py"
            if not script.exists():
                continue
            module = runpy.run_path(str(script))
            keys = list(module["ENDPOINTS"])
            if all(key in existing for key in keys):
                log.info("example %s already deployed (%s)", name, ", ".join(keys))
                samples.extend((key, module["SAMPLE"]) for key in keys)
                continue
            work = Path(tmp) / name
            work.mkdir()
            samples.extend(module["deploy"](client, service, work))
    return samples


def curl_line(base_url: str, key: str, sample: Any) -> str:
    return (
        f"curl -X POST {base_url}/serve/{key} -H 'Content-Type: application/json' -d '{json.dumps(sample)}'"
    )


def _wait_until(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def deploy_examples_when_up(settings: Settings) -> threading.Thread:
    """Wait for the server in a thread, deploy the examples, print working curl lines."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base_url = f"http://{host}:{settings.port}"

    def run() -> None:
        from modelyard.client import Client

        root = examples_dir()
        if root is None:
            log.warning("no examples folder next to this installation; nothing to deploy")
            return
        if not _wait_until(f"{base_url}/api/health", 120):
            log.error("server did not come up on %s; examples not deployed", base_url)
            return
        try:
            client = Client(url=base_url, settings=settings)
            samples = deploy_examples(client, settings.service, root)
        except Exception as exc:
            log.error("deploying the examples failed: %s", exc)
            return
        for key, sample in samples:
            _wait_until_served(base_url, key, sample)
        lines = ["", "modelyard is serving the examples. Try:", ""]
        lines += [f"  {curl_line(base_url, key, sample)}" for key, sample in samples]
        lines += [
            "",
            f"  modelyard endpoint list      # (MODELYARD_URL={base_url})",
            f"  open {base_url}/docs",
            "",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="modelyard-examples", daemon=True)
    thread.start()
    return thread


def _wait_until_served(base_url: str, key: str, sample: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{base_url}/serve/{key}", json=sample, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    log.warning("example endpoint %s did not answer within %.0f s", key, timeout)
