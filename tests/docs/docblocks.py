"""The shell blocks of README.md and docs/**/*.md, and how the docs tests run and check them.

The convention (docs/development.md repeats it for writers):

* Every fenced block whose language is ``bash``, ``sh``, ``shell`` or ``console`` is collected.
* The blocks of one page run in order in ONE bash session (variables, ``cd``, ``source`` and
  background jobs carry from block to block, as in a reader's terminal), against a real
  ``modelyard serve --examples`` the test starts with a fresh ``HOME`` (so ``~/.modelyard`` is
  the test's), in a folder holding the repository's ``examples/``, ``deploy/`` and ``.venv``.
  ``127.0.0.1:8080``/``localhost:8080`` are rewritten to the test server's port, every other
  local port (``127.0.0.1:9101``, ``--port 8081``, ``--metrics-port``, ``--grpc-port``) to a
  free one, the Redis stream ``serving_stream`` to a fresh name, and ``MODELYARD_URL`` points at
  the server. ``curl`` runs with ``-sS``.
* ``bash``/``sh``/``shell`` blocks: every command must succeed (an ERR trap records each
  failing command, ``pipefail`` on; ``curl`` also gets ``--fail-with-body``, so an HTTP error
  fails the block).
* ``console`` blocks: ``$ command`` lines (a trailing ``\\`` or an open quote continues one), each followed by
  the output it prints; the output is compared after trimming trailing spaces and blank edges.
  ``...`` alone on a line matches any lines; ``...`` inside a line matches any text.
* A block that cannot run here (a Kubernetes cluster, a GPU, ``make`` that installs, other
  hosts) has ``<!-- not-run: REASON -->`` as the last non-blank line above its fence. It is not
  run, but every ``modelyard ...`` command in it must still name a real command and real flags
  (as every command in every block, and every inline ``modelyard ...`` code span, must).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGS = frozenset({"bash", "sh", "shell", "console"})
SERVER_PORT = 8080
"""The port the docs show for ``modelyard serve`` (what ``make serve`` binds)."""
KEPT_PORTS = frozenset({6379, 5432})
"""Redis and PostgreSQL: the docs' commands use the real ones the tests use."""
STREAM = "serving_stream"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_COMMENT = re.compile(r"^\s*<!--(?P<body>.*?)-->\s*$")
_MARKER = re.compile(r"^\s*(?P<name>[a-z-]+)\s*(?::\s*(?P<arg>.*?))?\s*$", re.DOTALL)
MARKERS = frozenset({"not-run"})
_INLINE_CODE = re.compile(r"(?<!`)`(?P<code>modelyard\s[^`]+)`(?!`)")
_LOCAL_PORT = re.compile(r"(?P<host>127\.0\.0\.1|localhost|0\.0\.0\.0):(?P<port>\d{2,5})\b")
_PORT_FLAG = re.compile(r"(?P<flag>--(?:port|grpc-port|metrics-port))(?P<sep>[ =])(?P<port>\d{2,5})\b")


def doc_files() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass
class Block:
    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    text: str
    marker: str | None = None
    """The HTML comment right above the fence, if any (its inside, stripped)."""

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS

    def marker_problem(self) -> str | None:
        """Why the marker above this block is not a valid one, or ``None``."""
        if self.marker is None:
            return None
        found = _MARKER.match(self.marker)
        if not found or found["name"] not in MARKERS:
            return (
                f"{self.where}: the comment above a shell block must be one of "
                f"{', '.join(f'<!-- {m}: REASON -->' for m in sorted(MARKERS))}, "
                f"not <!--{self.marker}-->"
            )
        if not (found["arg"] or "").strip():
            return f"{self.where}: <!-- {found['name']}: --> needs a reason: why can this block not run here?"
        return None

    @property
    def not_run(self) -> str | None:
        """The reason this block is not run, or ``None`` when it runs."""
        found = _MARKER.match(self.marker or "")
        if found and found["name"] == "not-run":
            return (found["arg"] or "").strip()
        return None

    def console_steps(self) -> list[tuple[str, str]]:
        """A ``console`` block's ``(command, expected output)`` pairs, in order."""
        steps: list[tuple[str, list[str]]] = []
        lines = self.text.splitlines()
        index = 0
        while index < len(lines):
            line = lines[index]
            if line.startswith("$ "):
                command = [line[2:]]
                while _continues("\n".join(command)) and index + 1 < len(lines):
                    index += 1
                    command.append(lines[index])
                steps.append(("\n".join(command), []))
            elif steps:
                steps[-1][1].append(line)
            elif line.strip():
                raise ValueError(f"{self.where}: a console block starts with a '$ ' command, not {line!r}")
            index += 1
        return [(command, "\n".join(output)) for command, output in steps]

    def commands_text(self) -> str:
        """The shell text of the block (a console block's commands only)."""
        if self.lang == "console":
            return "\n".join(command for command, _ in self.console_steps())
        return self.text


def _continues(command: str) -> bool:
    """Whether a console command goes on on the next line: a trailing ``\\`` or an open quote."""
    if command.endswith("\\"):
        return True
    try:
        shlex.split(command, comments=True)
    except ValueError:  # "No closing quotation"
        return True
    return False


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path`` (any language), with the comment above it."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = (opening["info"].strip().split() or [""])[0].lower()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not re.match(
            rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]
        ):
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        comment = _COMMENT.match(lines[above]) if above >= 0 else None
        marker = comment["body"].strip() if comment else None
        found.append(Block(path, index + 1, lang, "\n".join(body), marker))
        index = end + 1
    return found


def shell_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.is_shell]


def inline_commands(path: Path) -> list[tuple[int, str]]:
    """``(line, command)`` of every inline code span starting with ``modelyard `` (outside fences;
    a span may run over a line break, as Markdown allows)."""
    prose: list[str] = []
    inside = False
    for line in path.read_text().splitlines():
        fence = _FENCE.match(line)
        if fence:
            inside = not inside
        prose.append("" if inside or fence else line)
    text = "\n".join(prose)
    return [
        (text.count("\n", 0, m.start()) + 1, " ".join(m["code"].split())) for m in _INLINE_CODE.finditer(text)
    ]


# -- modelyard command lines ----------------------------------------------------------------------

_PREFIXES = frozenset({"time", "exec", "nohup", "command", "env"})
_SEPARATORS = frozenset({";", "&", "&&", "|", "||", "(", ")", "<", ">", ">>", "<<", "2>", "|&", ";;"})


def modelyard_invocations(shell: str) -> list[list[str]]:
    """The argument lists of every ``modelyard ...`` command in a shell text (comments dropped)."""
    # a newline ends a command: "\n;" keeps a separator even after a comment ate the newline
    text = re.sub(r"\\\n", " ", shell).replace("\n", "\n;\n")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # an unbalanced quote
        raise ValueError(f"cannot split {shell!r}: {exc}") from None
    invocations: list[list[str]] = []
    current: list[str] | None = None
    at_start = True  # in command position: first word, or after a separator or VAR=value
    for token in tokens:
        separator = token in _SEPARATORS or set(token) <= set(";&|()<>\n")
        if current is not None:
            if not separator:
                current.append(token)
                continue
            invocations.append(current)
            current = None
        if separator:
            at_start = True
        elif at_start and (token == "modelyard" or token.endswith("bin/modelyard")):
            current = []
        elif not (at_start and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token) or token in _PREFIXES)):
            at_start = False
    if current is not None:
        invocations.append(current)
    return invocations


def check_invocation(args: list[str], root: object, find_command: object, option_names: object) -> list[str]:
    """Problems of ``modelyard <args>``: an unknown command or flag (``[]`` when it parses).

    ``root``/``find_command``/``option_names`` come from ``scripts/docs.py`` (the click tree of
    the real CLI). Placeholders such as ``...`` are not flags and are let through.
    """
    problems: list[str] = []
    path: list[str] = []
    found = find_command(path, root)  # type: ignore[operator]
    assert found is not None
    _, cmd, ctx = found
    index = 0
    eager = False
    while index < len(args):
        arg = args[index]
        if arg == "...":  # a placeholder for what the reader fills in
            eager = eager or index == len(args) - 1
        elif arg.startswith("-") and arg not in ("-", "--") and not re.match(r"^-\d", arg):
            name = arg.split("=", 1)[0]
            if name not in option_names(cmd, ctx):  # type: ignore[operator]
                problems.append(f"'modelyard {' '.join(path)}' has no option {name}")
            else:
                param = next(p for p in cmd.get_params(ctx) if name in p.opts or name in p.secondary_opts)
                # --help, --version, --install-completion: the command is complete without more
                eager = eager or bool(param.is_eager) or not param.expose_value
                if not param.is_flag and "=" not in arg:
                    index += 1  # its value
        elif hasattr(cmd, "list_commands"):
            sub = find_command([*path, arg], root)  # type: ignore[operator]
            if sub is None:
                problems.append(f"'modelyard {' '.join(path)}' has no command {arg!r}".replace("  ", " "))
                return problems
            path, cmd, ctx = sub
        index += 1
    if hasattr(cmd, "list_commands") and not eager:
        problems.append(f"'modelyard {' '.join([*path])}' names a command group, not a command")
    return problems


# -- running a page -------------------------------------------------------------------------------


@dataclass
class Rewrites:
    """What a page's runnable text is rewritten to for the test: ports and the Redis stream."""

    server_port: int
    stream: str
    free_port: object
    ports: dict[int, int] = field(default_factory=dict)

    def port(self, number: int) -> int:
        if number == SERVER_PORT:
            return self.server_port
        if number in KEPT_PORTS:
            return number
        if number not in self.ports:
            self.ports[number] = self.free_port()  # type: ignore[operator]
        return self.ports[number]

    def __call__(self, text: str) -> str:
        text = _LOCAL_PORT.sub(lambda m: f"{m['host']}:{self.port(int(m['port']))}", text)
        text = _PORT_FLAG.sub(lambda m: f"{m['flag']}{m['sep']}{self.port(int(m['port']))}", text)
        return re.sub(rf"\b{STREAM}\b", self.stream, text)


def output_matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is what a console block shows (``...`` lines and ``...`` in lines: anything)."""

    def trimmed(text: str) -> list[str]:
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        return lines

    pattern = ""
    for line in trimmed(expected):
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*".join(re.escape(part) for part in line.split("...")) + r"\n"
    return re.fullmatch(pattern, "".join(f"{line}\n" for line in trimmed(actual))) is not None
