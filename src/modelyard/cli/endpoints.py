"""``modelyard endpoint ...``: add, update, list, show and remove endpoint versions.

The flags (shared with ``auto-deploy``) are defined and parsed in :mod:`modelyard.cli._flags`.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from modelyard.cli import _common as common
from modelyard.cli._flags import (
    AUX,
    ENDPOINT,
    ENGINE,
    INPUT_NAME,
    INPUT_SIZE,
    INPUT_TYPE,
    MAX_BATCH_DELAY,
    MAX_BATCH_SIZE,
    MAX_QUEUE,
    MODEL_ID,
    NAME,
    OPTION,
    OUTPUT_NAME,
    OUTPUT_SIZE,
    OUTPUT_TYPE,
    PREPROCESS,
    PROJECT,
    PUBLISHED,
    TAGS,
    VERSION,
    WAIT,
    WAIT_TIMEOUT,
    batching_options,
    build_tensors,
    check_engine_flags,
    checked_model_query,
    endpoint_and_version,
    merge_pairs,
    parse_sizes,
)
from modelyard.cli._wait import report_loaded
from modelyard.errors import ModelyardError, NotFound

__all__ = ["app", "build_tensors", "parse_sizes"]

app = common.sub_app("Add, update, list and remove endpoints of a service.")


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
    wait: bool | None = WAIT,
    wait_timeout: float = WAIT_TIMEOUT,
) -> None:
    """Add (or replace) an endpoint version serving a model.

    On a terminal it waits until the replicas have loaded it (see --wait).
    """
    endpoint, version = endpoint_and_version(endpoint, version)
    query = checked_model_query(model_id, name, project, tags, published, preprocess)
    check_engine_flags(engine, model_given=bool(model_id or query), code_given=preprocess is not None)
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
        key = str(ep.get("key") or (f"{endpoint}/{version}" if version else endpoint))
        model = f", model {ep['model_id']}" if ep.get("model_id") else ""
        typer.echo(f"endpoint {key!r} added to service {svc!r} ({ep.get('engine', engine)}{model})")
        if wait if wait is not None else sys.stdout.isatty():
            report_loaded(c, svc, key, wait_timeout)
        else:
            typer.echo("the replicas load it now: 'modelyard endpoint list' shows its state (or add --wait)")


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
    endpoint, version = endpoint_and_version(endpoint, version)
    query = checked_model_query(model_id, name, project, tags, published, preprocess)
    svc = common.resolve_service(service)
    with common.client() as c:
        # uploaded once; the merge below may run again if another writer changes the service
        code = common.upload_code(c, preprocess) if preprocess is not None else None

        def change(current: dict[str, Any]) -> dict[str, Any]:
            inputs = build_tensors("input", input_name, input_type, input_size, current.get("inputs"))
            outputs = build_tensors("output", output_name, output_type, output_size, current.get("outputs"))
            options = merge_pairs(current.get("options"), option, "--option")
            batching = batching_options(max_batch_size, max_batch_delay_ms, max_queue)
            if batching:
                options = {**(options if options is not None else current.get("options") or {}), **batching}
            auxiliary = merge_pairs(current.get("auxiliary"), aux, "--aux")
            return {
                "engine": engine, "model_id": model_id, "model_query": query, "preprocess": code,
                "inputs": inputs, "outputs": outputs, "options": options, "auxiliary": auxiliary,
            }  # fmt: skip

        # read-modify-write with If-Match: a concurrent change is merged, never lost
        ep = c.modify_endpoint(svc, endpoint, version, change)
    typer.echo(f"endpoint {ep.get('key', endpoint)!r} in service {svc!r} updated")


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


ALL_VERSIONS = typer.Option(False, "--all", help="Every version of the endpoint.")


def _versions(c: Any, svc: str, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint versions named ``endpoint`` (the unversioned one first, then 1, 2, ... 10)."""
    found = [e for e in c.list_endpoints(svc) if e.get("endpoint") == endpoint]
    return sorted(found, key=lambda e: (len(str(e.get("version") or "")), str(e.get("version") or "")))


def _no_unversioned(endpoint: str, svc: str, versions: list[dict[str, Any]], hint: str) -> str:
    keys = ", ".join(str(e.get("key")) for e in versions)
    return f"endpoint {endpoint!r} of service {svc!r} exists only as versions {keys}: {hint}"


@app.command("show")
def show(
    endpoint: str = ENDPOINT,
    version: str | None = VERSION,
    all_versions: bool = ALL_VERSIONS,
    service: str | None = common.service_option(),
) -> None:
    """Print an endpoint version as JSON, with its state on each live replica.

    Its 'replicas' lists, per replica, the version's state, its load error, and the last error
    its code raised there ('last_user_error': hook, message with the user's file:line, time,
    counts). Without --version, for an endpoint that only has versions (iris/1, iris/2), or
    with --all: a JSON list of all of them.
    """
    endpoint, version = endpoint_and_version(endpoint, version)
    if all_versions and version:
        raise common.fail("give either --version or --all, not both")
    svc = common.resolve_service(service)
    with common.client() as c:
        single = not all_versions
        if all_versions:
            eps = _versions(c, svc, endpoint)
            if not eps:
                raise NotFound(f"endpoint {endpoint!r} not found in service {svc!r}")
        else:
            try:
                eps = [c.get_endpoint(svc, endpoint, version)]
            except NotFound:
                eps = _versions(c, svc, endpoint) if version is None else []
                if not eps:
                    raise
                single = False
                typer.echo(
                    _no_unversioned(endpoint, svc, eps, "showing them all (--version V for one)"), err=True
                )
        try:
            status: dict[str, Any] | None = c.status(svc)
        except ModelyardError:
            status = None
    shown = [{**ep, "replicas": _replica_states(status, str(ep.get("key")))} for ep in eps]
    common.print_json(shown[0] if single else shown)


def _replica_states(status: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """What each live replica reports for endpoint version ``key``."""
    out = []
    for replica in (status or {}).get("replicas") or []:
        for ep in replica.get("endpoints") or []:
            if ep.get("key") == key:
                entry = {"replica": replica.get("id"), "state": ep.get("state")}
                for field in ("error", "last_user_error"):
                    if ep.get(field):
                        entry[field] = ep[field]
                out.append(entry)
    return out


@app.command("remove")
def remove(
    endpoint: str = ENDPOINT,
    version: str | None = VERSION,
    all_versions: bool = ALL_VERSIONS,
    service: str | None = common.service_option(),
) -> None:
    """Remove an endpoint version (--all: every version of the endpoint)."""
    endpoint, version = endpoint_and_version(endpoint, version)
    if all_versions and version:
        raise common.fail("give either --version or --all, not both")
    svc = common.resolve_service(service)
    with common.client() as c:
        if all_versions:
            keys = [str(e.get("key")) for e in _versions(c, svc, endpoint)]
            if not keys:
                raise NotFound(f"endpoint {endpoint!r} not found in service {svc!r}")
            for key in keys:
                c.remove_endpoint(svc, key)
        else:
            try:
                c.remove_endpoint(svc, endpoint, version)
            except NotFound:
                versions = _versions(c, svc, endpoint) if version is None else []
                if not versions:
                    raise
                raise common.fail(
                    _no_unversioned(endpoint, svc, versions, "give --version V, or --all to remove them all")
                ) from None
            keys = [f"{endpoint}/{version}" if version else endpoint]
    for key in keys:
        typer.echo(f"endpoint {key!r} removed from service {svc!r}")
