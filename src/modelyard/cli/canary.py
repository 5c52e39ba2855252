"""``modelyard canary ...``: canary / A-B routing endpoints (add, list, remove).

``modelyard canary add --endpoint iris_canary --weights 0.1 0.9 --input-endpoints iris/2 iris/1``
(or ``--input-endpoint-prefix iris``: the newest versions of ``iris/*``, first weight to the
newest), ``--sticky-key header:X-User-Id`` or ``body:user_id``, ``--shadow iris/3``.
"""

from __future__ import annotations

import typer

from modelyard.cli import _common as common

app = common.sub_app("Split an endpoint's traffic over endpoint versions (canary, A/B).")


@common.command(app, "add")
def add(
    endpoint: str = typer.Option(..., "--endpoint", help="The routing endpoint (/serve/<endpoint>)."),
    weights: list[float] = typer.Option(..., "--weights", help="One weight per target: --weights 0.1 0.9."),
    input_endpoints: list[str] | None = typer.Option(
        None, "--input-endpoints", "--input-endpoint", help="Targets: --input-endpoints iris/2 iris/1."
    ),
    prefix: str | None = typer.Option(
        None, "--input-endpoint-prefix", help="Or: the newest versions of <prefix>/* (newest first)."
    ),
    sticky_key: str | None = typer.Option(
        None, "--sticky-key", help="header:<name> or body:<field>: the same key always gets the same target."
    ),
    shadow: list[str] | None = typer.Option(
        None, "--shadow", help="Endpoint versions that get a copy of each request (answer not returned)."
    ),
    service: str | None = common.service_option(),
) -> None:
    """Add (or replace) a canary endpoint."""
    if bool(input_endpoints) == (prefix is not None):
        raise common.fail("give either --input-endpoints or --input-endpoint-prefix")
    svc = common.resolve_service(service)
    with common.client() as c:
        info = c.add_canary(
            svc, endpoint, weights, input_endpoints or (), prefix=prefix, sticky_key=sticky_key,
            shadow=shadow or (),
        )  # fmt: skip
    split = ", ".join(f"{t}" for t in info.get("resolved") or [])
    typer.echo(f"canary {endpoint!r} in service {svc!r}: {split or '(no target serving yet)'}")
    if info.get("missing"):
        typer.echo(f"warning: not serving now: {', '.join(info['missing'])}", err=True)


@app.command("list")
def list_(
    service: str | None = common.service_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List canaries with their weights, current targets and missing ones."""
    svc = common.resolve_service(service)
    with common.client() as c:
        canaries = c.list_canaries(svc)
    if as_json:
        common.print_json(canaries)
        return
    rows = []
    for info in canaries:
        canary = info["canary"]
        rows.append([
            canary["endpoint"],
            " ".join(f"{w:g}" for w in canary["weights"]),
            " ".join(canary["targets"]) or f"{canary['prefix']}/* (newest first)",
            " ".join(info.get("resolved") or []),
            canary.get("sticky_key") or "",
            " ".join(canary.get("shadow") or []),
            " ".join(info.get("missing") or []),
        ])  # fmt: skip
    common.print_table(
        ["canary", "weights", "targets", "now", "sticky", "shadow", "missing"], rows, empty="no canaries"
    )


@app.command("remove")
def remove(
    endpoint: str = typer.Option(..., "--endpoint", help="The canary endpoint."),
    service: str | None = common.service_option(),
) -> None:
    """Remove a canary endpoint (its targets stay)."""
    svc = common.resolve_service(service)
    with common.client() as c:
        c.remove_canary(svc, endpoint)
    typer.echo(f"canary {endpoint!r} removed from service {svc!r}")
