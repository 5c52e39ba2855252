"""The tables of a peers run: everything measured, the equal-footing comparison, the worker balance.

Works on the saved JSON alone (``bench/peers.py --table run.json``), so a committed raw result can
be re-read and re-checked without re-running anything. Rounds are interleaved (each system started
afresh every round), so a target's rounds are also its *starts*: the min-max over rounds is the
start-to-start spread issue 14 asks to keep within 10 %.
"""

from __future__ import annotations

import statistics
from pathlib import Path

MODELS = ("iris", "rf")
SYSTEM_ORDER = ("modelyard", "baseline", "pytriton", "mlserver", "torchserve", "bentoml", "ray")
OIP = ("modelyard", "baseline", "pytriton", "mlserver")
"""Systems measured with the V2 JSON body (the others have no OIP front: their own JSON body)."""
PEERS = SYSTEM_ORDER[2:]
START_SPREAD_GOAL = 1.10
"""Issue 14: five starts of the same server within 10 % of each other (max / min)."""


def is_v2(a: dict) -> bool:
    return a["system"] != "modelyard" or a["config"].endswith("/v2")


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
                "by_round": {r["round"]: r for r in rs},
                "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in rs),
            }
        )
    order = {s: i for i, s in enumerate(SYSTEM_ORDER)}
    out.sort(
        key=lambda a: (MODELS.index(a["model"]), a["connections"], order.get(a["system"], 99), -a["rps"])
    )
    return out


def best(agg: list[dict], model: str, conns: int, system: str, v2_only: bool = False) -> dict | None:
    mine = [
        a
        for a in agg
        if a["model"] == model
        and a["connections"] == conns
        and a["system"] == system
        and (is_v2(a) or not v2_only)
    ]
    return max(mine, key=lambda a: a["rps"]) if mine else None


def best_peer(agg: list[dict], model: str, conns: int) -> dict | None:
    peers = [b for p in PEERS if (b := best(agg, model, conns, p))]
    return max(peers, key=lambda a: a["rps"]) if peers else None


def _spread(a: dict) -> str:
    return f"{a['rps_min']:.0f}-{a['rps_max']:.0f}" if a["rounds"] > 1 else "-"


def _header(result: dict) -> list[str]:
    s = result["settings"]
    lines = [
        f"modelyard vs peers  {result['date']}  load={Path(s['load']).name} duration={s['duration_s']}s "
        f"warmup={s['warmup_s']}s rounds={s['rounds']} (each round starts every system afresh)"
    ]
    if result.get("versions"):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    machine = result.get("machine")
    if machine:
        lines.append(
            f"machine: {machine['cpus']} CPUs; load average at start {machine['loadavg_start']:.2f}, "
            f"at end {machine.get('loadavg_end', float('nan')):.2f} (anything well above 0 means noise)"
        )
    b = s.get("modelyard_batching")
    lines.append(
        "modelyard RF dynamic batching: "
        + (
            f"max_batch_size={b['max_batch_size']}, max_batch_delay_ms={b['max_batch_delay_ms']} "
            "(rows 'wN+batch(...)')"
            if b
            else "not used"
        )
    )
    lines.append(
        "request body: the V2 JSON tensor for modelyard /v2, baseline, PyTriton, MLServer; "
        '{"x": [...]} for modelyard /serve, TorchServe, Ray; {"x": [[...]]} for BentoML (batchable)'
    )
    return lines


def _all_rows(agg: list[dict]) -> list[str]:
    lines = [
        f"{'model':5} {'conns':>5} {'system':10} {'config':34} {'req/s':>8} {'min-max':>13} {'p50ms':>7} "
        f"{'p99ms':>7} {'errors':>6} {'cpu_ms/req':>10} {'my/this':>7}"
    ]
    for a in agg:
        my = best(agg, a["model"], a["connections"], "modelyard", v2_only=True)
        ratio = f"{my['rps'] / a['rps']:.2f}x" if my and a["rps"] and a["system"] != "modelyard" else "-"
        lines.append(
            f"{a['model']:5} {a['connections']:>5} {a['system']:10} {a['config']:34} {a['rps']:8.0f} "
            f"{_spread(a):>13} {a['p50_ms']:7.2f} {a['p99_ms']:7.2f} {a['errors']:>6} {a['cpu_ms']:10.3f} "
            f"{ratio:>7}"
        )
    lines.append("my/this = modelyard's best /v2 config (median req/s) over this row's")
    return lines


def _per_round_ratio(my: dict, agg: list[dict], model: str, conns: int) -> list[float]:
    """modelyard's rps over the best peer config's, round by round (both measured in that round)."""
    ratios = []
    for rnd, row in my["by_round"].items():
        peer_rps = [
            a["by_round"][rnd]["rps"]
            for a in agg
            if a["model"] == model
            and a["connections"] == conns
            and a["system"] in PEERS
            and rnd in a["by_round"]
        ]
        if peer_rps and max(peer_rps):
            ratios.append(row["rps"] / max(peer_rps))
    return ratios


def _equal_footing(result: dict, agg: list[dict]) -> list[str]:
    lines = ["", "Equal footing: modelyard /v2 (the peers' V2 body) against each system's best config"]
    for model in MODELS:
        c = result["ceiling"].get(model, {})
        for conns in sorted({a["connections"] for a in agg if a["model"] == model}):
            my = best(agg, model, conns, "modelyard", v2_only=True)
            if not my:
                continue
            top = best_peer(agg, model, conns)
            head = f"  {model:4} c={conns:<3} modelyard {my['config']} {my['rps']:.0f} req/s ({_spread(my)})"
            if top:
                ratios = _per_round_ratio(my, agg, model, conns)
                per_round = f", per round {min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else ""
                head += (
                    f" = {my['rps'] / top['rps']:.2f}x the best peer, {top['system']} {top['config']} "
                    f"{top['rps']:.0f}{per_round}"
                )
            lines.append(head)
            parts = []
            for system in PEERS:
                other = best(agg, model, conns, system)
                if other and other["rps"]:
                    parts.append(f"{my['rps'] / other['rps']:.2f}x {system} ({other['config']})")
            if parts:
                lines.append("       " + ", ".join(parts))
            # the same endpoint's /serve row, the baseline and the ceiling: the same work per request
            frac = []
            serve = best([a for a in agg if not is_v2(a)], model, conns, "modelyard")
            if serve and serve["rps"]:
                frac.append(f"/serve best {serve['rps']:.0f} req/s ({serve['config']})")
            plain = [a for a in agg if is_v2(a) and "batch" not in a["config"]]
            my_plain = best(plain, model, conns, "modelyard")
            base = best(agg, model, conns, "baseline")
            if my_plain and base and base["rps"]:
                frac.append(
                    f"unbatched /v2 {my_plain['config']} = {my_plain['rps'] / base['rps']:.0%} of the "
                    f"baseline ({base['config']})"
                )
            if my_plain and c.get("rows1_per_s"):
                frac.append(f"{my_plain['rps'] / c['rows1_per_s']:.0%} of the in-process 1-row loop")
            if "batch" in my["config"] and c.get("rows64_per_s"):
                frac.append(f"batched = {my['rps'] / c['rows64_per_s']:.0%} of the in-process 64-row rate")
            if frac:
                lines.append("       " + "; ".join(frac))
    same = []
    for a in agg:  # /v2 against /serve on the same config (iris: the same model, no batching)
        if a["system"] == "modelyard" and a["config"].endswith("/serve"):
            v2 = next(
                (
                    b
                    for b in agg
                    if b["system"] == "modelyard"
                    and b["model"] == a["model"]
                    and b["connections"] == a["connections"]
                    and b["config"] == a["config"][: -len("/serve")] + "/v2"
                ),
                None,
            )
            if v2 and a["rps"]:
                same.append(
                    f"{a['model']} c={a['connections']} {a['config'][:-7]}: {v2['rps'] / a['rps']:.0%}"
                )
    if same:
        lines.append(
            '  /v2 (V2 body, no hooks) as a share of /serve ({"x"} body, Preprocess hooks), same '
            "workers: " + ", ".join(same) + "  (the same endpoint, in-process: bench/peers/profile_oip.py)"
        )
    return lines


def _balance(agg: list[dict]) -> list[str]:
    rows = [a for a in agg if a["system"] == "modelyard" and a["rounds"] > 0]
    if not rows:
        return []
    lines = [
        "",
        "modelyard start to start (every round is a fresh start; goal: max/min <= "
        f"{START_SPREAD_GOAL:.2f}) and the spread over workers (connections held mid-run; requests)",
    ]
    for a in rows:
        rounds = [a["by_round"][k] for k in sorted(a["by_round"])]
        rps = " ".join(f"{r['rps']:.0f}" for r in rounds)
        ratio = a["rps_max"] / a["rps_min"] if a["rps_min"] else float("inf")
        verdict = "ok" if ratio <= START_SPREAD_GOAL else "OVER"
        lines.append(
            f"  {a['model']:4} c={a['connections']:<3} {a['config']:34} req/s per start: {rps}"
            f"  max/min {ratio:.2f} {verdict}"
        )
        held = [r.get("connections_per_worker") for r in rounds]
        served = [r.get("per_worker") for r in rounds]
        if any(held) or any(served):
            lines.append(
                f"  {'':42} connections {' '.join(str(h) for h in held)}; "
                f"requests {' '.join(str(s) for s in served)}"
            )
    return lines


def render(result: dict) -> str:
    agg = aggregate(result["rows"])
    lines = [*_header(result), "", *_all_rows(agg), *_equal_footing(result, agg), *_balance(agg)]
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
