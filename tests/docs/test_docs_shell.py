"""Every shell block of README.md and docs/, run for real against a real server (see docblocks.py).

One ``modelyard serve --examples`` for the module (fresh ``HOME``, free port); each page is a test
that runs its blocks in order in one bash session and fails on the first block that fails, naming
it (file:line), the commands that failed and their output. Blocks marked not-run are skipped here
(test_docs_commands.py checks their commands).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from tests.docs import docblocks as db
from tests.docs.shell import ShellSession
from tests.servers import free_port, stop_process_group

pytestmark = [pytest.mark.slow, pytest.mark.redis]

MODELYARD = str(Path(sys.executable).with_name("modelyard"))
LINKED = ("examples", "deploy", "bench", "scripts", ".venv")
"""What a page's working folder holds of the repository (as links): what the docs' commands use."""
BLOCK_TIMEOUT_S = 180.0


def _pages() -> list[Path]:
    """Pages with blocks to run, in the site's nav order, README.md last."""
    nav = yaml.safe_load((db.ROOT / "mkdocs.yml").read_text())["nav"]
    order = [str(v) for item in nav for v in (item.values() if isinstance(item, dict) else [item])]
    pages = sorted(
        (p for p in db.doc_files() if any(b.not_run is None for b in db.shell_blocks(p))),
        key=lambda p: order.index(p.name) if p.parent.name == "docs" and p.name in order else len(order),
    )
    return pages


@dataclass
class Server:
    url: str
    port: int
    home: Path
    """The ``HOME`` of the server and of the pages' shells: ``~/.modelyard`` is the server's."""
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("docs-home")
    port = free_port()
    log_path = home / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env["HOME"] = str(home)
    log = open(log_path, "w+")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(
        [MODELYARD, "serve", "--port", str(port), "--examples"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not re.search(r"serving the examples(.|\n)*/docs\n", log_path.read_text()):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        assert "Not deployed:" not in log_path.read_text(), log_path.read_text()
        yield Server(f"http://127.0.0.1:{port}", port, home, log_path)
    finally:
        stop_process_group(proc, 20)
        log.close()


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(parents=True)
    for name in LINKED:
        (work / name).symlink_to(db.ROOT / name)
    return work


def _env(server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_") and k != "VIRTUAL_ENV"}
    env.update(
        HOME=str(server.home),
        MODELYARD_URL=server.url,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        COLUMNS="160",
        TERM="dumb",
        NO_COLOR="1",
    )
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_page(page: Path, server: Server, tmp_path: Path) -> int:
    """Run ``page``'s blocks; returns how many ran. Fails the test at the first block that fails."""
    rewrite = db.Rewrites(server.port, f"docs-{uuid.uuid4().hex[:10]}", free_port)
    shell = ShellSession(_workdir(tmp_path), _env(server), tmp_path / "shell")
    ran = 0
    try:
        for block in db.shell_blocks(page):
            if block.not_run is not None:
                continue
            syntax = subprocess.run(
                ["bash", "-n"], input=block.commands_text(), capture_output=True, text=True, timeout=30
            )
            assert syntax.returncode == 0, f"{block.where}: not valid bash:\n{syntax.stderr}"
            if block.lang == "console":
                for command, expected in block.console_steps():
                    outcome = shell.run(rewrite(command), strict=False, timeout=BLOCK_TIMEOUT_S)
                    if not db.output_matches(rewrite(expected), outcome.output):
                        pytest.fail(
                            f"{block.where}: the output of\n  $ {command}\nis not what the page shows.\n"
                            f"--- the page:\n{expected}\n--- the command printed (exit {outcome.status}):\n"
                            f"{outcome.output}\n--- server log:\n{_tail(server.log.read_text(), 15)}"
                        )
            else:
                outcome = shell.run(rewrite(block.text), strict=True, timeout=BLOCK_TIMEOUT_S)
                if outcome.failed:
                    pytest.fail(
                        f"{block.where}: these commands failed:\n  "
                        + "\n  ".join(outcome.failed)
                        + f"\n--- the block's output:\n{_tail(outcome.output)}"
                        + f"\n--- server log:\n{_tail(server.log.read_text(), 15)}"
                    )
            ran += 1
    finally:
        shell.close()
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(match=f"{rewrite.stream}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return ran


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", _pages(), ids=db.rel)
def test_the_pages_shell_blocks_run(page: Path, server: Server, tmp_path: Path) -> None:
    assert run_page(page, server, tmp_path) > 0


def test_a_failing_block_fails_the_page_and_names_it(server: Server, tmp_path: Path) -> None:
    """The harness itself: a command that fails (or a curl that gets a 404) is caught, and the
    output of a console block is compared, so a doc cannot pass by not checking."""
    cases = {
        "```bash\ntrue\nfalse\necho after\n```\n": "these commands failed:\n  false (exit 1)",
        "```bash\ncurl -X POST localhost:8080/serve/nope -d '{}'\n```\n": "(exit 22)",
        '```console\n$ curl localhost:8080/health/live\n{"status": "dead"}\n```\n': "is not what the page",
    }
    for number, (text, expected) in enumerate(cases.items()):
        page = tmp_path / f"page{number}.md"
        page.write_text(text)
        with pytest.raises(pytest.fail.Exception, match=re.escape(expected)):
            run_page(page, server, tmp_path / f"run{number}")
    ok = tmp_path / "ok.md"
    ok.write_text(
        "```bash\nX=$(curl localhost:8080/health/live)\ncd examples\n```\n\n"
        '```console\n$ echo "$X" && basename "$PWD"\n...\nexamples\n```\n'
    )
    assert run_page(ok, server, tmp_path / "ok") == 2


def test_background_jobs_end_with_the_page(server: Server, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    marker = f"docs-sleeper-{uuid.uuid4().hex[:8]}"
    page.write_text(f"```bash\nbash -c 'exec -a {marker} sleep 600' &\n```\n")
    run_page(page, server, tmp_path / "run")
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:  # a process that ended meanwhile
            pass
    assert not left, f"background jobs of the page outlived it: pids {left}"
