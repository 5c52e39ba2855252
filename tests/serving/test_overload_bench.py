"""Smoke for ``bench/overload.py``: it starts its own servers, drives them, and the JSON it
writes shows admission control at work (nothing shed under the limit, shedding past it, health
answering throughout). It asserts no speed: the machine is shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_overload_bench_runs_and_records_shedding(tmp_path: Path) -> None:
    result = tmp_path / "overload.json"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "overload.py"),
            "--runs",
            "none",
            "limit",
            "--limit",
            "8",
            "--levels",
            "4",
            "64",
            "--seconds",
            "1.5",
            "--warmup",
            "0.5",
            "--json",
            str(result),
        ],
        capture_output=True,
        text=True,
        timeout=230,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| limit | 64 |" in out.stdout, out.stdout
    table = {(row["run"], row["connections"]): row for row in json.loads(result.read_text())["table"]}
    assert set(table) == {("none", 4), ("none", 64), ("limit", 4), ("limit", 64)}
    for row in table.values():
        assert row["accepted_rps"] > 0 and row["other_errors"] == 0 and row["health_failures"] == 0, row
    assert table[("none", 64)]["shed_fraction"] == 0, "no limit: every request waits its turn"
    assert table[("limit", 4)]["shed_fraction"] == 0, "under the limit nothing is shed"
    assert table[("limit", 64)]["shed_fraction"] > 0, "past it, 503s"
