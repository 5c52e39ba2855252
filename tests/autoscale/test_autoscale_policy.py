"""The autoscaling policy and load window (pure), and the settings/CLI around ``--workers auto``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.autoscale import AutoscalePolicy, LoadSample, LoadWindow, read_load
from modelyard.settings import Settings


def policy(**kw: float) -> AutoscalePolicy:
    args = {"min_workers": 1, "max_workers": 4, "target_inflight": 4.0, "up_cooldown_s": 2.0}
    args.update(kw)
    return AutoscalePolicy(down_delay_s=10.0, **args)  # type: ignore[arg-type]


def test_wanted_is_load_over_target_within_bounds() -> None:
    p = policy()
    assert [p.wanted(x) for x in (0, 0.5, 4, 4.01, 8, 12.5, 100)] == [1, 1, 1, 2, 2, 4, 4]
    assert policy(min_workers=2).wanted(0) == 2


def test_scales_up_at_once_after_the_cooldown_and_down_only_after_the_delay() -> None:
    p = policy()
    assert p.decide(0.0, 9.0, 1) == 3  # up at once to what the load asks for
    assert p.decide(1.0, 20.0, 3) == 3  # cooldown: the new workers are still starting
    assert p.decide(2.0, 20.0, 3) == 4  # then up again, never above max
    assert p.decide(3.0, 0.0, 4) == 4  # idle, but the last 10 s asked for 4
    assert p.decide(11.0, 0.0, 4) == 4
    assert p.decide(12.5, 0.0, 4) == 1  # the window now only holds idle decisions
    assert p.decide(13.0, 0.0, 1) == 1


def test_scale_down_keeps_headroom_around_the_threshold() -> None:
    p = policy()
    assert p.decide(0.0, 15.0, 1) == 4
    for t in range(11, 30):  # 11.1 in flight: 3 workers by the numbers, 4 with 10 % headroom
        assert p.decide(float(t), 11.1, 4) == 4
    assert p.decide(30.0, 10.0, 4) == 4  # 11.0 with headroom fits 3, but the window asked for 4
    assert p.decide(41.0, 10.0, 4) == 3  # ten seconds of "3" later


def test_load_window_uses_request_seconds_per_second_or_inflight() -> None:
    w = LoadWindow(window_s=2.0)
    assert w.add(LoadSample(0.0, 0, 0.0)) == 0
    assert w.add(LoadSample(1.0, 0, 3.0)) == pytest.approx(3.0)  # 3 request-seconds in 1 s
    assert w.add(LoadSample(2.0, 0, 9.0)) == pytest.approx(4.5)
    assert w.add(LoadSample(3.0, 0, 9.0)) == pytest.approx(3.0)  # window: samples from t=1
    # long requests that have not finished yet show as in flight
    assert w.add(LoadSample(4.0, 30, 9.0)) >= 10


def test_read_load_sums_every_workers_files(tmp_path: Path) -> None:
    """prometheus_client picks its mmap values at import: the workers are real processes."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    worker = (
        "from modelyard.metrics import Metrics; import sys\n"
        f"m = Metrics(multiprocess_dir={str(folder)!r}, gpu=False)\n"
        "inst = m.endpoint('iris', '1'); inst.inflight.inc(3)\n"
        "inst.duration.observe(0.25); inst.duration.observe(0.5)\n"
        "m.flush()  # what the flush thread does every FLUSH_INTERVAL_S\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        live = read_load(folder, now=7.0)
    finally:
        for p in procs:
            p.communicate(b"", timeout=30)
    assert (live.at, live.inflight, live.busy_s) == (7.0, 6.0, pytest.approx(1.5))
    # the workers are gone: their requests in flight with them, their request time stays
    gone = read_load(folder)
    assert (gone.inflight, gone.busy_s) == (0.0, pytest.approx(1.5))


def test_workers_auto_in_settings_and_cli_flags() -> None:
    s = Settings(workers="auto", min_workers=2, max_workers=3)  # type: ignore[arg-type]
    assert (s.autoscale, s.workers, s.resolved_max_workers(), s.several_processes()) == (True, 2, 3, True)
    assert s.resolved_ready_wait_s() == 30.0 and Settings().resolved_ready_wait_s() == 0.0
    assert Settings.model_validate_json(s.model_dump_json()).autoscale
    with pytest.raises(ValueError, match="max_workers"):
        Settings(min_workers=3, max_workers=2)


def test_cli_rejects_bad_workers() -> None:
    from typer.testing import CliRunner

    from modelyard.cli.main import app

    result = CliRunner().invoke(app, ["inference", "--workers", "many"])
    assert result.exit_code == 1 and "--workers 'many' is neither a number nor 'auto'" in result.stderr
