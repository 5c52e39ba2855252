"""``modelyard apply/diff/delete -f`` and ``modelyard k8s render -f``: the declarative spec.

Thin, like every command: parse the file (errors name ``file:line: field``), plan, call
:mod:`modelyard.deploy.apply` with the SDK client, print. The root CLI registers these with
:func:`register` (``apply``, ``diff``, ``delete`` and the ``k8s`` group).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelyard.cli import _common as common

if TYPE_CHECKING:
    from modelyard.deploy.apply import ChangeSet
    from modelyard.deploy.plan import Plan

FILE_HELP = "An Inference spec (YAML; several documents may be separated by ---)."


def _plans(file: Path) -> list[Plan]:
    from modelyard.deploy.plan import plan_spec
    from modelyard.deploy.spec import parse_file

    return [plan_spec(spec) for spec in parse_file(file)]


def _print(change_sets: list[ChangeSet], as_json: bool) -> None:
    if as_json:
        common.print_json([c.as_dict() for c in change_sets])
        return
    for changes in change_sets:
        typer.echo(changes.render())


def apply_cmd(
    file: Path = typer.Option(..., "-f", "--filename", help=FILE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the change sets as JSON."),
) -> None:
    """Make the control plane match the spec; applying the same file again changes nothing.

    Every write carries the service revision it was planned against (If-Match); when
    another writer gets in between, apply plans again from what is there and goes on.
    """
    from modelyard.deploy.apply import apply

    plans = _plans(file)
    with common.client() as c:
        results = apply(c, plans)
    _print(results, as_json)
    if not as_json and not any(r.writes for r in results):
        typer.echo("no changes")


def diff_cmd(
    file: Path = typer.Option(..., "-f", "--filename", help=FILE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the change sets as JSON."),
    exit_code: bool = typer.Option(
        False, "--exit-code", help="Exit with status 2 when applying would change something."
    ),
) -> None:
    """Show what 'apply -f' would change (+ create, ~ update, - delete, = unchanged); writes nothing."""
    from modelyard.deploy.apply import diff

    plans = _plans(file)
    with common.client() as c:
        results = diff(c, plans)
    _print(results, as_json)
    if exit_code and any(r.changed for r in results):
        raise typer.Exit(2)


def delete_cmd(
    file: Path = typer.Option(..., "-f", "--filename", help=FILE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the change sets as JSON."),
) -> None:
    """Remove every endpoint version (and canary) the spec owns; the service itself stays."""
    from modelyard.deploy.apply import delete

    plans = _plans(file)
    with common.client() as c:
        results = delete(c, plans)
    _print(results, as_json)


k8s_app = common.sub_app("Kubernetes manifests for the platform and Inference specs.")


@k8s_app.command("render")
def k8s_render(
    file: Path = typer.Option(..., "-f", "--filename", help=FILE_HELP),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace for every object."),
    image: str | None = typer.Option(None, "--image", help="Container image (GPU predictors add -gpu)."),
    admin_token: str | None = typer.Option(
        None,
        "--admin-token",
        help="Put this admin token in the Secret.",
        show_default="an empty Secret to fill in",
    ),
    replica_token: str | None = typer.Option(
        None,
        "--replica-token",
        help="The replicas' token for its Secret (registered with the replica role).",
        show_default="an empty Secret to fill in",
    ),
    no_platform: bool = typer.Option(
        False, "--no-platform", help="Only the spec's objects, not the control plane and ServiceMonitor."
    ),
) -> None:
    """Print the manifests (multi-document YAML) for the spec, ready for 'kubectl apply -f -'.

    One Deployment, Service, PDB (and HPA) per predictor, each loading only its own endpoint
    version; a Gateway API HTTPRoute (spec.gateway names the Gateway) splits the traffic by
    trafficWeight. Tokens given here end up in the YAML: prefer filling the Secrets in place.
    """
    from modelyard.deploy.k8s import DEFAULT_IMAGE, dump, render
    from modelyard.deploy.spec import parse_file

    docs = render(
        parse_file(file),
        namespace=namespace,
        image=image or DEFAULT_IMAGE,
        admin_token=admin_token,
        platform=not no_platform,
        replica_token=replica_token,
    )
    typer.echo(dump(docs), nl=False)


def register(app: typer.Typer) -> None:
    """Add ``apply``, ``diff``, ``delete`` and ``k8s`` to the root CLI."""
    app.command("apply")(apply_cmd)
    app.command("diff")(diff_cmd)
    app.command("delete")(delete_cmd)
    app.add_typer(k8s_app, name="k8s")
