"""``modelyard endpoint ...``: add, update, list, show and remove endpoint versions.

Flags follow clearml-serving's ``model add``: ``--input-name x0 x1 --input-type float32 float32
--input-size '[1,4]' '[-1]'`` (one value per input; a single shape may also be written as plain
numbers, ``--input-size 1 4``), ``--name/--project/--tags/--published`` to pick the newest
matching model instead of ``--model-id``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from modelyard.cli import _common as common
from modelyard.errors import BadRequest, ModelyardError

app = typer.Typer(help="Add, update, list and remove endpoints of a service.", no_args_is_help=True)

_T = "Tensors (clearml-serving flags)"
_M = "Model selection"


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


def _checked_model_query(
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


def _key(endpoint: str, version: str | None) -> tuple[str, str | None]:
    if version is None and "/" in endpoint:
        ep, _, ver = endpoint.partition("/")
        return ep, ver
    return endpoint, version


# One definition of the shared flags, used by both ``add`` and ``update``.
def _opt(*decls: str, help: str, panel: str | None = None) -> Any:
    return typer.Option(None, *decls, help=help, rich_help_panel=panel)


ENDPOINT = typer.Option(..., "--endpoint", help="Endpoint name (the URL is /serve/<endpoint>).")
VERSION = _opt("--version", help="Endpoint version (default: the unversioned endpoint).")
ENGINE = _opt("--engine", help="Engine: sklearn, xgboost, lightgbm, onnx, torch, triton, custom...")
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


def batching_options(size: int | None, delay_ms: float | None, queue: int | None) -> dict[str, Any]:
    """The batching flags as endpoint options (only those given)."""
    given = {"max_batch_size": size, "max_batch_delay_ms": delay_ms, "max_queue": queue}
    return {k: v for k, v in given.items() if v is not None}


@common.command(app, "add")
def add(
    endpoint: str = ENDPOINT,
    engine: str = typer.Option(..., "--engine", help=ENGINE.help),
    service: str | None = common.service_option(),
    version: str | None = VERSION,
    model_id: str | None = MODEL_ID,
    name: str | None = NAME,
    project: str | None = PROJECT,
    tags: list[str] | None = TAGS,
    published: bool = PUBLISHED,
    preprocess: Path | None = PREPROCESS,
    input_name: list[str] | None = INPUT_NAME,
    input_type: list[str] | None = INPUT_TYPE,
    input_size: list[str] | None = INPUT_SIZE,
    output_name: list[str] | None = OUTPUT_NAME,
    output_type: list[str] | None = OUTPUT_TYPE,
    output_size: list[str] | None = OUTPUT_SIZE,
    option: list[str] | None = OPTION,
    aux: list[str] | None = AUX,
    max_batch_size: int | None = MAX_BATCH_SIZE,
    max_batch_delay_ms: float | None = MAX_BATCH_DELAY,
    max_queue: int | None = MAX_QUEUE,
) -> None:
    """Add (or replace) an endpoint version serving a model."""
    endpoint, version = _key(endpoint, version)
    query = _checked_model_query(model_id, name, project, tags, published, preprocess)
    inputs = build_tensors("input", input_name, input_type, input_size) or []
    outputs = build_tensors("output", output_name, output_type, output_size) or []
    svc = common.resolve_service(service)
    with common.client() as c:
        code = common.upload_code(c, preprocess) if preprocess is not None else None
        ep = c.add_endpoint(
            svc,
            endpoint,
            version=version or "",
            engine=engine,
            model_id=model_id,
            model_query=query,
            preprocess=code,
            inputs=inputs,
            outputs=outputs,
            options={
                **common.parse_pairs(option, "--option"),
                **batching_options(max_batch_size, max_batch_delay_ms, max_queue),
            },
            auxiliary=common.parse_pairs(aux, "--aux"),
        )
    key = ep.get("key") or (f"{endpoint}/{version}" if version else endpoint)
    model = f" serving model {ep['model_id']}" if ep.get("model_id") else ""
    typer.echo(f"endpoint {key!r} in service {svc!r}{model} ({ep.get('engine', engine)})")


@common.command(app, "update")
def update(
    endpoint: str = ENDPOINT,
    service: str | None = common.service_option(),
    version: str | None = VERSION,
    engine: str | None = ENGINE,
    model_id: str | None = MODEL_ID,
    name: str | None = NAME,
    project: str | None = PROJECT,
    tags: list[str] | None = TAGS,
    published: bool = PUBLISHED,
    preprocess: Path | None = PREPROCESS,
    input_name: list[str] | None = INPUT_NAME,
    input_type: list[str] | None = INPUT_TYPE,
    input_size: list[str] | None = INPUT_SIZE,
    output_name: list[str] | None = OUTPUT_NAME,
    output_type: list[str] | None = OUTPUT_TYPE,
    output_size: list[str] | None = OUTPUT_SIZE,
    option: list[str] | None = OPTION,
    aux: list[str] | None = AUX,
    max_batch_size: int | None = MAX_BATCH_SIZE,
    max_batch_delay_ms: float | None = MAX_BATCH_DELAY,
    max_queue: int | None = MAX_QUEUE,
) -> None:
    """Change some settings of an endpoint version; what is not given stays as it is.

    --option and --aux are merged into the current ones (key= with an empty value removes it).
    """
    endpoint, version = _key(endpoint, version)
    query = _checked_model_query(model_id, name, project, tags, published, preprocess)
    svc = common.resolve_service(service)
    with common.client() as c:
        # uploaded once; the merge below may run again if another writer changes the service
        code = common.upload_code(c, preprocess) if preprocess is not None else None

        def change(current: dict[str, Any]) -> dict[str, Any]:
            inputs = build_tensors("input", input_name, input_type, input_size, current.get("inputs"))
            outputs = build_tensors("output", output_name, output_type, output_size, current.get("outputs"))
            options = _merge(current.get("options"), option, "--option")
            batching = batching_options(max_batch_size, max_batch_delay_ms, max_queue)
            if batching:
                options = {**(options if options is not None else current.get("options") or {}), **batching}
            auxiliary = _merge(current.get("auxiliary"), aux, "--aux")
            return {
                "engine": engine, "model_id": model_id, "model_query": query, "preprocess": code,
                "inputs": inputs, "outputs": outputs, "options": options, "auxiliary": auxiliary,
            }  # fmt: skip

        # read-modify-write with If-Match: a concurrent change is merged, never lost
        ep = c.modify_endpoint(svc, endpoint, version, change)
    typer.echo(f"endpoint {ep.get('key', endpoint)!r} in service {svc!r} updated")


def _merge(current: Any, items: list[str] | None, flag: str) -> dict[str, Any] | None:
    if not items:
        return None
    merged = dict(current or {})
    for key, value in common.parse_pairs(items, flag).items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _states(status: dict[str, Any] | None) -> dict[str, str]:
    """Per endpoint key, the live replicas' states: ``ready 2/2``, ``loading 1, ready 1``."""
    if status is None:
        return {}
    replicas = status.get("replicas") or []
    per_key: dict[str, Counter[str]] = {}
    errors: dict[str, str] = {}
    for replica in replicas:
        for ep in replica.get("endpoints") or []:
            per_key.setdefault(ep.get("key", ""), Counter())[ep.get("state", "?")] += 1
            if ep.get("error"):
                errors.setdefault(ep.get("key", ""), str(ep["error"]))
    out = {}
    for key, counts in per_key.items():
        if len(counts) == 1:
            state, n = next(iter(counts.items()))
            text = f"{state} {n}/{len(replicas)}"
        else:
            text = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        if key in errors:
            text += f": {errors[key][:80]}"
        out[key] = text
    return out


@app.command("list")
def list_(
    service: str | None = common.service_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List a service's endpoint versions, with their state on the live replicas."""
    svc = common.resolve_service(service)
    with common.client() as c:
        endpoints = c.list_endpoints(svc)
        try:
            status: dict[str, Any] | None = c.status(svc)
        except ModelyardError:
            status = None
    if as_json:
        common.print_json(endpoints)
        return
    states = _states(status)
    replicas = len((status or {}).get("replicas") or [])
    rows = []
    for ep in endpoints:
        key = str(ep.get("key") or ep.get("endpoint"))
        pre = (ep.get("preprocess") or {}).get("filename", "")
        tensors = ", ".join(
            f"{t.get('name')}:{t.get('dtype') or '?'}{t.get('shape') or ''}" for t in ep.get("inputs") or []
        )
        state = states.get(key, "not loaded" if replicas else "no replicas")
        rows.append([key, ep.get("engine"), ep.get("model_id") or "", pre, tensors, state])
    common.print_table(
        ["endpoint", "engine", "model", "preprocess", "inputs", "state"],
        rows,
        title=f"service {svc!r}" + (f" (revision {status.get('revision')})" if status else ""),
        empty=f"no endpoints in service {svc!r}",
    )


@app.command("show")
def show(
    endpoint: str = ENDPOINT,
    version: str | None = VERSION,
    service: str | None = common.service_option(),
) -> None:
    """Print an endpoint version as JSON."""
    endpoint, version = _key(endpoint, version)
    with common.client() as c:
        common.print_json(c.get_endpoint(common.resolve_service(service), endpoint, version))


@app.command("remove")
def remove(
    endpoint: str = ENDPOINT,
    version: str | None = VERSION,
    service: str | None = common.service_option(),
) -> None:
    """Remove an endpoint version."""
    endpoint, version = _key(endpoint, version)
    svc = common.resolve_service(service)
    with common.client() as c:
        c.remove_endpoint(svc, endpoint, version)
    key = f"{endpoint}/{version}" if version else endpoint
    typer.echo(f"endpoint {key!r} removed from service {svc!r}")
