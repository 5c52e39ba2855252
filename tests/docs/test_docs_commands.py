"""The docs' shell blocks follow the convention, and every ``modelyard`` command they show is real.

Fast (no server): the markers above shell blocks, the console blocks' shape, and every
``modelyard ...`` command in any shell block (run or not), command synopsis or inline code span
checked against the real CLI's click tree (``--help`` must work, each flag must exist). The
harness's own parsing is tested here too, on made-up pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.docs import docblocks as db
from tests.docs.gen import docs_gen

GEN = docs_gen()
ROOT_CMD = GEN.cli_root()


def _problems(args: list[str]) -> list[str]:
    return db.check_invocation(args, ROOT_CMD, GEN.find_command, GEN.option_names)


def _synopses(block: db.Block) -> list[str]:
    """A text block's ``modelyard ...`` entries (a line starting with it, plus indented continuations)."""
    entries: list[str] = []
    for line in block.text.splitlines():
        if line.startswith("modelyard "):
            entries.append(line.split("#", 1)[0])
        elif entries and line[:1].isspace() and line.strip() and not line.strip().startswith("#"):
            entries[-1] += " " + line.split("#", 1)[0].strip()
    return entries


def _synopsis_problems(entry: str) -> list[str]:
    """Problems of a synopsis such as ``modelyard queue-worker --service S [--endpoint iris/1]``;
    `` | `` between alternatives may start a sibling command (``model show ID | publish ID``)."""
    problems: list[str] = []
    path: list[str] = []
    for number, segment in enumerate(re.split(r"\s\|\s", entry)):
        words = re.sub(r"[\[\]()]", " ", segment).split()[1 if number == 0 else 0 :]
        if number and words and GEN.find_command([*path[:-1], words[0]], ROOT_CMD):
            path = path[:-1]  # an alternative sibling command: `model show ID | publish ID`
        elif number:
            words = ["\0", *words]  # more of the same command, `(--path F | --url U)`: no new path
        while words and not words[0].startswith("-") and GEN.find_command([*path, words[0]], ROOT_CMD):
            path.append(words.pop(0))
        found = GEN.find_command(path, ROOT_CMD)
        assert found is not None
        _, cmd, ctx = found
        known = GEN.option_names(cmd, ctx)
        flags = re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", " ".join(words))
        problems += [
            f"'modelyard {' '.join(path)}' has no option {flag}" for flag in flags if flag not in known
        ]
    return problems


def test_every_shell_block_has_no_marker_or_a_valid_one() -> None:
    problems = [p for path in db.doc_files() for b in db.shell_blocks(path) if (p := b.marker_problem())]
    assert not problems, "\n".join(problems)


def test_console_blocks_are_commands_with_their_output() -> None:
    for path in db.doc_files():
        for block in db.shell_blocks(path):
            if block.lang == "console":
                assert block.console_steps(), f"{block.where}: a console block without a '$ ' command"


def test_every_modelyard_command_in_the_docs_names_a_real_command_and_real_flags() -> None:
    problems: list[str] = []
    paths: set[tuple[str, ...]] = set()
    checked = 0
    for path in db.doc_files():
        for block in db.blocks(path):
            if block.is_shell:
                for args in db.modelyard_invocations(block.commands_text()):
                    problems += [f"{block.where}: {p}" for p in _problems(args)]
                    paths.add(tuple(a for a in args if not a.startswith("-"))[:2])
                    checked += 1
            elif block.lang in ("", "text"):
                for entry in _synopses(block):
                    problems += [f"{block.where}: {p}" for p in _synopsis_problems(entry)]
                    checked += 1
        for line, code in db.inline_commands(path):
            for args in db.modelyard_invocations(code):
                problems += [f"{db.rel(path)}:{line}: `{code}`: {p}" for p in _problems(args)]
                checked += 1
    assert not problems, "\n".join(problems)
    assert checked > 50, checked  # the docs do show commands: the collection itself works
    # and the --help of every command the docs show works, as the reader would ask for it
    runner = CliRunner()
    from modelyard.cli.main import app

    for words in sorted(paths):
        command = [w for w in words if GEN.find_command(list(words[: words.index(w) + 1]), ROOT_CMD)]
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (words, result.output)


# -- the harness itself, on made-up pages ---------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_markers_must_be_known_and_give_a_reason(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "<!-- not-run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "<!-- not-run: -->\n```bash\nx\n```\n\n"
        "<!-- skip this -->\n\n```sh\ny\n```\n\n"
        "text\n```console\n$ echo hi\nhi\n```\n",
    )
    found = db.shell_blocks(page)
    assert [b.line for b in found] == [2, 7, 13, 18]
    assert found[0].not_run == "needs a GPU" and found[0].marker_problem() is None
    assert "needs a reason" in (found[1].marker_problem() or "")
    assert "must be one of" in (found[2].marker_problem() or "")
    assert found[3].marker is None and found[3].not_run is None


def test_console_steps_split_commands_and_output(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "```console\n$ curl -d '{\"a\":\n  1}' x \\\n   -H y\nout 1\nout 2\n"
        "$ true\n$ echo b # it's\nb\n```\n",
    )
    (block,) = db.shell_blocks(page)
    assert block.console_steps() == [
        ("curl -d '{\"a\":\n  1}' x \\\n   -H y", "out 1\nout 2"),
        ("true", ""),
        ("echo b # it's", "b"),
    ]


def test_output_matching_with_ellipses() -> None:
    assert db.output_matches('{"y":[1]}', '{"y":[1]}\n')
    assert not db.output_matches('{"y":[1]}', '{"y":[0]}')
    assert db.output_matches(
        "HTTP/1.1 200 OK\n...\nx-a: b\n...\n{}", "HTTP/1.1 200 OK\ndate: x\nx-a: b\n\n{}"
    )
    assert db.output_matches("HTTP/1.1 200 OK\n...\n{}", "HTTP/1.1 200 OK\n{}")
    assert db.output_matches("error: file.py:... in f", "error: file.py:12 in f")
    assert not db.output_matches("error: file.py:... in f", "error: file.py:12 in g")
    assert not db.output_matches("a\n...", "b\nc")


def test_modelyard_invocations_are_found_in_command_position_only() -> None:
    text = (
        "export DB=postgresql://modelyard@db/modelyard   # not a command\n"
        "ID=$(modelyard model upload --name a --path m.pkl | tail -n 1)\n"
        "modelyard --url http://x endpoint add --endpoint e \\\n  --tags a b && curl x\n"
        "echo modelyard is great; .venv/bin/modelyard status &\n"
    )
    assert db.modelyard_invocations(text) == [
        ["model", "upload", "--name", "a", "--path", "m.pkl"],
        ["--url", "http://x", "endpoint", "add", "--endpoint", "e", "--tags", "a", "b"],
        ["status"],
    ]


def test_unknown_commands_and_flags_are_reported() -> None:
    assert _problems(["endpoint", "add", "--endpoint", "e", "--tags", "a", "b"]) == []
    assert _problems(["--url", "u", "endpoint", "add", "--no-such-flag", "1"]) == [
        "'modelyard endpoint add' has no option --no-such-flag"
    ]
    assert _problems(["endpoint", "frobnicate"]) == ["'modelyard endpoint' has no command 'frobnicate'"]
    assert _problems(["endpoint"]) == ["'modelyard endpoint' names a command group, not a command"]
    assert _synopsis_problems("modelyard queue-worker --service S [--endpoint iris/1] [--nope N]") == [
        "'modelyard queue-worker' has no option --nope"
    ]
    assert _synopsis_problems("modelyard model show ID | tag ID [--add a] | remove ID [--add b]") == [
        "'modelyard model remove' has no option --add"
    ]
    assert _problems(["--install-completion"]) == _problems(["model", "..."]) == []


def test_rewrites_move_every_local_port_and_the_stream() -> None:
    ports = iter([50001, 50002, 50003])
    rewrite = db.Rewrites(server_port=40000, stream="docs-abc", free_port=lambda: next(ports))
    text = (
        "curl localhost:8080/x http://127.0.0.1:8080 127.0.0.1:9101/metrics --metrics-port 9101\n"
        "modelyard inference --port 8081 --grpc-port=8001 redis://127.0.0.1:6379/0 serving_stream:result"
    )
    assert rewrite(text) == (
        "curl localhost:40000/x http://127.0.0.1:40000 127.0.0.1:50001/metrics --metrics-port 50001\n"
        "modelyard inference --port 50002 --grpc-port=50003 redis://127.0.0.1:6379/0 docs-abc:result"
    )


@pytest.mark.parametrize("lang", sorted(db.SHELL_LANGS))
def test_every_shell_language_is_collected(tmp_path: Path, lang: str) -> None:
    page = _page(tmp_path, f"```{lang}\n$ modelyard status\n```\n")
    assert [b.lang for b in db.shell_blocks(page)] == [lang]
