"""The documentation's generated pages, and the mkdocs hook that adds them to the site.

Two reference pages are never written by hand, so they cannot drift from the code:

* ``cli.md``: every command of the real ``modelyard`` typer app, its usage, help text and
  options (names, type, default, help), read from the click objects the CLI itself runs;
* ``settings.md``: every field of :class:`modelyard.settings.Settings`, its ``MODELYARD_*``
  variable, type, default and the field's docstring.

``mkdocs.yml`` names this file under ``hooks:``; :func:`on_files` adds both pages to the build
(they exist only in the built site). ``python scripts/docs.py cli`` (or ``settings``) prints one
of them, to read or diff without building.
"""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GENERATED = ("cli.md", "settings.md")
"""Pages this module writes; docs/ holds no file of these names."""

NOTE = "*Generated at build time by `scripts/docs.py` from {what}: do not edit.*"


# -- CLI reference --------------------------------------------------------------------------------


def cli_root() -> Any:
    """The click command the ``modelyard`` console script runs."""
    import typer.main

    from modelyard.cli.main import app

    return typer.main.get_command(app)


def walk_commands(root: Any | None = None) -> Iterator[tuple[list[str], Any, Any]]:
    """``(path, command, context)`` for the root and every (sub)command, depth first, in help order.

    ``path`` is the words after ``modelyard`` (``["endpoint", "add"]``; ``[]`` for the root).
    """
    root = root if root is not None else cli_root()

    def visit(cmd: Any, path: list[str], parent: Any) -> Iterator[tuple[list[str], Any, Any]]:
        ctx = cmd.make_context(path[-1] if path else "modelyard", [], parent=parent, resilient_parsing=True)
        yield path, cmd, ctx
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from visit(sub, [*path, name], ctx)

    yield from visit(root, [], None)


def find_command(words: list[str], root: Any | None = None) -> tuple[list[str], Any, Any] | None:
    """The command that ``modelyard <words...>`` names, or ``None``."""
    for path, cmd, ctx in walk_commands(root):
        if path == words:
            return path, cmd, ctx
    return None


def option_names(cmd: Any, ctx: Any) -> set[str]:
    """Every option spelling a command accepts (``--wait``, ``--no-wait``, ``--help``)."""
    names: set[str] = set()
    for param in cmd.get_params(ctx):
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _cell(text: str) -> str:
    """One Markdown table cell of plain help text: no pipe, newline, ``<...>`` or ``*`` changes it."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").replace("*", "\\*").split())


def _help_text(cmd: Any) -> str:
    text = inspect.cleandoc(cmd.help or "")
    # typer joins paragraphs with \b markers for click's rewrapping; Markdown needs none of them
    text = text.replace("\b\n", "").replace("\b", "").strip()
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("*", "\\*")


def _option_rows(cmd: Any, ctx: Any) -> list[tuple[str, str, str, str]]:
    rows = []
    for param in cmd.get_params(ctx):
        if param.param_type_name != "option" or getattr(param, "hidden", False):
            continue
        if "--help" in param.opts and ctx.parent is not None:
            continue  # every command has it; the page says so once
        record = param.get_help_record(ctx)
        if record is None:
            continue
        spelled, help_text = record
        names = " / ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
        value = "" if param.is_flag else spelled.split(" ", len(param.opts))[-1].strip()
        value = value if value.startswith("<") else ""
        if getattr(param, "multiple", False):
            value = f"{value} ..." if value else "..."
        panel = getattr(param, "rich_help_panel", None) or ""
        rows.append((names, f"`{value}`" if value else "", help_text, panel))
    return rows


def _argument_rows(cmd: Any, ctx: Any) -> list[tuple[str, str]]:
    rows = []
    for param in cmd.get_params(ctx):
        if param.param_type_name == "argument":
            rows.append((param.name.upper(), getattr(param, "help", None) or ""))
    return rows


def _anchor(path: list[str]) -> str:
    return "-".join(["modelyard", *path]) if path else "modelyard"


def cli_reference() -> str:
    """The CLI reference page, from the real typer app."""
    out = [
        "# CLI reference",
        "",
        NOTE.format(what="the `modelyard` typer app"),
        "",
        "The CLI finds the control plane at `MODELYARD_URL` (default `http://127.0.0.1:8080`) and its",
        "token at `MODELYARD_TOKEN` or `$MODELYARD_HOME/token`; `--url`/`--token` before the command",
        "override both. Errors print `error: <message>` and exit 1; a mistyped command, engine or",
        'framework gets a "did you mean" (`endpoints` → `endpoint`, `--engine torch` → `pytorch`).',
        "Every list option takes several values after one flag (`--tags a b`) as well as the flag",
        "repeated (`--tags a --tags b`). Model uploads and downloads show a progress bar on stderr, so",
        "stdout keeps only what scripts capture (`model upload` prints the new id alone on its last",
        "line). `--help` after any command shows what this page shows; `modelyard --version`; shell",
        "completion for bash, zsh, fish and PowerShell: `modelyard --install-completion` (or",
        "`--show-completion` to print the script).",
        "",
    ]
    commands = list(walk_commands())
    out.append("| command | what it does |")
    out.append("| --- | --- |")
    for path, cmd, _ctx in commands[1:]:
        if hasattr(cmd, "list_commands"):
            continue
        out.append(
            f"| [`modelyard {' '.join(path)}`](#{_anchor(path)}) | {_cell(cmd.get_short_help_str(200))} |"
        )
    out.append("")
    for path, cmd, ctx in commands:
        title = " ".join(["modelyard", *path])
        level = "#" * min(2 + len(path), 4)
        out.append(f"{level} `{title}` {{#{_anchor(path)}}}")
        out.append("")
        out.append("```text")
        out.append(" ".join(cmd.collect_usage_pieces(ctx)).join([f"{title} ", ""]).rstrip())
        out.append("```")
        out.append("")
        help_text = _help_text(cmd)
        if help_text:
            out.extend([help_text, ""])
        arguments = _argument_rows(cmd, ctx)
        if arguments:
            out.extend(["| argument | |", "| --- | --- |"])
            out.extend(f"| `{name}` | {_cell(text)} |" for name, text in arguments)
            out.append("")
        rows = _option_rows(cmd, ctx)
        if rows:
            out.extend(["| option | value | |", "| --- | --- | --- |"])
            for names, value, text, panel in rows:
                prefix = f"*{panel}.* " if panel else ""
                out.append(f"| {names} | {value} | {prefix}{_cell(text)} |")
            out.append("")
        if hasattr(cmd, "list_commands"):
            subs = [name for name in cmd.list_commands(ctx) if not cmd.get_command(ctx, name).hidden]
            if path:
                links = ", ".join(f"[`{name}`](#{_anchor([*path, name])})" for name in subs)
                out.extend([f"Commands: {links}.", ""])
    return "\n".join(out).rstrip() + "\n"


# -- Settings reference ---------------------------------------------------------------------------


def field_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each annotated field of ``cls``."""
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, after in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _rst_to_md(text: str) -> str:
    """The docstrings' reST bits as Markdown: ````x```` → `` `x` ``, ``:attr:`x``` → `` `x` ``."""
    import re

    text = re.sub(
        r":(?:attr|class|func|meth|data):`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text
    )
    return text.replace("``", "`")


def _default(field: Any, name: str) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        home = str(Path("~").expanduser())
        return f"`{str(value).replace(home, '~', 1)}`"
    if isinstance(value, list):
        return f"`{','.join(map(str, value))}`" if value else "empty"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def settings_reference() -> str:
    """The settings page, from :class:`Settings`' fields and their docstrings."""
    from modelyard.settings import Settings

    docs = field_docstrings(Settings)
    annotations = {
        node.target.id: ast.unparse(node.annotation)
        for node in ast.parse(inspect.cleandoc("\n" + inspect.getsource(Settings))).body[0].body  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    out = [
        "# Settings",
        "",
        NOTE.format(what="`modelyard.settings.Settings` and its fields' docstrings"),
        "",
        "Every knob is an environment variable with the `MODELYARD_` prefix, read when a server, worker",
        "or CLI command starts (never at import). The commands' flags (`--port`, `--workers`...) set the",
        "same fields and win over the variables. Lists are comma-separated in the variable",
        "(`MODELYARD_ENDPOINTS=iris/a,iris/*`); `MODELYARD_ARTIFACTS_OPTIONS` is JSON.",
        "",
    ]
    for name, field in Settings.model_fields.items():
        var = f"MODELYARD_{name.upper()}"
        kind = annotations.get(name, "").replace("Annotated[", "").replace(", NoDecode]", "")
        out.append(f"## `{var}` {{#{name.replace('_', '-')}}}")
        out.append("")
        out.append(f"Type `{kind}`, default {_default(field, name)}.")
        out.append("")
        out.append(_rst_to_md(docs.get(name, "")) or "(no docstring)")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def generated_pages() -> dict[str, str]:
    return {"cli.md": cli_reference(), "settings.md": settings_reference()}


# -- mkdocs hook ----------------------------------------------------------------------------------

OPTIONAL_NAV = {"containers.md": ("Containers", "scale-out.md")}
"""Pages another change adds: ``{page: (title, the page it follows)}``, put in the nav once the file
exists (and mkdocs.yml does not list it already), so a new page never breaks the strict build."""


def nav_with_optional_pages(nav: list[Any], docs_dir: Path) -> list[Any]:
    """``nav`` plus each :data:`OPTIONAL_NAV` page that exists in ``docs_dir`` and is not listed."""
    listed = {str(v) for item in nav for v in (item.values() if isinstance(item, dict) else [item])}
    nav = list(nav)
    for page, (title, after) in OPTIONAL_NAV.items():
        if (docs_dir / page).exists() and page not in listed:
            index = next(
                (i + 1 for i, item in enumerate(nav) if isinstance(item, dict) and after in item.values()),
                len(nav),
            )
            nav.insert(index, {title: page})
    return nav


def on_config(config: Any) -> Any:
    config["nav"] = nav_with_optional_pages(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the build (mkdocs >= 1.6 ``File.generated``)."""
    from mkdocs.structure.files import File

    for name, content in generated_pages().items():
        if files.get_file_from_path(name) is not None:
            raise ValueError(f"docs/{name} exists, but scripts/docs.py generates it: remove the file")
        files.append(File.generated(config, name, content=content))
    return files


if __name__ == "__main__":
    pages = generated_pages()
    wanted = sys.argv[1:] or ["cli", "settings"]
    for word in wanted:
        sys.stdout.write(pages[f"{word.removesuffix('.md')}.md"])
