"""The flags ``endpoint add/update`` and ``auto-deploy add/update`` share, and their parsing.

Flags follow clearml-serving's ``model add``: ``--input-name x0 x1 --input-type float32 float32
--input-size '[1,4]' '[-1]'`` (one value per input; a single shape may also be written as plain
numbers, ``--input-size 1 4``), ``--name/--project/--tags/--published`` to pick the newest
matching model instead of ``--model-id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from modelyard.cli import _common as common
from modelyard.errors import BadRequest

_T = "Tensors (clearml-serving flags)"
_M = "Model selection"

ENGINES = (
    "sklearn",
    "xgboost",
    "lightgbm",
    "onnx",
    "pytorch",
    "tensorflow",
    "triton",
    "custom",
    "custom_async",
)
"""The built-in engines (the control plane has the final word: it may know more)."""
MODEL_FREE_ENGINES = frozenset({"triton", "custom", "custom_async"})
"""Built-in engines that run without a model file (``Engine.needs_model`` is False)."""
ENGINE_ALIASES = {"torch": "pytorch", "scikit-learn": "sklearn", "tf": "tensorflow", "keras": "tensorflow"}
"""Names people type for an engine; refused with the right name."""


def check_engine_flags(engine: str, *, model_given: bool, code_given: bool) -> None:
    """Refuse at once what would only fail on the replicas: an engine under another name, an
    engine that needs a model without one, or ``custom`` without the code that is its model."""
    if engine in ENGINE_ALIASES:
        raise common.fail(f"unknown engine {engine!r}: the engine is called {ENGINE_ALIASES[engine]!r}")
    if engine in ENGINES and engine not in MODEL_FREE_ENGINES and not model_given:
        raise common.fail(
            f"engine {engine!r} serves a model: give --model-id ID, or --name/--project/--tags/"
            f"--published to pick the newest matching one (engines without a model: "
            f"{', '.join(sorted(MODEL_FREE_ENGINES))})"
        )
    if engine in ("custom", "custom_async") and not code_given:
        raise common.fail(
            f"engine {engine!r} runs your code: give --preprocess with a Preprocess class that "
            "defines process(data, state, collect_custom_statistics_fn)"
        )


def _dtype(value: str, flag: str) -> str:
    import numpy as np

    try:
        np.dtype(value)
    except TypeError:
        raise BadRequest(
            f"{flag} {value!r} is not a numpy dtype name (float32, int64, uint8, bool, str...)"
        ) from None
    return value


def parse_sizes(values: list[str] | None, flag: str) -> list[list[int]]:
    """``["[1,4]", "[-1]"]`` → one shape per value; ``["1", "4"]`` → the single shape ``[1, 4]``."""
    parsed: list[Any] = []
    for value in values or ():
        try:
            parsed.append(json.loads(value))
        except ValueError:
            raise BadRequest(
                f"{flag} {value!r} is neither a number nor a JSON list such as '[1,4]' or '[-1]'"
            ) from None
    if not parsed:
        return []
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parsed):
        return [parsed]
    if all(isinstance(p, list) and all(isinstance(d, int) for d in p) for p in parsed):
        return parsed
    raise BadRequest(f"{flag} takes numbers ('1 4') or one JSON list per tensor ('[1,4]' '[-1]')")


def build_tensors(
    what: str,
    names: list[str] | None,
    types: list[str] | None,
    sizes: list[str] | None,
    existing: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]] | None:
    """TensorSpec dicts from the ``--<what>-name/-type/-size`` flags, over ``existing`` ones.

    ``None`` when no flag of this group was given (leave the tensors as they are).
    """
    shapes = parse_sizes(sizes, f"--{what}-size")
    if not names and not types and not shapes:
        return None
    base = existing or []
    count = len(names) if names else len(base)
    if count == 0:
        raise BadRequest(f"give --{what}-name for each {what} (with --{what}-type/--{what}-size)")
    for flag, values in ((f"--{what}-type", types), (f"--{what}-size", shapes)):
        if values and len(values) != count:
            raise BadRequest(
                f"{flag} has {len(values)} value(s) but there are {count} {what}(s): give one per {what}"
            )
    out = []
    for i in range(count):
        spec = dict(base[i]) if i < len(base) else {}
        if names:
            spec["name"] = names[i]
        if types:
            spec["dtype"] = _dtype(types[i], f"--{what}-type")
        if shapes:
            spec["shape"] = shapes[i]
        out.append({k: v for k, v in spec.items() if v is not None})
    return out


def model_query(
    name: str | None, project: str | None, tags: list[str] | None, published: bool
) -> dict[str, Any] | None:
    query: dict[str, Any] = {}
    if name:
        query["name"] = name
    if project:
        query["project"] = project
    if tags:
        query["tags"] = list(tags)
    if published:
        query["published"] = True
    return query or None


def checked_model_query(
    model_id: str | None,
    name: str | None,
    project: str | None,
    tags: list[str] | None,
    published: bool,
    preprocess: Path | None,
) -> dict[str, Any] | None:
    """The model query of the flags, refusing both a model id and a query, or missing code."""
    query = model_query(name, project, tags, published)
    if model_id and query:
        raise common.fail("give either --model-id or --name/--project/--tags/--published, not both")
    if preprocess is not None and not preprocess.exists():
        raise common.fail(f"--preprocess {str(preprocess)!r} does not exist")
    return query


def endpoint_and_version(endpoint: str, version: str | None) -> tuple[str, str | None]:
    if version is None and "/" in endpoint:
        ep, _, ver = endpoint.partition("/")
        return ep, ver
    return endpoint, version


# One definition of the shared flags, used by both ``add`` and ``update``.
def _opt(*decls: str, help: str, panel: str | None = None) -> Any:
    return typer.Option(None, *decls, help=help, rich_help_panel=panel)


ENDPOINT = typer.Option(..., "--endpoint", help="Endpoint name (the URL is /serve/<endpoint>).")
VERSION = typer.Option(None, "--version", help="Endpoint version.", show_default="the unversioned endpoint")
ENGINE = _opt("--engine", help=f"Engine: {', '.join(ENGINES)}.")
MODEL_ID = _opt("--model-id", help="The model to serve.", panel=_M)
NAME = _opt("--name", help="Or: newest model with this name (regex)...", panel=_M)
PROJECT = _opt("--project", help="...in this project...", panel=_M)
TAGS = _opt("--tags", help="...with all these tags...", panel=_M)
PUBLISHED = typer.Option(False, "--published", help="...and published.", rich_help_panel=_M)
PREPROCESS = _opt("--preprocess", help="Preprocess code: a .py file or a package folder.")
INPUT_NAME = _opt("--input-name", help="Input names: --input-name x0 x1.", panel=_T)
INPUT_TYPE = _opt("--input-type", help="Input numpy dtypes: float32 int64...", panel=_T)
INPUT_SIZE = _opt("--input-size", help="Input shapes: '[1,4]' '[-1]' (-1: any).", panel=_T)
OUTPUT_NAME = _opt("--output-name", help="Output names.", panel=_T)
OUTPUT_TYPE = _opt("--output-type", help="Output numpy dtypes.", panel=_T)
OUTPUT_SIZE = _opt("--output-size", help="Output shapes.", panel=_T)
OPTION = _opt("--option", help="Engine/batching options: key=value (max_batch_size=8).")
AUX = _opt("--aux", "--aux-config", help="Settings for user code: key=value.")
_B = "Dynamic batching"
MAX_BATCH_SIZE = _opt("--max-batch-size", help="Stack up to N concurrent requests into one call.", panel=_B)
MAX_BATCH_DELAY = _opt("--max-batch-delay-ms", help="Wait at most this long for a batch to fill.", panel=_B)
MAX_QUEUE = _opt("--max-queue", help="Requests waiting beyond this are refused with 503.", panel=_B)
WAIT = typer.Option(
    None,
    "--wait/--no-wait",
    help="Wait until every live replica reports the version ready, or exit 1 with the reason one "
    "failed to load it (returns at once when no replica is running).",
    show_default="wait when the output is a terminal, not in scripts and pipes",
)
WAIT_TIMEOUT = typer.Option(120.0, "--wait-timeout", min=0, help="Seconds --wait waits at most.")


def batching_options(size: int | None, delay_ms: float | None, queue: int | None) -> dict[str, Any]:
    """The batching flags as endpoint options (only those given)."""
    given = {"max_batch_size": size, "max_batch_delay_ms": delay_ms, "max_queue": queue}
    return {k: v for k, v in given.items() if v is not None}


def merge_pairs(current: Any, items: list[str] | None, flag: str) -> dict[str, Any] | None:
    """``current`` with the ``key=value`` items over it (``key=`` removes); None without items."""
    if not items:
        return None
    merged = dict(current or {})
    for key, value in common.parse_pairs(items, flag).items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
