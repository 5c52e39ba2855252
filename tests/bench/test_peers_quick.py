"""CI smoke for the peer benchmark: ``bench/peers.py --quick`` runs end to end on modelyard and the baseline.

It starts real servers and a real load generator, so it proves the harness still works against the
current data plane (routing, ``/v2`` with the peers' V2 body, the Preprocess hooks on ``/serve``,
the answer shapes) and that it reads how many connections and requests each of modelyard's two
workers took. It installs no peer and asserts no speed: CI machines are shared and noisy; the
numbers are for people, on a quiet machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(
    r"^(iris|rf)\s+(\d+)\s+(modelyard|baseline)\s+(\S+(?: /\w+)?)\s+(\d+)\s+\S+\s+[\d.]+\s+[\d.]+\s+(\d+)\s"
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_prints_rows_without_errors(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "peers.py"),
            "--quick",
            "--systems",
            "modelyard,baseline",
            "--configs",
            "modelyard/w2,baseline/w1",
            "--concurrency",
            "16,64",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=290,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [m.groups() for line in out.stdout.splitlines() if (m := ROW.match(line))]
    seen = {(model, int(conns), system, config.split()[-1]) for model, conns, system, config, *_ in rows}
    for model in ("iris", "rf"):
        for conns in (16, 64):
            assert (model, conns, "baseline", "/v2") in seen, f"no baseline {model} c={conns}:\n{out.stdout}"
            assert (model, conns, "modelyard", "/v2") in seen, f"no modelyard /v2 {model} c={conns}"
            assert (model, conns, "modelyard", "/serve") in seen, f"no modelyard /serve {model} c={conns}"
    for model, conns, system, config, rps, errors in rows:
        assert int(errors) == 0, f"{system} {config} {model} c={conns}: {errors} errors\n{out.stdout}"
        assert int(rps) > 0, f"{system} {config} {model} c={conns} served nothing\n{out.stdout}"
    assert "not measured" not in out.stdout, out.stdout
    assert "Equal footing" in out.stdout and "start to start" in out.stdout, out.stdout

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["versions"]["modelyard"] and result["machine"]["cpus"]
    for row in result["rows"]:
        if row["system"] != "modelyard":
            assert row["per_worker"] is None
            continue
        # two workers: requests counted per worker from their own Prometheus files, connections
        # from /proc mid-run; every connection is held by one of the two
        assert len(row["per_worker"]) == 2, row
        assert sum(row["per_worker"]) > 0, row
        assert len(row["connections_per_worker"]) == 2, row
        assert sum(row["connections_per_worker"]) == row["connections"], row
