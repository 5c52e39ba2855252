"""modelyard against its peers on equal footing: the same models, requests, load, one table (issues 8, 14).

Serves an iris LogisticRegression and a 50-tree RandomForest on 20 features (trained here, fixed
seed, saved with joblib) in every system, one row per request:

- modelyard (``modelyard serve --workers 1|2``) on ``/v2`` with the peers' V2 JSON body (and on
  ``/serve`` with ``{"x": [...]}`` through Preprocess hooks, a second row); RF also with dynamic
  batching; and a bare ASGI baseline on uvicorn taking the same V2 body (the Python ceiling);
- peers, pinned, each in its own virtualenv under ``--cache`` (installed on first use), each in its
  best reasonable configuration (batching on, request logging off): PyTriton (1 and 2 model
  instances), MLServer + mlserver-sklearn (adaptive batching on RF), TorchServe, BentoML, Ray Serve.

Each server is started on free 127.0.0.1 ports, checked to answer the right class, then driven by
``wrk`` (or ``hey``) in a second process at each concurrency: a warm-up, then a fixed-time run, while
the server's process tree's CPU time is sampled before and after (and, for modelyard with several
workers, the connections and requests each worker took). Rounds repeat (A B A B), every system
started afresh each round, so drift falls on every system and each round is a new start.

    .venv/bin/python bench/peers.py                      # everything, 5 rounds, c=16 (~55 min, 2 cores)
    .venv/bin/python bench/peers.py --quick              # CI smoke, < 3 min, installs nothing
    .venv/bin/python bench/peers.py --configs modelyard/w2,pytriton/instances=1 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
# the helper modules live in bench/peers/; bench/ itself stays off the path so no script there
# can shadow a standard-library module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "peers"))

import _install  # noqa: E402
import _load  # noqa: E402
import _report  # noqa: E402
import _systems  # noqa: E402
import _workers  # noqa: E402

MODELS = _report.MODELS
QUICK_PEER_ORDER = ("pytriton", "mlserver", "torchserve", "bentoml", "ray")


@dataclass
class Row:
    """One measurement: a target (system, config, model) at one concurrency in one round."""

    round: int
    system: str
    config: str
    model: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    cpu_ms_per_request: float
    error_detail: dict
    per_worker: list[int] | None = None
    """Requests each worker answered in this run, largest first (modelyard with several workers)."""
    connections_per_worker: list[int] | None = None
    """Client connections each worker held halfway through the run, largest first (same rows)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ceiling(models_dir: Path, samples: dict, seconds: float) -> dict[str, dict[str, float]]:
    """In-process ``predict`` calls per second on one row (what no server can beat), and RF rows/s at 64."""
    import joblib
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for model in MODELS:
        est = joblib.load(models_dir / f"{model}.joblib")
        row = samples[model]["row"]
        result = {}
        for rows in (1, 64):
            batch = [row] * rows
            est.predict(np.asarray(batch))
            n, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds:
                est.predict(np.asarray(batch))
                n += 1
            result[f"rows{rows}_per_s"] = n * rows / elapsed
        out[model] = result
    return out


def versions(cache: Path, systems: list[str], tool: str) -> dict[str, str]:
    """What was measured, by version: modelyard (and its git commit), the baseline's uvicorn, each
    peer as installed in its venv, the load generator."""
    import uvicorn

    import modelyard

    out = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=HERE.parent
    )
    sha = commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    out["modelyard"] = f"{modelyard.__version__} ({sha or 'no git'})"
    out["baseline"] = f"uvicorn {uvicorn.__version__}"
    for system in dict.fromkeys(systems):
        if system in _systems.PEERS:
            out[system] = _install.version(cache, system) or "?"
    if tool and tool != "python":
        probe = subprocess.run([tool, "-v"], capture_output=True, text=True)
        first = (probe.stdout or probe.stderr).strip().splitlines()[:1]  # "wrk debian/4.1.0-3 [epoll] ..."
        out["load"] = " ".join(first[0].split()[:2]) if first else Path(tool).name
    return out


def pick_variants(args: argparse.Namespace) -> list[_systems.Variant]:
    if args.systems:
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = [s for s in systems if s not in _systems.SYSTEMS]
        if unknown:
            sys.exit(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(_systems.SYSTEMS)}")
    elif args.quick:
        installed = [p for p in QUICK_PEER_ORDER if _install.is_installed(args.cache, p)]
        systems = ["modelyard", "baseline", *installed[:1]]
    else:
        systems = list(_systems.SYSTEMS)
    variants = [v for v in _systems.VARIANTS if v.system in systems]
    if args.configs:
        wanted = {c.strip() for c in args.configs.split(",") if c.strip()}
        unknown = wanted - {v.key for v in _systems.VARIANTS}
        if unknown:
            sys.exit(
                f"unknown config(s) {', '.join(sorted(unknown))}; known: "
                + ", ".join(v.key for v in _systems.VARIANTS)
            )
        variants = [v for v in variants if v.key in wanted]
    else:
        variants = [v for v in variants if v.default]
    if args.quick:  # one configuration per system: the first listed
        variants = [v for i, v in enumerate(variants) if v.system not in {w.system for w in variants[:i]}]
    return variants


def _hold_count(into: dict[int, int], workers: set[int], port: int) -> None:
    into.update(_workers.connections_by_pid(workers, port))


def measure_server(server: _systems.Server, rnd: int, tool: str, args: argparse.Namespace) -> list[Row]:
    """Every target of one running server at every concurrency: warm-up, then the measured run."""
    rows = []
    for target in server.targets:
        if target.model not in args.models:
            continue
        for conns in args.concurrency:
            if args.warmup > 0:
                _load.run_load(tool, target.url, target.body, conns, args.warmup)
            served_before = None
            if server.per_worker is not None:
                time.sleep(_workers.FLUSH_S)  # the warm-up's counts flushed before the reading
                served_before = server.per_worker()
            held: dict[int, int] = {}
            halfway = None
            if served_before is not None:  # who holds the keep-alive connections, mid-run
                port = urlsplit(target.url).port or 80
                workers = _load.tree_pids(server.proc.pid) - {server.proc.pid}
                halfway = threading.Timer(args.duration / 2, _hold_count, (held, workers, port))
                halfway.start()
            before = server.cpu()
            r = _load.run_load(tool, target.url, target.body, conns, args.duration)
            r.server_cpu_s = _load.cpu_delta(before, server.cpu())
            if halfway is not None:
                halfway.join()
            if server.proc.poll() is not None:
                raise RuntimeError(f"died under load: {server.log_tail()}")
            per_worker = None
            if served_before is not None and server.per_worker is not None:
                time.sleep(_workers.FLUSH_S)
                per_worker = _workers.spread(served_before, server.per_worker())
            rows.append(
                Row(
                    round=rnd,
                    system=target.system,
                    config=target.config,
                    model=target.model,
                    connections=conns,
                    rps=r.rps,
                    p50_ms=r.p50_ms,
                    p99_ms=r.p99_ms,
                    errors=r.errors,
                    requests=r.requests,
                    seconds=r.seconds,
                    server_cpu_s=r.server_cpu_s,
                    client_cpu_s=r.client_cpu_s,
                    cpu_ms_per_request=r.cpu_ms_per_request,
                    error_detail=r.error_detail,
                    per_worker=per_worker,
                    connections_per_worker=sorted(held.values(), reverse=True) if held else None,
                )
            )
            log(
                f"  {target.name:42} {target.model:4} c={conns:<3} {r.rps:8.0f} req/s  "
                f"p50 {r.p50_ms:6.2f}  p99 {r.p99_ms:6.2f} ms  errors {r.errors}"
                + (f"  per worker: requests {per_worker}" if per_worker is not None else "")
                + (f", connections {sorted(held.values(), reverse=True)}" if held else "")
            )
    return rows


def measure(args: argparse.Namespace) -> dict:
    variants = pick_variants(args)
    machine = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix="modelyard-peers-"))
    failures: dict[str, str] = {}
    rows: list[Row] = []
    try:
        # models and the ceiling, trained and measured by this interpreter (the repo venv)
        samples = json.loads(
            subprocess.run(
                [sys.executable, str(HERE / "peers" / "train_models.py"), str(work / "models-main")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        ctx = _systems.Context(cache=args.cache, work=work, samples=samples, log=log)
        ctx._models[sys.executable] = work / "models-main"
        batching = None
        if _systems.modelyard_batching() and not args.no_modelyard_batching:
            batching = {"max_batch_size": args.batch_size, "max_batch_delay_ms": args.batch_delay_ms}
        ctx.batching = batching
        log("in-process ceiling")
        limits = ceiling(work / "models-main", samples, 0.5 if args.quick else 2.0)

        for system in dict.fromkeys(v.system for v in variants):
            if system in _systems.PEERS:
                if args.quick or args.no_install:
                    if not _install.is_installed(args.cache, system):
                        failures[system] = "not installed (--quick/--no-install install nothing)"
                    continue
                ok, why = _install.install(args.cache, system, log)
                if not ok:
                    failures[system] = f"install failed: {why}"
        variants = [v for v in variants if v.system not in failures]

        tool = _load.ensure_tool(args.load, log)
        if tool is None:
            tool = _load.ensure_tool("hey" if args.load == "wrk" else "wrk", log) or "python"
            log(f"{args.load} could not be installed; falling back to {tool}")
        log(f"load generator: {tool}")

        for rnd in range(1, args.rounds + 1):
            for variant in variants:
                key = f"{variant.system} {variant.config}"
                if key in failures:
                    continue
                log(f"round {rnd}: starting {key}")
                server = None
                started = time.monotonic()
                try:
                    server = variant.start(ctx)
                    expected = {m: samples[m]["label"] for m in MODELS}
                    _systems.wait_targets(server, expected, variant.startup_s)
                    log(f"  {key} ready in {time.monotonic() - started:.1f} s")
                    rows += measure_server(server, rnd, tool, args)
                except Exception as exc:  # a peer that cannot start is reported, not fatal
                    failures[key] = f"{type(exc).__name__}: {exc}"[:400]
                    log(f"  {key} FAILED: {failures[key]}")
                finally:
                    if server is not None:
                        if args.keep_work:  # keep the server's own folders (TorchServe's logs...) too
                            server.cleanup = None
                        server.stop()
    finally:
        if args.keep_work:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(args.cache, [v.system for v in variants], tool),
        "machine": {**machine, "loadavg_end": os.getloadavg()[0]},
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "load": tool,
            "models": args.models,
            "quick": args.quick,
            "modelyard_batching": batching,
        },
        "ceiling": limits,
        "rows": [asdict(r) for r in rows],
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--systems", help=f"comma-separated, from: {','.join(_systems.SYSTEMS)} (default all)"
    )
    parser.add_argument(
        "--configs",
        help="only these, comma-separated system/config (e.g. modelyard/w2,pytriton/instances=1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: one config per system, 3 s runs, 1 round, no installs"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "modelyard-bench",
        help="where peer virtualenvs live (default ~/.cache/modelyard-bench)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10; quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each run (default 3; quick 1)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="times every system is started and measured, interleaved (default 5; quick 1)",
    )
    parser.add_argument(
        "--concurrency",
        default="16",
        help="connections, comma-separated (default 16; 16,64 doubles the time)",
    )
    parser.add_argument("--models", default="iris,rf", help="iris,rf (default both)")
    parser.add_argument(
        "--load",
        choices=("wrk", "hey", "python"),
        default="wrk",
        help="load generator (default wrk; python = aiohttp fallback, for smoke runs only)",
    )
    parser.add_argument("--no-install", action="store_true", help="skip peers whose venv is not there yet")
    parser.add_argument("--batch-size", type=int, default=64, help="modelyard RF max_batch_size (default 64)")
    parser.add_argument(
        "--batch-delay-ms", type=float, default=2.0, help="modelyard RF max_batch_delay_ms (default 2)"
    )
    parser.add_argument(
        "--no-modelyard-batching", action="store_true", help="no batched RF row for modelyard"
    )
    parser.add_argument(
        "--json", type=Path, help="also write every measurement here (default: under --cache)"
    )
    parser.add_argument("--table", type=Path, metavar="JSON", help="only print the table of a saved run")
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the temp folder (server logs) for debugging"
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.rounds = args.rounds or 1 if args.quick else args.rounds or 5
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.models = [m for m in args.models.split(",") if m]
    args.cache = args.cache.expanduser()

    if args.table:
        print(_report.render(json.loads(args.table.read_text())))
        return 0
    # a SIGTERM (CI timeout, kill) unwinds like Ctrl-C, so every started server is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = measure(args)
    out = args.json or args.cache / "results" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(_report.render(result), flush=True)
    print(f"\nall measurements: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
