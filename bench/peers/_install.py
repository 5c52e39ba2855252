"""Peer virtualenvs: one per system under the cache folder, created once and reused.

Each venv is keyed by a stamp file holding the exact pip requirement list, so changing a pin in
:data:`REQUIREMENTS` rebuilds that venv on the next run and nothing else. Every install runs with a
constraints file pinning the CPU torch that lies on disk, so no dependency can drag in the CUDA
builds (gigabytes) behind our back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

SKLEARN = "scikit-learn"
"""Pinned at run time to the repo venv's version, so every system unpickles the same model."""

REQUIREMENTS: dict[str, list[str]] = {
    # every peer pinned (issue 14): a table is only comparable with the versions it names
    # MLServer 1.7 workers fail on uvloop >= 0.22 (issue 8)
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"],
    "bentoml": ["bentoml==1.4.40"],
    "ray": ["ray[serve]==2.60.0"],
    "pytriton": ["nvidia-pytriton==0.7.0"],
    # TorchServe workers crash-loop without torch and pyyaml importable (issue 8)
    "torchserve": ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "torch==2.13.0", "pyyaml"],
}
VERSIONED = {
    "mlserver": "mlserver",
    "bentoml": "bentoml",
    "ray": "ray",
    "pytriton": "nvidia-pytriton",
    "torchserve": "torchserve",
}
"""The distribution whose installed version names each peer in the table."""
CONSTRAINTS = "torch==2.13.0\n"


def sklearn_pin() -> str:
    """``scikit-learn==<the version this interpreter has>``; unpinned when it has none."""
    try:
        import sklearn

        return f"{SKLEARN}=={sklearn.__version__}"
    except ImportError:
        return SKLEARN


def base_python() -> str:
    """The interpreter the peer venvs are made from: this venv's base Python (same version/ABI)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def libdir() -> str:
    """This Python's own lib folder; PyTriton's Python stub needs it on ``LD_LIBRARY_PATH``."""
    return str(sysconfig.get_config_var("LIBDIR") or "")


def venv_python(cache: Path, system: str) -> Path:
    return cache / system / "venv" / "bin" / "python"


def requirements(system: str) -> list[str]:
    return [*REQUIREMENTS[system], sklearn_pin(), "joblib"]


def is_installed(cache: Path, system: str) -> bool:
    stamp = cache / system / "installed.txt"
    try:
        return stamp.read_text() == "\n".join(requirements(system)) and venv_python(cache, system).exists()
    except OSError:
        return False


def install(cache: Path, system: str, log=print) -> tuple[bool, str]:
    """Create (or reuse) ``<cache>/<system>/venv``; ``(ok, why-not)``. Output goes to install.log."""
    if is_installed(cache, system):
        return True, ""
    folder = cache / system
    folder.mkdir(parents=True, exist_ok=True)
    logfile = folder / "install.log"
    (folder / "constraints.txt").write_text(CONSTRAINTS)
    reqs = requirements(system)
    log(f"installing {system} into {folder / 'venv'} (log: {logfile})")
    started = time.monotonic()
    python = venv_python(cache, system)
    steps = [
        [base_python(), "-m", "venv", "--clear", str(folder / "venv")],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-c", str(folder / "constraints.txt"), *reqs],
    ]
    with open(logfile, "w") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            if rc != 0:
                tail = logfile.read_text().strip().splitlines()[-3:]
                return False, f"pip failed (rc {rc}): {' / '.join(tail)[:300]}"
    (folder / "installed.txt").write_text("\n".join(reqs))
    log(f"installed {system} in {time.monotonic() - started:.0f} s")
    return True, ""


def version(cache: Path, system: str) -> str | None:
    """The installed version of the peer's main distribution (``mlserver 1.7.1``), None if absent."""
    python = venv_python(cache, system)
    dist = VERSIONED.get(system)
    if dist is None or not python.exists():
        return None
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or None


if __name__ == "__main__":
    cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "modelyard-bench"))
    for name in sys.argv[1:] or list(REQUIREMENTS):
        print(name, install(cache, name))
