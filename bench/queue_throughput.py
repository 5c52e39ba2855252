"""Queue throughput and end-to-end latency for 1, 2, 4 worker processes on a small sklearn model.

Starts a real all-in-one server (temporary home), registers a LinearRegression on 4
features behind a Preprocess, and for each worker count starts that many
``python -m modelyard.cli.queue_worker`` processes on a fresh stream, then measures:

* ``drain``: workers paused (SIGSTOP), N inputs enqueued, workers resumed (SIGCONT):
  inferences/s of the workers alone, from resume to the last result written;
* ``live``: N inputs enqueued as fast as one producer can (batches of 500) while the
  workers run: inferences/s from the first enqueue to the last result, and the
  end-to-end latency (enqueue time to result written) p50/p99 — under saturation,
  so it includes time in the backlog;
* ``paced``: inputs at a fixed rate (default 1,000/s, 10 every 10 ms) for a few seconds:
  latency p50/p99 when the workers keep up.

Latencies use the ``t`` field the producer stamps and the result's ``finished_ms`` (same
machine clock). Every result is checked against the model's own predict.

    .venv/bin/python bench/queue_throughput.py [--n 20000] [--workers 1,2,4] [--batch-size 256]

It prints a table and records nothing; figures taken on a quiet machine go to
``docs/queue.md`` § Performance (with the machine, date and command). A smoke run that
only checks the script works: ``--n 200 --workers 1 --rate 200 --paced-seconds 0.5``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named like the stdlib's ``queue``: keep its folder off the import path
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import redis  # noqa: E402
from tests.queue.stack import Stack  # noqa: E402

from modelyard.queue import InputQueue, OutputQueue  # noqa: E402


def percentiles(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values)
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


def collect(
    out: OutputQueue, uris: list[str], model: Any, xs: np.ndarray
) -> tuple[list[float], float, float]:
    """Latencies (ms), first enqueue and last finish (ms); checks every value."""
    latencies, first, last = [], float("inf"), 0.0
    got = np.empty(len(uris))
    for i, (uri, result) in enumerate(out.results(uris)):
        assert result is not None and result.ok, (uri, result)
        assert result.enqueued_ms is not None and result.finished_ms is not None
        got[i] = result.value["y"][0]
        latencies.append(result.finished_ms - result.enqueued_ms)
        first = min(first, result.enqueued_ms)
        last = max(last, result.finished_ms)
    np.testing.assert_allclose(got, model.predict(xs), rtol=1e-9, atol=1e-9)
    return latencies, first, last


def wait_count(out: OutputQueue, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while out.count() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {out.count()} of {n} results after {timeout} s")
        time.sleep(0.01)


def run_case(
    stack: Stack, rclient: redis.Redis, workers: int, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    stream = f"bench-queue-{uuid.uuid4().hex[:8]}"
    procs = [
        stack.start_worker(f"b{i}", stream, "--endpoint", "lin/1", "--batch-size", str(args.batch_size),
                           "--consumers", str(args.consumers))
        for i in range(workers)
    ]  # fmt: skip
    q = InputQueue(stack.redis_url, stream, endpoint="lin/1", max_pending=None, max_memory_fraction=None)
    out = OutputQueue(stack.redis_url, stream)
    rng = np.random.default_rng(workers)
    row: dict[str, Any] = {"workers": workers}
    try:
        q.predict(x=[0.0] * 4, timeout=120)
        while len(out.workers()) < workers:
            time.sleep(0.05)
        for _ in range(3):  # warm every worker
            q.enqueue_batch([(f"warm-{uuid.uuid4().hex}", {"x": rng.normal(size=4)}) for _ in range(500)])
        wait_count(out, 1500)
        out.dequeue()

        # drain: a backlog of n, workers resumed all at once
        xs = rng.normal(size=(n, 4))
        uris = [f"d{i}" for i in range(n)]
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        q.enqueue_batch([(uris[i], {"x": xs[i]}) for i in range(n)])
        resumed = time.time() * 1000
        for p in procs:
            p.send_signal(signal.SIGCONT)
        wait_count(out, n)
        _, _, last = collect(out, uris, stack.model, xs)
        row["drain/s"] = n / ((last - resumed) / 1000)
        out.dequeue()

        # live: one producer as fast as it can, workers running
        xs = rng.normal(size=(n, 4))
        uris = [f"l{i}" for i in range(n)]
        for start in range(0, n, 500):
            q.enqueue_batch([(uris[i], {"x": xs[i]}) for i in range(start, min(n, start + 500))])
        wait_count(out, n)
        latencies, first, last = collect(out, uris, stack.model, xs)
        row["live/s"] = n / ((last - first) / 1000)
        row["live p50"], row["live p99"] = percentiles(latencies)
        out.dequeue()

        # paced: a fixed rate the workers can keep up with
        count = int(args.rate * args.paced_seconds)
        xs = rng.normal(size=(count, 4))
        uris = [f"p{i}" for i in range(count)]
        step = 10
        started = time.monotonic()
        for k, start in enumerate(range(0, count, step)):
            delay = started + k * step / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            q.enqueue_batch([(uris[i], {"x": xs[i]}) for i in range(start, min(count, start + step))])
        wait_count(out, count)
        latencies, _, _ = collect(out, uris, stack.model, xs)
        row["paced p50"], row["paced p99"] = percentiles(latencies)
        out.dequeue()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
        stack.stop_workers()
        keys = list(rclient.scan_iter(match=f"{stream}*", count=1000))
        if keys:
            rclient.delete(*keys)
    return row


def hiredis_available() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="inputs per drain/live run")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--consumers", type=int, default=1, help="consumers per worker process")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rate", type=float, default=1000.0, help="inputs/s of the paced run")
    parser.add_argument("--paced-seconds", type=float, default=3.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-hiredis", action="store_true", help="workers use redis-py's pure-Python parser")
    args = parser.parse_args()
    rclient = redis.Redis.from_url(args.redis_url)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), args.redis_url)
        if args.no_hiredis:  # hide hiredis from the worker processes
            (Path(tmp) / "sitecustomize.py").write_text("import sys\nsys.modules['hiredis'] = None\n")
            stack.extra_env["PYTHONPATH"] = tmp
        try:
            stack.start_server()
            stack.deploy("lin", "1")
            rows = []
            for workers in (int(w) for w in args.workers.split(",")):
                rows.append(run_case(stack, rclient, workers, args.n, args))
                print(f"  {workers} worker(s) done", file=sys.stderr)
        finally:
            stack.close()
    cols = ["workers", "drain/s", "live/s", "live p50", "live p99", "paced p50", "paced p99"]
    parser_name = "pure-Python" if args.no_hiredis else ("hiredis" if hiredis_available() else "pure-Python")
    print(f"\nqueue bench: {args.n} inputs per run, batch size {args.batch_size}, "
          f"{args.consumers} consumer(s)/worker, paced at {args.rate:g}/s, {parser_name} Redis "
          f"parser in the workers; latencies in ms")  # fmt: skip
    print(" | ".join(f"{c:>9}" for c in cols))
    for row in rows:
        print(" | ".join(f"{row[c]:>9.0f}" if c.endswith("/s") or c == "workers" else f"{row[c]:>9.1f}"
                         for c in cols))  # fmt: skip


if __name__ == "__main__":
    main()
