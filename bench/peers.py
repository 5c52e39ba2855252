"""modelyard against its peers: the same two models, the same load, one table (issue 8).

Serves an iris LogisticRegression and a 50-tree RandomForest on 20 features (trained here, fixed
seed, saved with joblib) in every system, each in its own native request format, single-row JSON:

- modelyard (``modelyard serve --workers 1|2``; RF also with dynamic batching when this modelyard
  has it), and a bare ASGI baseline on uvicorn (``bench/peers/baseline_app.py``: the Python ceiling);
- peers, each in its own virtualenv under ``--cache`` (installed on first use): MLServer +
  mlserver-sklearn, BentoML, Ray Serve, NVIDIA Triton via PyTriton, TorchServe.

Each server is started on free 127.0.0.1 ports, checked to answer the right class, then driven by
``wrk`` (or ``hey``) in a second process at each concurrency: a warm-up, then a fixed-time run, while
the server's process tree's CPU time is sampled before and after. Systems run one after another
within a round and rounds repeat (A B A B), so drift on the machine falls on every system.

    .venv/bin/python bench/peers.py                      # everything, ~30-40 min on 2 cores
    .venv/bin/python bench/peers.py --quick              # CI smoke, < 2 min, installs nothing
    .venv/bin/python bench/peers.py --systems modelyard,baseline,pytriton --duration 10 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the helper modules live in bench/peers/; bench/ itself stays off the path so no script there
# can shadow a standard-library module
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "peers"))

import _install  # noqa: E402
import _load  # noqa: E402
import _systems  # noqa: E402

MODELS = ("iris", "rf")
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
    if args.quick:  # one configuration per system: the first listed
        variants = [v for i, v in enumerate(variants) if v.system not in {w.system for w in variants[:i]}]
    return variants


def measure_server(server: _systems.Server, rnd: int, tool: str, args: argparse.Namespace) -> list[Row]:
    """Every target of one running server at every concurrency: warm-up, then the measured run."""
    rows = []
    for target in server.targets:
        if target.model not in args.models:
            continue
        for conns in args.concurrency:
            if args.warmup > 0:
                _load.run_load(tool, target.url, target.body, conns, args.warmup)
            before = server.cpu()
            r = _load.run_load(tool, target.url, target.body, conns, args.duration)
            r.server_cpu_s = _load.cpu_delta(before, server.cpu())
            if server.proc.poll() is not None:
                raise RuntimeError(f"died under load: {server.log_tail()}")
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
                )
            )
            log(
                f"  {target.name:34} {target.model:4} c={conns:<3} {r.rps:8.0f} req/s  "
                f"p50 {r.p50_ms:6.2f}  p99 {r.p99_ms:6.2f} ms  errors {r.errors}"
            )
    return rows


def measure(args: argparse.Namespace) -> dict:
    variants = pick_variants(args)
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


# -- the table ------------------------------------------------------------------------------------


def aggregate(rows: list[dict]) -> list[dict]:
    """Rounds of one target folded: median rps/p50/p99/CPU, min-max rps, summed errors."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["connections"], r["system"], r["config"]), []).append(r)
    out = []
    for (model, conns, system, config), rs in groups.items():
        rps = [r["rps"] for r in rs]
        out.append(
            {
                "model": model,
                "connections": conns,
                "system": system,
                "config": config,
                "rps": statistics.median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "rounds": len(rs),
                "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in rs),
            }
        )
    order = {s: i for i, s in enumerate(_systems.SYSTEMS)}
    out.sort(
        key=lambda a: (MODELS.index(a["model"]), a["connections"], order.get(a["system"], 99), -a["rps"])
    )
    return out


def best(agg: list[dict], model: str, conns: int, system: str) -> dict | None:
    mine = [a for a in agg if a["model"] == model and a["connections"] == conns and a["system"] == system]
    return max(mine, key=lambda a: a["rps"]) if mine else None


def render(result: dict) -> str:
    agg = aggregate(result["rows"])
    s = result["settings"]
    lines = [
        f"modelyard vs peers  {result['date']}  load={Path(s['load']).name} duration={s['duration_s']}s "
        f"warmup={s['warmup_s']}s rounds={s['rounds']}",
        "modelyard RF dynamic batching: "
        + (
            f"max_batch_size={s['modelyard_batching']['max_batch_size']}, max_batch_delay_ms="
            f"{s['modelyard_batching']['max_batch_delay_ms']} (rows 'w1+batch(...)')"
            if s["modelyard_batching"]
            else "not used (this modelyard does not read max_batch_size)"
        ),
        "",
        f"{'model':5} {'conns':>5} {'system':10} {'config':24} {'req/s':>8} {'min-max':>13} {'p50ms':>7} "
        f"{'p99ms':>7} {'errors':>6} {'cpu_ms/req':>10} {'my/this':>7}",
    ]
    for a in agg:
        my = best(agg, a["model"], a["connections"], "modelyard")
        ratio = f"{my['rps'] / a['rps']:.2f}x" if my and a["rps"] and a["system"] != "modelyard" else "-"
        spread = f"{a['rps_min']:.0f}-{a['rps_max']:.0f}" if a["rounds"] > 1 else "-"
        lines.append(
            f"{a['model']:5} {a['connections']:>5} {a['system']:10} {a['config']:24} {a['rps']:8.0f} "
            f"{spread:>13} {a['p50_ms']:7.2f} {a['p99_ms']:7.2f} {a['errors']:>6} {a['cpu_ms']:10.3f} "
            f"{ratio:>7}"
        )
    lines += ["", "modelyard's best config against each system's best config (same model, connections):"]
    for model in MODELS:
        c = result["ceiling"].get(model, {})
        for conns in sorted({a["connections"] for a in agg if a["model"] == model}):
            my = best(agg, model, conns, "modelyard")
            if not my:
                continue
            parts = []
            for system in _systems.SYSTEMS[1:]:
                other = best(agg, model, conns, system)
                if other and other["rps"]:
                    parts.append(f"{my['rps'] / other['rps']:.2f}x {system} ({other['config']})")
            lines.append(
                f"  {model:4} c={conns:<3} modelyard {my['config']} {my['rps']:.0f} req/s: "
                + (", ".join(parts) or "no other system measured")
            )
            # against the ceiling and the baseline: the same work per request (one row per predict)
            plain = best([a for a in agg if "batch" not in a["config"]], model, conns, "modelyard")
            base = best(agg, model, conns, "baseline")
            frac = []
            if plain and c.get("rows1_per_s"):
                frac.append(
                    f"unbatched {plain['config']} {plain['rps']:.0f} req/s = "
                    f"{plain['rps'] / c['rows1_per_s']:.0%} of the in-process 1-row loop"
                )
                if base and base["rps"]:
                    frac.append(f"{plain['rps'] / base['rps']:.0%} of the baseline ({base['config']})")
            if "batch" in my["config"] and c.get("rows64_per_s"):
                frac.append(f"batched = {my['rps'] / c['rows64_per_s']:.0%} of the in-process 64-row rate")
            if frac:
                lines.append(f"  {'':4} {'':5} " + "; ".join(frac))
    lines += ["", "in-process predict loop (the ceiling, this interpreter, one core):"]
    for model, c in result["ceiling"].items():
        lines.append(
            f"  {model:4} 1 row/call {c['rows1_per_s']:8.0f} calls/s ({1e6 / c['rows1_per_s']:.0f} us); "
            f"64 rows/call {c['rows64_per_s']:8.0f} rows/s"
        )
    if result["failures"]:
        lines += ["", "not measured:"]
        lines += [f"  {k}: {v}" for k, v in result["failures"].items()]
    return "\n".join(lines)


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
        "--rounds", type=int, help="times every system is measured, interleaved (default 2; quick 1)"
    )
    parser.add_argument("--concurrency", default="16,64", help="connections, comma-separated (default 16,64)")
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
    args.rounds = args.rounds or 1 if args.quick else args.rounds or 2
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.models = [m for m in args.models.split(",") if m]
    args.cache = args.cache.expanduser()

    if args.table:
        print(render(json.loads(args.table.read_text())))
        return 0
    # a SIGTERM (CI timeout, kill) unwinds like Ctrl-C, so every started server is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = measure(args)
    out = args.json or args.cache / "results" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(render(result), flush=True)
    print(f"\nall measurements: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
