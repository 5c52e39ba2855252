"""CI smoke for the peer benchmark: ``bench/peers.py --quick`` runs end to end on modelyard and the baseline.

It starts real servers and a real load generator, so it proves the harness still works against the
current data plane (routing, the Preprocess hooks, the answer shape). It installs no peer and asserts
no speed: CI machines are shared and noisy; the numbers are for people, on a quiet machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(
    r"^(iris|rf)\s+(\d+)\s+(modelyard|baseline)\s+(\S+)\s+(\d+)\s+\S+\s+[\d.]+\s+[\d.]+\s+(\d+)\s"
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_prints_rows_without_errors(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "peers.py"),
            "--quick",
            "--systems",
            "modelyard,baseline",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=230,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [m.groups() for line in out.stdout.splitlines() if (m := ROW.match(line))]
    seen = {(model, int(conns), system) for model, conns, system, *_ in rows}
    for system in ("modelyard", "baseline"):
        for model in ("iris", "rf"):
            for conns in (16, 64):
                assert (model, conns, system) in seen, f"no {system} {model} c={conns} row:\n{out.stdout}"
    for model, conns, system, config, rps, errors in rows:
        assert int(errors) == 0, f"{system} {config} {model} c={conns}: {errors} errors\n{out.stdout}"
        assert int(rps) > 0, f"{system} {config} {model} c={conns} served nothing\n{out.stdout}"
    assert "not measured" not in out.stdout, out.stdout
    assert (tmp_path / "result.json").exists()
