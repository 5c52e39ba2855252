"""``modelyard auto-deploy ...``: serve the newest matching registry models automatically.

``modelyard auto-deploy add --endpoint iris_auto --engine sklearn --name "iris.*" --project demo
--published --max-versions 2 --preprocess p.py``: every matching model becomes
``iris_auto/<n>`` as soon as it is published or tagged; the newest N stay, older ones go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modelyard.cli import _common as common

app = typer.Typer(help="Deploy newly published models automatically.", no_args_is_help=True)

ENDPOINT = typer.Option(..., "--endpoint", help="The endpoint the models are served as (<endpoint>/<n>).")


def _preprocess(path: Path | None) -> Path | None:
    if path is not None and not path.exists():
        raise common.fail(f"--preprocess {str(path)!r} does not exist")
    return path


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
    option: list[str] | None = typer.Option(None, "--option", help="Engine options: key=value."),
    aux: list[str] | None = typer.Option(
        None, "--aux", "--aux-config", help="User code settings: key=value."
    ),
    service: str | None = common.service_option(),
) -> None:
    """Add (or replace) a rule and deploy the models that match it now."""
    svc = common.resolve_service(service)
    with common.client() as c:
        rule = c.add_auto_deploy(
            svc, endpoint, engine=engine, name=name, project=project, tags=tags or (),
            published=published, max_versions=max_versions, preprocess=_preprocess(preprocess),
            options=common.parse_pairs(option, "--option"), auxiliary=common.parse_pairs(aux, "--aux"),
        )  # fmt: skip
    deployed = " ".join(d["key"] for d in rule.get("deployed") or []) or "nothing yet"
    typer.echo(f"auto-deploy {endpoint!r} in service {svc!r}: {deployed}")


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
    apply_to_existing: bool = typer.Option(
        False, "--apply-to-existing", help="Also change the versions already deployed."
    ),
    service: str | None = common.service_option(),
) -> None:
    """Change a rule; deployed versions keep their code unless --apply-to-existing."""
    given: dict[str, Any] = {
        "engine": engine, "name": name, "project": project, "tags": tags, "published": published,
        "max_versions": max_versions, "preprocess": _preprocess(preprocess),
    }  # fmt: skip
    changes = {k: v for k, v in given.items() if v is not None}
    svc = common.resolve_service(service)
    with common.client() as c:
        rule = c.update_auto_deploy(svc, endpoint, apply_to_existing=apply_to_existing, **changes)
    deployed = " ".join(d["key"] for d in rule.get("deployed") or []) or "nothing"
    typer.echo(f"auto-deploy {endpoint!r} in service {svc!r} updated: {deployed}")


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
