"""``modelyard serve --workers auto``: worker processes follow load, within bounds, nothing fails.

A real server process, real closed-loop HTTP clients (bench/autoscale.py's harness, short
profile): 8 concurrent clients with a target of 2 in flight per worker ask for 4 workers, the
bound is 3; then idle, and the count goes back to 1 after the (shortened) scale-down delay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.autoscale import AutoscaleRun

pytestmark = pytest.mark.slow


def test_workers_follow_load_within_bounds(tmp_path: Path) -> None:
    run = AutoscaleRun(
        tmp_path, min_workers=1, max_workers=3, target_inflight=2.0, down_delay_s=3.0, up_cooldown_s=1.0
    )
    try:
        run.start()
        samples = run.run([(2.0, 0), (14.0, 8), (14.0, 0)], echo=False)
    finally:
        run.close()
    curve = [(s.t, s.offered, s.workers) for s in samples]
    events = run.scale_events()
    loaded = [s for s in samples if s.offered == 8]
    idle_after = [s for s in samples if s.offered == 0 and s.t > loaded[-1].t]
    assert all(s.workers == 1 for s in samples if s.t < loaded[0].t), curve
    # scale-up under load, to the bound and never past it (draining workers included)
    assert max(s.workers for s in loaded) == 3, (curve, events)
    assert max(s.workers for s in samples) <= 3, curve
    # scale-down when idle, to the minimum
    assert idle_after[-1].workers == 1 and idle_after[-2].workers == 1, (curve, events)
    # nobody saw an error while workers came and went
    assert run.errors == 0, run.error_kinds
    assert sum(s.done for s in loaded) > 100
    assert any("-> 3 worker processes" in e for e in events) and any(
        "-> 1 worker processes" in e for e in events
    )
    print("\nautoscale curve (t, offered, workers):", curve)
