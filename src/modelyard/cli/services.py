"""``modelyard service ...``: create, list and remove serving services."""

from __future__ import annotations

import typer

from modelyard.cli import _common as common

app = common.sub_app("Create, list and remove serving services.")


@app.command("create")
def create(
    name: str = typer.Argument(..., help="The service's name."),
    description: str = typer.Option("", "--description", help="What the service is for."),
) -> None:
    """Create a serving service."""
    with common.client() as c:
        service = c.create_service(name, description)
    typer.echo(f"service {service.get('name', name)!r} created")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List serving services."""
    with common.client() as c:
        services = c.list_services()
    if as_json:
        common.print_json(services)
        return
    common.print_table(
        ["name", "description", "revision", "created"],
        [
            [s.get("name"), s.get("description"), s.get("revision"), common.short_time(s.get("created_at"))]
            for s in services
        ],
        empty="no services",
    )


@app.command("remove")
def remove(name: str = typer.Argument(..., help="The service's name.")) -> None:
    """Remove a serving service and all its endpoints."""
    with common.client() as c:
        c.remove_service(name)
    typer.echo(f"service {name!r} removed")
