"""``modelyard auto-deploy ...``: serve the newest matching registry models automatically.

``modelyard auto-deploy add --endpoint iris_auto --engine sklearn --name "iris.*" --project demo
--published --max-versions 2 --preprocess p.py``: every matching model becomes
``iris_auto/<n>`` as soon as it is published or tagged; the newest N stay, older ones go.
The engine options, user-code settings and declared tensors (``--option``, ``--aux``,
``--input-*``/``--output-*``, as on ``endpoint add``) go to every version deployed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modelyard.cli import _common as common
from modelyard.cli import _flags as ep_flags
from modelyard.errors import RevisionConflict

app = common.sub_app("Deploy newly published models automatically.")

ENDPOINT = typer.Option(..., "--endpoint", help="The endpoint the models are served as (<endpoint>/<n>).")


def _preprocess(path: Path | None) -> Path | None:
    if path is not None and not path.exists():
        raise common.fail(f"--preprocess {str(path)!r} does not exist")
    return path


def _tensors(flags: tuple[list[str] | None, ...], current: dict[str, Any]) -> dict[str, Any]:
    """The ``inputs``/``outputs`` the ``--input-*``/``--output-*`` flags declare, over ``current``'s.

    Only the groups given a flag are in the result (the others stay as they are).
    """
    out = {}
    for field, what, at in (("inputs", "input", 0), ("outputs", "output", 3)):
        names, types, sizes = flags[at : at + 3]
        value = ep_flags.build_tensors(what, names, types, sizes, current.get(field))
        if value is not None:
            out[field] = value
    return out


def _echo_deployed(rule: dict[str, Any], head: str, none: str) -> None:
    deployed = " ".join(d["key"] for d in rule.get("deployed") or []) or none
    typer.echo(f"{head}: {deployed}")


@common.command(app, "add")
def add(
    endpoint: str = ENDPOINT,
    engine: str = typer.Option(..., "--engine", help="Engine of the deployed versions (sklearn...)."),
    name: str = typer.Option(..., "--name", help="Model name: a regular expression over the whole name."),
    project: str | None = typer.Option(None, "--project", help="Only models of this project."),
    tags: list[str] | None = typer.Option(None, "--tags", help="Only models with all these tags."),
    published: bool = typer.Option(False, "--published", help="Only published models."),
    max_versions: int = typer.Option(1, "--max-versions", help="Keep the newest N models deployed."),
    preprocess: Path | None = typer.Option(
        None, "--preprocess", help="Preprocess code bound to each version."
    ),
    option: list[str] | None = ep_flags.OPTION,
    aux: list[str] | None = ep_flags.AUX,
    input_name: list[str] | None = ep_flags.INPUT_NAME,
    input_type: list[str] | None = ep_flags.INPUT_TYPE,
    input_size: list[str] | None = ep_flags.INPUT_SIZE,
    output_name: list[str] | None = ep_flags.OUTPUT_NAME,
    output_type: list[str] | None = ep_flags.OUTPUT_TYPE,
    output_size: list[str] | None = ep_flags.OUTPUT_SIZE,
    service: str | None = common.service_option(),
) -> None:
    """Add (or replace) a rule and deploy the models that match it now."""
    ep_flags.check_engine_flags(engine, model_given=True, code_given=preprocess is not None)
    tensors = _tensors((input_name, input_type, input_size, output_name, output_type, output_size), {})
    svc = common.resolve_service(service)
    with common.client() as c:
        rule = c.add_auto_deploy(
            svc, endpoint, engine=engine, name=name, project=project, tags=tags or (),
            published=published, max_versions=max_versions, preprocess=_preprocess(preprocess),
            options=common.parse_pairs(option, "--option"), auxiliary=common.parse_pairs(aux, "--aux"),
            inputs=tensors.get("inputs", []), outputs=tensors.get("outputs", []),
        )  # fmt: skip
    _echo_deployed(rule, f"auto-deploy {endpoint!r} in service {svc!r}", "nothing yet")


@common.command(app, "update")
def update(
    endpoint: str = ENDPOINT,
    engine: str | None = typer.Option(None, "--engine", help="Engine of new versions."),
    name: str | None = typer.Option(None, "--name", help="Model name regular expression."),
    project: str | None = typer.Option(None, "--project", help="Model project."),
    tags: list[str] | None = typer.Option(None, "--tags", help="Required model tags."),
    published: bool | None = typer.Option(None, "--published/--any-state", help="Only published models."),
    max_versions: int | None = typer.Option(None, "--max-versions", help="Keep the newest N."),
    preprocess: Path | None = typer.Option(None, "--preprocess", help="Preprocess code of new versions."),
    option: list[str] | None = ep_flags.OPTION,
    aux: list[str] | None = ep_flags.AUX,
    input_name: list[str] | None = ep_flags.INPUT_NAME,
    input_type: list[str] | None = ep_flags.INPUT_TYPE,
    input_size: list[str] | None = ep_flags.INPUT_SIZE,
    output_name: list[str] | None = ep_flags.OUTPUT_NAME,
    output_type: list[str] | None = ep_flags.OUTPUT_TYPE,
    output_size: list[str] | None = ep_flags.OUTPUT_SIZE,
    apply_to_existing: bool = typer.Option(
        False, "--apply-to-existing", help="Also change the versions already deployed."
    ),
    service: str | None = common.service_option(),
) -> None:
    """Change a rule; deployed versions keep their code and settings unless --apply-to-existing.

    --option and --aux are merged into the rule's current ones (key= with an empty value
    removes it); --input-*/--output-* replace its declared tensors.
    """
    if engine is not None:
        ep_flags.check_engine_flags(engine, model_given=True, code_given=True)  # the rule's code stays
    given: dict[str, Any] = {
        "engine": engine, "name": name, "project": project, "tags": tags, "published": published,
        "max_versions": max_versions, "preprocess": _preprocess(preprocess),
    }  # fmt: skip
    changes = {k: v for k, v in given.items() if v is not None}
    tensor_flags = (input_name, input_type, input_size, output_name, output_type, output_size)
    svc = common.resolve_service(service)
    with common.client() as c:
        for attempt in range(1, 9):
            # the rule is read at the service's revision, and written only if nothing moved since
            revision = int(c.get_service(svc)["revision"])
            current = c.get_auto_deploy(svc, endpoint) if option or aux or any(tensor_flags) else {}
            merged = dict(changes)
            for field, items, flag in (("options", option, "--option"), ("auxiliary", aux, "--aux")):
                value = ep_flags.merge_pairs(current.get(field), items, flag)
                if value is not None:
                    merged[field] = value
            merged.update(_tensors(tensor_flags, current))
            try:
                rule = c.update_auto_deploy(
                    svc, endpoint, apply_to_existing=apply_to_existing, if_revision=revision, **merged
                )
                break
            except RevisionConflict:
                if attempt == 8:
                    raise
    _echo_deployed(rule, f"auto-deploy {endpoint!r} in service {svc!r} updated", "nothing")


@app.command("list")
def list_(
    service: str | None = common.service_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List auto-deploy rules and the versions each has deployed."""
    svc = common.resolve_service(service)
    with common.client() as c:
        rules = c.list_auto_deploy(svc)
    if as_json:
        common.print_json(rules)
        return
    rows = [
        [
            r["endpoint"], r["engine"], r["name"], r.get("project") or "", " ".join(r.get("tags") or []),
            "yes" if r.get("published") else "", r["max_versions"],
            (r.get("preprocess") or {}).get("filename", ""),
            " ".join(d["key"] for d in r.get("deployed") or []),
        ]
        for r in rules
    ]  # fmt: skip
    common.print_table(
        ["endpoint", "engine", "name", "project", "tags", "published", "max", "preprocess", "deployed"],
        rows,
        empty="no auto-deploy rules",
    )


@app.command("remove")
def remove(
    endpoint: str = ENDPOINT,
    keep_endpoints: bool = typer.Option(False, "--keep-endpoints", help="Leave the deployed versions."),
    service: str | None = common.service_option(),
) -> None:
    """Remove a rule and (unless --keep-endpoints) the versions it deployed."""
    svc = common.resolve_service(service)
    with common.client() as c:
        c.remove_auto_deploy(svc, endpoint, keep_endpoints=keep_endpoints)
    typer.echo(f"auto-deploy {endpoint!r} removed from service {svc!r}")
