"""Load generation (wrk or hey, in their own process) and server CPU accounting.

Both generators are closed-loop: N connections, each sends its next request when the previous one
answered, for a fixed time. wrk is the default because it spends less of the 2 shared cores per
request than hey, leaving more to the server under test; ``--load hey`` is there to compare with
the figures quoted in issue 8. A Python client (``pyload.py``: aiohttp on uvloop) costs several times
more CPU per request than either, so it would cap the servers we measure; it is only the fallback
when neither tool can be installed, so a smoke run still works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY_FILE"), "rb"):read()
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nBENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    server_cpu_s: float = 0.0
    error_detail: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        ok = self.requests - self.errors
        return 1000 * self.server_cpu_s / ok if ok else float("nan")


def ensure_tool(name: str, log=print) -> str | None:
    """Path of ``wrk``/``hey``; installs the Debian package (same name) when missing and we are root."""
    if name == "python":
        return "python"
    found = shutil.which(name)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log(f"installing {name} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.call(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
    subprocess.call(["apt-get", "install", "-y", "-qq", name], env=env, stdout=subprocess.DEVNULL)
    return shutil.which(name)


def _run_timed(cmd: list[str], env: dict | None = None, timeout: float = 120) -> tuple[str, float]:
    """Run ``cmd``; its stdout and the CPU seconds it used (from wait4, so children's own)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(" ".join(cmd))
            time.sleep(0.05)
        out.seek(0)
        return out.read().decode(errors="replace"), usage.ru_utime + usage.ru_stime


def run_load(tool: str, url: str, body: bytes, connections: int, seconds: float) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        if tool == "python":
            script = str(Path(__file__).with_name("pyload.py"))
            cmd = [sys.executable, script, url, str(body_file), str(connections), str(seconds)]
            text, cpu = _run_timed(cmd, None, seconds + 60)
            return _parse_wrk(text, cpu)
        if os.path.basename(tool) == "wrk":
            script = Path(tmp) / "post.lua"
            script.write_text(WRK_SCRIPT)
            threads = min(2, connections)
            # wrk takes whole seconds only
            cmd = [
                tool,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ]
            text, cpu = _run_timed(cmd, {**os.environ, "BENCH_BODY_FILE": str(body_file)}, seconds + 60)
            return _parse_wrk(text, cpu)
        cmd = [
            tool,
            "-z",
            f"{seconds:g}s",
            "-c",
            str(connections),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(body_file),
            "-t",
            "10",
            url,
        ]
        text, cpu = _run_timed(cmd, None, seconds + 60)
        return _parse_hey(text, cpu, seconds)


def _parse_wrk(text: str, cpu: float) -> LoadResult:
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {text.strip()[-300:]}")
    r = json.loads(line[6:])
    detail = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    return LoadResult(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        errors=sum(detail.values()),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        client_cpu_s=cpu,
        error_detail=detail,
    )


def _parse_hey(text: str, cpu: float, seconds: float) -> LoadResult:
    def pct(p: str) -> float:
        m = re.search(rf"^\s*{p}% in ([\d.]+) secs", text, re.M)
        return float(m.group(1)) * 1000 if m else float("nan")

    codes_part, _, errors_part = text.partition("Error distribution:")
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", codes_part)}
    socket_errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors_part, re.M))
    bad = sum(n for c, n in codes.items() if c != 200)
    took = re.search(r"Total:\s+([\d.]+) secs", text)
    detail = {k: v for k, v in (("non_200", bad), ("socket", socket_errors)) if v}
    return LoadResult(
        requests=sum(codes.values()) + socket_errors,
        seconds=float(took.group(1)) if took else seconds,
        errors=bad + socket_errors,
        p50_ms=pct("50"),
        p99_ms=pct("99"),
        client_cpu_s=cpu,
        error_detail=detail,
    )


# -- server CPU: utime+stime summed over a process tree -------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds) for every process we can read."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def tree_pids(root: int, table: dict[int, tuple[int, float]] | None = None) -> set[int]:
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def tree_cpu(root: int, extra: set[int] = frozenset()) -> dict[int, float]:
    """CPU seconds of each live process in ``root``'s tree (plus ``extra`` pids seen there before).

    Per pid, so a before/after difference only counts processes alive at both ends; servers'
    workers live for the whole run, and one that died mid-run would show up as errors anyway.
    """
    table = _proc_table()
    pids = tree_pids(root, table) | {p for p in extra if p in table}
    return {pid: table[pid][1] for pid in pids}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before.get(p, 0.0) for p in after)
