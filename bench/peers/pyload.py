"""Last-resort load generator when neither wrk nor hey can be had: aiohttp on uvloop, closed loop.

Same contract as the wrk script: N connections, each sends its next POST when the previous one answered,
for a fixed time; prints one ``BENCH {json}`` line. It costs several times more CPU per request than wrk,
so on 2 cores it caps fast servers: its figures are for smoke runs, not comparisons.

    python pyload.py URL BODY_FILE CONNECTIONS SECONDS
"""

import asyncio
import json
import sys
import time

import aiohttp


async def main(url: str, body: bytes, connections: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = {"status": 0, "read": 0}
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while (t0 := time.perf_counter()) < deadline:
                try:
                    async with http.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status >= 400:
                            errors["status"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors["read"] += 1
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        took = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        return (
            int(1e6 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]) if latencies else 0
        )

    return {
        "requests": len(latencies),
        "duration_us": int(took * 1e6),
        "connect": 0,
        "write": 0,
        "timeout": 0,
        **errors,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    url, body_file, conns, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with open(body_file, "rb") as fh:
        result = asyncio.run(main(url, fh.read(), conns, secs))
    print("BENCH " + json.dumps(result), flush=True)
