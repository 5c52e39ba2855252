"""The bundled examples, deployed on ``modelyard serve --examples`` (what ``make serve`` runs).

Each folder under ``examples/`` has a ``deploy.py`` with ``ENDPOINTS``, ``SAMPLE``,
``deploy(client, service, workdir)`` and optionally ``NEEDS`` (examples it builds on) that
trains its small model, registers it through the public SDK (the same calls a user
makes) and returns ``[(endpoint_key, sample_body)]``. Deploying is idempotent: an example
whose endpoints already exist in the service, with the example's current code, is left as it
is; one deployed from older code of the example (a preprocess file that changed since) is
deployed again, so an upgrade does not keep serving the old examples from ``~/.modelyard``.

Each example stands alone: one that cannot be deployed (an engine's optional package is not
installed, its model does not load) is reported with its reason, and every other example is
still deployed and gets its ``curl`` line. Examples that ``NEEDS`` a failed one are skipped
with a reason naming it. An example whose ``REQUIRES`` names a framework that is not installed
(``torch``, ``tensorflow``: optional extras, not in ``make serve``'s ``[all]``) is not attempted:
the banner lists it under "Skipped" with the extra that installs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import runpy
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelyard.settings import Settings

log = logging.getLogger("modelyard.demo")

ORDER = ("sklearn", "xgboost", "lightgbm", "custom", "ensemble", "pipeline", "onnx", "pytorch", "tensorflow")

# the extra that installs a missing module, for the hint in the failure reason
EXTRAS = {
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnxruntime": "onnx",
    "torch": "torch",
    "tensorflow": "tensorflow",
}


@dataclass
class ExampleResult:
    """One example's outcome: the endpoints it serves, or why it was not deployed."""

    name: str
    samples: list[tuple[str, Any]] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    """Why it was not attempted: a framework it ``REQUIRES`` is not installed (names the extra)."""


def examples_dir() -> Path | None:
    """The repository's ``examples/`` folder, when modelyard runs from a checkout."""
    candidate = Path(__file__).resolve().parents[2] / "examples"
    return candidate if candidate.is_dir() else None


def describe_failure(exc: BaseException) -> str:
    """A one-line reason; a missing package names the extra to install."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"pip install 'modelyard[{extra}]'" if extra else f"pip install {top}"
        return f"the Python package {top!r} is not installed ({hint})"
    from modelyard.errors import ModelyardError

    text = str(exc).strip()
    if isinstance(exc, ModelyardError) and text:
        return text  # already says what went wrong (a refused call, a missing model...)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _outdated(folder: Path, endpoint: dict[str, Any]) -> bool:
    """Whether ``endpoint`` runs other code than its example's file of the same name now."""
    code = endpoint.get("preprocess") or {}
    path = folder / str(code.get("filename") or "")
    if not code.get("filename") or not path.is_file():
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() != code.get("sha256")


def deploy_example(
    client: Any, service: str, script: Path, workdir: Path, existing: dict[str, dict[str, Any]]
) -> list[Any]:
    """Deploy the example of ``script`` unless its endpoints exist with its current code;
    its (key, sample) pairs. ``existing``: the service's endpoints by key."""
    module = runpy.run_path(str(script))
    keys = list(module["ENDPOINTS"])
    if all(key in existing and not _outdated(script.parent, existing[key]) for key in keys):
        log.info("example %s already deployed (%s)", script.parent.name, ", ".join(keys))
        return [(key, module["SAMPLE"]) for key in keys]
    if any(key in existing for key in keys):
        log.info("example %s changed since it was deployed: deploying it again", script.parent.name)
    workdir.mkdir(parents=True, exist_ok=True)
    return list(module["deploy"](client, service, workdir))


def _needs(script: Path, name: str = "NEEDS") -> tuple[str, ...]:
    """The examples ``script`` builds on (``NEEDS``) or the modules it imports (``REQUIRES``),
    read without running it (it may import anything)."""
    import ast

    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)
    return ()


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (TensorFlow takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def not_installed(script: Path) -> str | None:
    """Why the example of ``script`` is skipped: the frameworks it ``REQUIRES`` that are missing."""
    missing = [module for module in _needs(script, "REQUIRES") if not _installed(module)]
    if not missing:
        return None
    tops = [module.split(".")[0] for module in missing]
    packages = sorted({f"'modelyard[{EXTRAS[top]}]'" if top in EXTRAS else top for top in tops})
    return f"{', '.join(missing)} not installed (pip install {' '.join(packages)})"


def deploy_examples(client: Any, service: str, root: Path) -> list[ExampleResult]:
    """Deploy every example under ``root`` not yet deployed, each on its own; their results."""
    existing = {e["key"]: e for e in client.list_endpoints(service)}
    results: list[ExampleResult] = []
    failed: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ORDER:
            script = root / name / "deploy.py"
            if not script.exists():
                continue
            result = ExampleResult(name)
            try:
                missing = [need for need in _needs(script) if need in failed]
                if missing:
                    result.error = f"needs the {', '.join(missing)} example(s), which could not be deployed"
                else:
                    result.skipped = not_installed(script)
                if result.error is None and result.skipped is None:
                    result.samples = deploy_example(client, service, script, Path(tmp) / name, existing)
            except Exception as exc:
                result.error = describe_failure(exc)
            if result.error is not None:
                failed.add(name)
                log.error("example %s not deployed: %s", name, result.error)
            elif result.skipped is not None:
                failed.add(name)
                log.warning("example %s skipped: %s", name, result.skipped)
            results.append(result)
    return results


def curl_line(base_url: str, key: str, sample: Any) -> str:
    body = shlex.quote(json.dumps(sample))
    return f"curl -X POST {base_url}/serve/{key} -H 'Content-Type: application/json' -d {body}"


def banner(
    base_url: str, served: list[tuple[str, Any]], problems: list[str], skipped: list[str] | None = None
) -> str:
    """What ``modelyard serve --examples`` prints once the examples are up."""
    if served:
        lines = ["", "modelyard is serving the examples. Try:", ""]
        lines += [f"  {curl_line(base_url, key, sample)}" for key, sample in served]
    else:
        lines = ["", f"modelyard is up on {base_url}, but none of the examples could be served."]
    if skipped:
        lines += ["", "Skipped (an optional framework is not installed):"] + [f"  {line}" for line in skipped]
    if problems:
        lines += ["", "Not deployed:"] + [f"  {problem}" for problem in problems]
    lines += [
        "",
        f"  modelyard endpoint list      # (MODELYARD_URL={base_url})",
        f"  open {base_url}/docs",
        "",
    ]
    return "\n".join(lines)


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


def wait_until_served(base_url: str, samples: list[tuple[str, Any]], timeout: float = 60) -> dict[str, str]:
    """Wait until each endpoint answers its sample; the reason for each that does not."""
    pending = dict(samples)
    problems: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, sample in list(pending.items()):
            try:
                if httpx.post(f"{base_url}/serve/{key}", json=sample, timeout=5).status_code == 200:
                    del pending[key]
                    continue
            except httpx.HTTPError:
                continue
            error = _failed_load(base_url, key)
            if error is not None:
                problems[key] = f"{key} did not load: {error}"
                del pending[key]
        if pending:
            time.sleep(0.2)
    for key in pending:
        problems[key] = f"{key} did not answer within {timeout:.0f} s"
    return problems


def _failed_load(base_url: str, key: str) -> str | None:
    """The load error of ``key`` when this replica reports it ``failed``."""
    try:
        endpoints = httpx.get(f"{base_url}/status", timeout=5).json().get("endpoints", [])
    except (httpx.HTTPError, ValueError):
        return None
    for entry in endpoints:
        if entry.get("key") == key and entry.get("state") == "failed":
            return str(entry.get("error") or "failed")
    return None


def deploy_examples_when_up(settings: Settings, root: Path | None = None) -> threading.Thread:
    """Wait for the server in a thread, deploy the examples, print working curl lines.

    ``root`` is the examples folder (default: the checkout's ``examples/``).
    """
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base_url = f"http://{host}:{settings.port}"

    def run() -> None:
        from modelyard.client import Client

        folder = root or examples_dir()
        if folder is None:
            log.warning("no examples folder next to this installation; nothing to deploy")
            return
        if not _wait_until(f"{base_url}/api/health", 120):
            log.error("server did not come up on %s; examples not deployed", base_url)
            return
        try:
            with Client(url=base_url, settings=settings) as client:
                results = deploy_examples(client, settings.service, folder)
        except Exception as exc:  # the control plane itself refused (token, database)
            log.error("deploying the examples failed: %s", describe_failure(exc))
            return
        problems = [f"{r.name}: {r.error}" for r in results if r.error]
        skipped = [f"{r.name}: {r.skipped}" for r in results if r.skipped]
        samples = [pair for r in results for pair in r.samples]
        example_of = {key: r.name for r in results for key, _ in r.samples}
        not_served = wait_until_served(base_url, samples)
        for key, problem in not_served.items():
            log.error("example %s: %s", example_of[key], problem)
            problems.append(f"{example_of[key]}: {problem}")
        served = [(key, sample) for key, sample in samples if key not in not_served]
        print(banner(base_url, served, problems, skipped), file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="modelyard-examples", daemon=True)
    thread.start()
    return thread
