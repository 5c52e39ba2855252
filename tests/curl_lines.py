"""Run the ``curl`` lines ``modelyard serve --examples`` prints, with the real ``curl`` binary."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class CurlAnswer:
    line: str
    path: str
    sample: Any
    status: int
    body: Any


def curl_lines(output: str) -> list[str]:
    """The printed ``curl ...`` lines, in order."""
    return [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]


def run_curl_line(line: str) -> CurlAnswer:
    """Run ``line`` as a user pasting it would (plus -sS and the status code on the last line)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("the 'curl' binary is not installed: the printed curl lines cannot be checked")
    args = shlex.split(line)
    assert args[0] == "curl", line
    url = next(a for a in args if a.startswith("http"))
    sample = json.loads(args[args.index("-d") + 1])
    done = subprocess.run(
        [curl, "-sS", "--max-time", "30", "-w", "\n%{http_code}", *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{line}\n{done.stderr}"
    text, _, status = done.stdout.rpartition("\n")
    body: Any = json.loads(text) if text.strip() else None
    return CurlAnswer(line, url.split("/serve", 1)[1], sample, int(status), body)
