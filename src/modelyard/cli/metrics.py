"""``modelyard metrics ...``: custom statistics per endpoint, clearml-serving's ``metrics`` flags.

    modelyard metrics add --endpoint iris/1 --log-freq 0.2 --variable-scalar x0=0,0.5,1,2 \\
        --variable-enum y=cat,dog --variable-value z --variable-counter n
    modelyard metrics list
    modelyard metrics remove --endpoint iris/1

``--endpoint iris/*`` covers every version of ``iris``, also those added later. Each flag takes
several values (``--variable-scalar x0=0,1 x1=0,5``) or repeats.
"""

from __future__ import annotations

from typing import Any

import typer

from modelyard.cli import _common as common
from modelyard.errors import BadRequest

app = common.sub_app("Custom statistics of endpoints: add, list and remove.")


def _split(item: str, flag: str, example: str) -> tuple[str, list[str]]:
    name, eq, rest = item.partition("=")
    if not eq or not name.strip() or not rest.strip():
        raise BadRequest(f"{flag} {item!r} is not of the form {example}")
    return name.strip(), [v.strip() for v in rest.split(",") if v.strip()]


def build_variables(
    scalars: list[str] | None,
    enums: list[str] | None,
    values: list[str] | None,
    counters: list[str] | None,
) -> list[dict[str, Any]]:
    """The API's variable dicts from the four ``--variable-*`` flags."""
    out: list[dict[str, Any]] = []
    for item in scalars or ():
        name, raw = _split(item, "--variable-scalar", "name=b1,b2,... (bucket bounds)")
        try:
            buckets = [float(b) for b in raw]
        except ValueError:
            raise BadRequest(f"--variable-scalar {item!r}: buckets must be numbers") from None
        out.append({"name": name, "kind": "scalar", "buckets": buckets})
    for item in enums or ():
        name, raw = _split(item, "--variable-enum", "name=value1,value2,...")
        out.append({"name": name, "kind": "enum", "values": raw})
    for kind, items in (("value", values), ("counter", counters)):
        for name in items or ():
            out.append({"name": name.strip(), "kind": kind})
    if not out:
        raise BadRequest(
            "give at least one of --variable-scalar, --variable-enum, --variable-value, --variable-counter"
        )
    return out


def _describe(var: dict[str, Any]) -> str:
    if var.get("kind") == "scalar":
        return f"{var['name']} (scalar: {','.join(f'{b:g}' for b in var.get('buckets') or [])})"
    if var.get("kind") == "enum":
        return f"{var['name']} (enum: {','.join(var.get('values') or [])})"
    return f"{var.get('name')} ({var.get('kind')})"


@common.command(app, "add")
def add(
    endpoint: str = typer.Option(..., "--endpoint", help="iris/1, iris (unversioned) or iris/* (all)."),
    log_freq: float = typer.Option(1.0, "--log-freq", help="Fraction of requests sampled (0..1)."),
    scalar: list[str] = typer.Option(None, "--variable-scalar", help="name=b1,b2,... histogram buckets."),
    enum: list[str] = typer.Option(None, "--variable-enum", help="name=v1,v2,... counted per value."),
    value: list[str] = typer.Option(None, "--variable-value", help="name: a gauge of the last value."),
    counter: list[str] = typer.Option(None, "--variable-counter", help="name: a counter summing values."),
    service: str | None = common.service_option(),
) -> None:
    """Add (or replace) the custom statistics of an endpoint; replicas apply it within a second."""
    variables = build_variables(scalar, enum, value, counter)
    with common.client() as c:
        rule = c.add_metric_rule(common.resolve_service(service), endpoint, variables, log_freq)
    typer.echo(
        f"metrics for {rule.get('endpoint', endpoint)!r} (log-freq {rule.get('log_freq', log_freq):g}): "
        + ", ".join(_describe(v) for v in rule.get("variables") or variables)
    )


@app.command("list")
def list_(
    service: str | None = common.service_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the custom statistics rules of a service."""
    with common.client() as c:
        rules = c.list_metric_rules(common.resolve_service(service))
    if as_json:
        common.print_json(rules)
        return
    common.print_table(
        ["endpoint", "log-freq", "variables"],
        [
            [
                r.get("endpoint"),
                f"{r.get('log_freq', 1):g}",
                "; ".join(_describe(v) for v in r.get("variables") or []),
            ]
            for r in rules
        ],
        empty="no metric rules",
    )


@app.command("remove")
def remove(
    endpoint: str = typer.Option(..., "--endpoint", help="The rule's endpoint, as given to add."),
    service: str | None = common.service_option(),
) -> None:
    """Remove the custom statistics rule of an endpoint."""
    with common.client() as c:
        c.remove_metric_rule(common.resolve_service(service), endpoint)
    typer.echo(f"metrics for {endpoint!r} removed")
