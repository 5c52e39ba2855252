"""What ``make serve`` installs and says while installing (issue 12: slow, silent and heavy).

The default extras (``.[all]``, what ``make serve`` installs) must pull no CUDA library on a
CPU-only machine: pip resolves them for real (``--dry-run --report``, the machine's indexes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_default_extras_pull_no_cuda(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-e", f"{ROOT}[all]"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    if sys.platform.startswith(("linux", "win")):
        assert "xgboost-cpu" in names and "xgboost" not in names
    assert {"lightgbm", "onnxruntime", "scikit-learn"} <= names
    cuda = sorted(
        n for n in names if n.startswith("nvidia-") or "cuda" in n or n in ("torch", "onnxruntime-gpu")
    )
    assert cuda == [], cuda
    assert not names & {"onnx", "skl2onnx"}, "model converters are for the tests ([dev]), not serving"


def test_make_serve_says_each_step() -> None:
    make = shutil.which("make")
    assert make is not None, "make is needed for the README's two commands"
    plan = subprocess.run(
        [make, "-n", "serve", "VENV=/nonexistent/venv"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert plan.returncode == 0, plan.stderr
    steps = [line for line in plan.stdout.splitlines() if line.startswith("printf '\\n==> %s\\n'")]
    said = " | ".join(steps)
    for step in (
        "creating the virtualenv",
        "upgrading pip",
        "installing modelyard",
        "starting modelyard serve",
    ):
        assert step in said, plan.stdout
    installs = [line for line in plan.stdout.splitlines() if "pip install" in line]
    assert installs and not any(" -q" in line for line in installs), "pip's own progress shows"
    assert any("--no-compile" in line and ".[all]" in line for line in installs)
