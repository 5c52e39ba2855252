"""One bash session per docs page: its blocks run in order, as a reader pastes them into a terminal.

The session is a real ``bash`` reading commands from a pipe; each block (or each ``$ command``
of a console block) is sent wrapped so that its output goes to a file of its own and its exit
status, and every command in it that failed, are written where the test can read them. Variables,
``cd``, ``source`` and background jobs therefore carry over between blocks as they would for a
reader. The whole session runs in its own process group, killed at the end (background servers
and workers included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_PRELUDE = r"""
set -o pipefail
curl() {
  __docs_curl="curl $*"
  if [ -n "$__DOCS_STRICT" ]; then command curl -sS --fail-with-body "$@"; else command curl -sS "$@"; fi
}
"""
_TRAP = (
    # $BASH_COMMAND still names the function's last command after a function failed: say which curl
    "trap '__docs_s=$?; __docs_c=$BASH_COMMAND; "
    'case $__docs_c in "command curl "*) __docs_c=$__docs_curl;; esac; '
    'printf "%s (exit %s)\\n" "$__docs_c" "$__docs_s" >> {err}\' ERR'
)


@dataclass
class Outcome:
    status: int
    output: str
    failed: list[str]
    """Commands of the unit that exited non-zero (bash blocks only): ``command (exit N)``."""


class ShellSession:
    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.log = open(scratch / "session.log", "w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._send(_PRELUDE)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text if text.endswith("\n") else text + "\n")
        self.proc.stdin.flush()

    def run(self, text: str, *, strict: bool, timeout: float) -> Outcome:
        """Run ``text`` in the session; ``strict``: record every failing command (ERR trap)."""
        self.count += 1
        out, err, rc = (self.scratch / f"{self.count}.{kind}" for kind in ("out", "err", "rc"))
        trap = _TRAP.format(err=err) if strict else ""
        self._send(
            f"__DOCS_STRICT={'1' if strict else ''}\n"
            f": > {err}\n"
            f"{trap}\n"
            "{\n"
            f"{text}\n"
            f"}} > {out} 2>&1 < /dev/null\n"
            "__docs_rc=$?\n"
            "trap - ERR\n"
            f'echo "$__docs_rc" > {rc}.tmp && mv {rc}.tmp {rc}\n'
        )
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the shell exited ({self.proc.returncode}) while running this block "
                    f"(an 'exit' in it?):\n{self._read(out)}{self.session_log()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the block did not finish in {timeout:g} s (a server in the foreground? end it "
                    f"with '&', or mark the block not-run). Its output so far:\n{self._read(out)}"
                )
            time.sleep(0.05)
        failed = self._read(err).splitlines()
        return Outcome(int(rc.read_text().strip() or 0), self._read(out), failed)

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    def session_log(self) -> str:
        self.log.flush()
        return self._read(self.scratch / "session.log")

    def close(self) -> None:
        """End the shell and everything it started (the blocks' background jobs too)."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # background jobs may outlive bash for a moment: the group gets a last SIGKILL
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(
                    self.proc.pid, signal.SIGTERM if time.monotonic() < deadline - 5 else signal.SIGKILL
                )
            except ProcessLookupError:
                break
            time.sleep(0.1)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.log.close()
