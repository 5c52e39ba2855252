"""What the metrics cost one request on the hot path: the per-request instrument calls in a loop.

    python bench/metrics_overhead.py            # one process (in-memory values)
    python bench/metrics_overhead.py --multi    # prometheus_client multiprocess mode (mmap files)

Per request the data plane does: inflight inc/dec, one duration observe, four stage observes,
one status-code count (the children are resolved once per endpoint version).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time


def main() -> None:
    multi = "--multi" in sys.argv
    folder = tempfile.mkdtemp(prefix="modelyard-bench-") if multi else None
    if folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    from modelyard.metrics import Metrics

    metrics = Metrics(multiprocess_dir=folder, gpu=False)
    inst = metrics.endpoint("iris", "1")
    n = 200_000

    def one() -> None:
        inst.inflight.inc()
        inst.stages(0.00002, 0.00005, 0.0002, 0.00003)
        inst.inflight.dec()
        inst.duration.observe(0.0003)
        inst.ok.inc()

    for _ in range(1000):
        one()
    started = time.perf_counter()
    for _ in range(n):
        one()
    per = (time.perf_counter() - started) / n
    baseline_start = time.perf_counter()
    for _ in range(n):
        pass
    base = (time.perf_counter() - baseline_start) / n
    mode = "multiprocess" if multi else "single process"
    print(f"{mode}: {(per - base) * 1e6:.2f} µs of metrics per request")


if __name__ == "__main__":
    main()
