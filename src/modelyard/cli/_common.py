"""What every command shares: the client, errors, clearml-style multi-value options, output."""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

from modelyard.errors import BadRequest, ModelyardError

if TYPE_CHECKING:
    from modelyard.client import Client
    from modelyard.settings import Settings

_NUMBER = re.compile(r"^-\d|^-\.\d|^-inf$|^-nan$", re.IGNORECASE)


@dataclass
class Globals:
    """The app-wide options (``--url``, ``--token``), set per invocation by the root callback."""

    url: str | None = None
    token: str | None = None


_globals: ContextVar[Globals] = ContextVar("modelyard_cli_globals", default=Globals())  # noqa: B039


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; ``raise fail(...)`` exits 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def close_matches(word: str, choices: Sequence[str]) -> list[str]:
    """The (at most two) ``choices`` closest to ``word``: a typo, or a name it begins or ends."""
    low = word.lower()
    close = difflib.get_close_matches(low, list(choices), n=2, cutoff=0.6)
    return close or [c for c in choices if low and (c.startswith(low) or low in c)][:2]


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``Did you mean 'pytorch'?`` for the closest of ``choices``, or ``""``."""
    close = close_matches(word, choices)
    return f"Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _flags_untyped(params: list[Any]) -> list[Any]:
    """On/off flags (``--help``, ``--published``) show no ``<bool>`` type in help: they take no value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class SubGroup(TyperGroup):
    """Every command group: "did you mean" for a mistyped command, and flags shown without a type.

    The commands it resolves get the same help treatment (see :func:`_flags_untyped`).
    """

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_untyped(super().get_params(ctx))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            name, cmd, rest = super().resolve_command(ctx, args)
        except Exception as exc:  # click's UsageError (typer's own copy in typer >= 0.22)
            message = getattr(exc, "message", None)
            if args and isinstance(message, str) and "did you mean" not in message.lower():
                hint = did_you_mean(args[0], self.list_commands(ctx))
                if hint:
                    exc.message = f"{message.rstrip('.')}. {hint}"  # type: ignore[attr-defined]
            raise
        if cmd is not None:
            _flags_untyped(cmd.get_params(ctx))
        return name, cmd, rest


class Group(SubGroup):
    """The root group: turns every :class:`ModelyardError` into ``error: ...`` and exit 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModelyardError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None


def expand_multi_values(args: Sequence[str], multi: set[str]) -> list[str]:
    """``--tags a b --x`` → ``--tags a --tags b --x`` for the option names in ``multi``.

    This is how clearml-serving users type list flags (argparse ``nargs='+'``); repeated
    flags keep working. Values run until the next token that looks like an option (negative
    numbers such as ``-1`` are values) or ``--``.
    """
    out: list[str] = []
    current: str | None = None
    seen = 0
    for index, token in enumerate(args):
        if token == "--":
            out.extend(args[index:])
            break
        if token.startswith("-") and len(token) > 1 and not _NUMBER.match(token):
            name, eq, _ = token.partition("=")
            current = name if name in multi else None
            seen = 1 if eq else 0
            out.append(token)
            continue
        if current is not None:
            if seen:
                out.append(current)
            seen += 1
        out.append(token)
    return out


class MultiValueCommand(TyperCommand):
    """A command whose list options accept ``--opt a b c`` as well as ``--opt a --opt b``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        multi = {
            opt
            for param in self.params
            if param.param_type_name == "option" and getattr(param, "multiple", False)
            for opt in param.opts
        }
        return super().parse_args(ctx, expand_multi_values(args, multi))


def command(app: typer.Typer, name: str | None = None, **kwargs: Any) -> Any:
    """``@command(app, "add")``: a command of ``app`` with clearml-style multi-value options."""
    return app.command(name, cls=MultiValueCommand, **kwargs)


def settings() -> Settings:
    from modelyard.settings import Settings

    return Settings()


@contextmanager
def client() -> Iterator[Client]:
    """The SDK client for this invocation: ``--url``/``--token`` over the environment."""
    from modelyard.client import Client

    opts = globals_()
    with Client(url=opts.url, token=opts.token, settings=settings()) as c:
        yield c


def service_option() -> Any:
    return typer.Option(
        None, "--service", help="Serving service.", show_default="MODELYARD_SERVICE, else default"
    )


def sub_app(help: str, **kwargs: Any) -> typer.Typer:
    """A command group of the CLI (``endpoint``, ``model``...), with :class:`SubGroup` behaviour."""
    return typer.Typer(cls=SubGroup, help=help, no_args_is_help=True, **kwargs)


def resolve_service(service: str | None) -> str:
    return service or settings().service


def globals_() -> Globals:
    """The ``--url``/``--token`` given to this invocation (set by the root callback)."""
    return _globals.get()


def set_globals(value: Globals) -> None:
    _globals.set(value)


def parse_value(text: str) -> Any:
    """JSON when it parses (``8``, ``true``, ``[1,2]``), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise BadRequest(f"{what} {item!r} is not of the form key=value")
        out[key.strip()] = parse_value(value)
    return out


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    empty: str | None = None,
) -> None:
    """A rich table on stdout; ``empty`` is printed instead when there are no rows."""
    if not rows and empty:
        typer.echo(empty)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, show_lines=False, header_style="bold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None).print(table)


PROGRESS_MIN_BYTES = 1 << 20
"""Preprocess code smaller than this uploads without a bar (it is done before a bar could draw)."""


@contextmanager
def transfer_progress(label: str) -> Iterator[Any]:
    """A rich progress bar on stderr; yields the ``progress(done, total)`` callback.

    The bar starts with the first bytes, so a call refused up front (no token, unknown id)
    prints its error alone. On a terminal the bar moves; elsewhere (a log, a pipe) rich
    prints its final state once, so scripts see one line with the size moved.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=False,
    )
    task = bar.add_task(label, total=None)
    started = False

    def progress(done: int, total: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        if started:
            bar.stop()


def local_size(path: Path) -> int:
    """Bytes in a file, or in all files of a folder (about its packed size, before packing)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def upload_code(c: Client, path: Path) -> dict[str, Any]:
    """Upload preprocess code; a bar when it is at least :data:`PROGRESS_MIN_BYTES`."""
    if local_size(path) < PROGRESS_MIN_BYTES:
        return c.upload_file(path)
    label = f"uploading {path.name}" + ("/ (packed)" if path.is_dir() else "")
    with transfer_progress(label) as progress:
        return c.upload_file(path, progress=progress)


def short_time(value: Any) -> str:
    """``2024-05-01T12:30:00.123+00:00`` → ``2024-05-01 12:30:00``."""
    text = str(value or "")
    return text.replace("T", " ")[:19]
