"""Buffered request metrics: the same exposition as direct Prometheus calls, once flushed."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client import generate_latest

from modelyard.metrics import FLUSH_INTERVAL_S, Metrics

VALUES = [0.0, 0.0001, 0.00025, 0.0003, 0.001, 0.0049, 0.005, 0.0051, 0.2, 1.0, 7.0, 100.0, math.inf]


def exposition_lines(metrics: Metrics) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(("modelyard_request", "modelyard_stage", "modelyard_inflight", "modelyard_batch"))
        and "_created" not in line
    )


def test_buffered_instruments_expose_exactly_what_direct_observes_would() -> None:
    buffered = Metrics(gpu=False)
    direct = Metrics(gpu=False)
    inst = buffered.endpoint("iris", "1")
    for stage in ("preprocess", "queue", "process", "postprocess"):  # children exist from the start
        direct.stage_duration.labels("default", "iris", "1", stage)
    for value in VALUES:
        inst.duration.observe(value)
        inst.process.observe(value)
        inst.batch_size.observe(value * 100)
        direct.request_duration.labels("default", "iris", "1").observe(value)
        direct.stage_duration.labels("default", "iris", "1", "process").observe(value)
        direct.batch_size.labels("default", "iris", "1").observe(value * 100)
    for code in (200, 200, 422, 503):
        inst.count(code)
        direct.requests.labels("default", "iris", "1", str(code)).inc()
    inst.inflight.inc(3)
    inst.inflight.dec()
    direct.inflight.labels("default", "iris", "1").inc(2)
    # a collection of the registry flushes first: nothing is missing from a scrape
    assert exposition_lines(buffered) == exposition_lines(direct)
    assert exposition_lines(buffered) == exposition_lines(direct), "flushing twice adds nothing"


def test_updates_from_many_threads_are_all_counted() -> None:
    metrics = Metrics(gpu=False)
    inst = metrics.endpoint("iris", "1")

    def hammer() -> None:
        for _ in range(20_000):
            inst.ok.inc()
            inst.process.observe(0.001)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        metrics.flush()  # flushes racing the writers lose nothing
    for t in threads:
        t.join()
    samples = {
        s.name + str(sorted(s.labels.items())): s.value for f in metrics.registry.collect() for s in f.samples
    }
    ok = [v for k, v in samples.items() if k.startswith("modelyard_requests_total") and "'200'" in k]
    count = [
        v
        for k, v in samples.items()
        if k.startswith("modelyard_stage_duration_seconds_count") and "'process'" in k
    ]
    assert ok == [80_000] and count == [80_000]


def test_several_workers_flush_into_the_shared_files_on_their_own(tmp_path: Path) -> None:
    """A worker's requests reach another worker's scrape within the flush interval, unasked."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    worker = (
        "from modelyard.metrics import Metrics; import sys\n"
        f"m = Metrics(multiprocess_dir={str(folder)!r}, gpu=False)\n"
        "inst = m.endpoint('iris', '1')\n"
        "for _ in range(7): inst.ok.inc(); inst.duration.observe(0.01)\n"
        "print('ready', flush=True); sys.stdin.read(); m.close()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    proc = subprocess.Popen(
        [sys.executable, "-c", worker], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        scraper = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time, sys; from modelyard.metrics import Metrics\n"
                f"time.sleep({FLUSH_INTERVAL_S * 3})\n"
                f"m = Metrics(multiprocess_dir={str(folder)!r}, gpu=False)\n"
                "sys.stdout.write(m.exposition()[0].decode())\n",
            ],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
    finally:
        proc.communicate(b"", timeout=30)
    text = scraper.stdout.decode()
    assert 'modelyard_requests_total{code="200",endpoint="iris",service="default",version="1"} 7.0' in text
    assert (
        'modelyard_request_duration_seconds_count{endpoint="iris",service="default",version="1"} 7.0' in text
    )
