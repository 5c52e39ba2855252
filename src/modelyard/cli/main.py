"""The ``modelyard`` command: the root app, global options, servers, status and tokens."""

from __future__ import annotations

from typing import Any

import typer

from modelyard.cli import _common as common
from modelyard.cli.autodeploy import app as autodeploy_app
from modelyard.cli.canary import app as canary_app
from modelyard.cli.deploy import register as register_deploy
from modelyard.cli.endpoints import app as endpoint_app
from modelyard.cli.metrics import app as metrics_app
from modelyard.cli.models import app as model_app
from modelyard.cli.queue_worker import queue_worker
from modelyard.cli.services import app as service_app

app = typer.Typer(
    cls=common.Group,
    name="modelyard",
    help="Deploy and serve machine-learning models online, without taking anything down.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
app.add_typer(service_app, name="service")
app.add_typer(model_app, name="model")
app.add_typer(endpoint_app, name="endpoint")
app.add_typer(metrics_app, name="metrics")
app.add_typer(canary_app, name="canary")
app.add_typer(autodeploy_app, name="auto-deploy")
register_deploy(app)
app.command("queue-worker")(queue_worker)

token_app = common.sub_app("Create, list and revoke API tokens.")
app.add_typer(token_app, name="token")


def _print_version(value: bool) -> None:
    if value:
        from modelyard import __version__

        typer.echo(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    url: str | None = typer.Option(
        None, "--url", help="Control plane URL.", show_default="MODELYARD_URL, else http://127.0.0.1:8080"
    ),
    token: str | None = typer.Option(
        None, "--token", help="API token.", show_default="MODELYARD_TOKEN, else <MODELYARD_HOME>/token"
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    common.set_globals(common.Globals(url=url, token=token))


# -- servers --------------------------------------------------------------------------------


def _server_settings(**overrides: Any) -> Any:
    """Settings from the environment, with the flags that were given on top."""
    from pydantic import ValidationError

    from modelyard.settings import Settings

    opts = common.globals_()
    given = {k: v for k, v in overrides.items() if v is not None}
    if opts.url is not None:
        given.setdefault("url", opts.url)
    if opts.token is not None:
        given.setdefault("token", opts.token)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise common.fail(
            "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        ) from None


def _exiting() -> None:
    """The server stopped and the process ends: spare the interpreter's last garbage collection.

    With scikit-learn, SciPy and the web stack loaded, that pass over the whole heap took
    1.5-2.5 s on a busy 2-core machine, most of a Ctrl-C's wait. Frozen objects are still freed
    by reference counting; only the cycle search over them is skipped, which at exit finds
    nothing worth the wait.
    """
    import gc

    gc.freeze()


_L = "Logging"


def _log_level_option() -> Any:
    return typer.Option(
        None,
        "--log-level",
        help="critical, error, warning, info or debug (debug also shows Alembic's and httpx's lines).",
        show_default="MODELYARD_LOG_LEVEL, else info",
        rich_help_panel=_L,
    )


def _log_format_option() -> Any:
    return typer.Option(
        None,
        "--log-format",
        help="text, or json: one JSON object per line for log collectors.",
        show_default="MODELYARD_LOG_FORMAT, else text",
        rich_help_panel=_L,
    )


def _access_log_option() -> Any:
    return typer.Option(
        None,
        "--access-log/--no-access-log",
        help="A log line per HTTP request answered.",
        show_default="MODELYARD_ACCESS_LOG, else off",
        rich_help_panel=_L,
    )


def _host_option() -> Any:
    return typer.Option(
        None, "--host", help="Address to bind.", show_default="MODELYARD_HOST, else 127.0.0.1"
    )


def _port_option() -> Any:
    return typer.Option(None, "--port", help="Port to bind.", show_default="MODELYARD_PORT, else 8080")


def _home_option() -> Any:
    return typer.Option(
        None, "--home", help="State folder.", show_default="MODELYARD_HOME, else ~/.modelyard"
    )


def _workers_option() -> Any:
    return typer.Option(
        None,
        "--workers",
        help="Worker processes: a number, or auto (follow load, see --max-workers).",
        show_default="MODELYARD_WORKERS, else 1",
    )


def _min_workers_option() -> Any:
    return typer.Option(
        None,
        "--min-workers",
        min=1,
        help="With --workers auto: fewest workers.",
        show_default="MODELYARD_MIN_WORKERS, else 1",
    )


def _max_workers_option() -> Any:
    return typer.Option(
        None,
        "--max-workers",
        min=1,
        help="With --workers auto: most workers.",
        show_default="MODELYARD_MAX_WORKERS, else the CPU count",
    )


def _grpc_port_option() -> Any:
    return typer.Option(
        None,
        "--grpc-port",
        min=1,
        max=65535,
        help="Also serve the Open Inference Protocol over gRPC on this port (KServe V2 / Triton).",
    )


def _workers(value: str | None) -> dict[str, Any]:
    """``--workers`` as settings: ``auto`` turns autoscaling on, a number fixes the count."""
    if value is None:
        return {}
    if value.strip().lower() == "auto":
        return {"workers": "auto"}
    try:
        count = int(value)
    except ValueError:
        raise common.fail(f"--workers {value!r} is neither a number nor 'auto'") from None
    if count < 1:
        raise common.fail("--workers must be at least 1")
    return {"workers": count}


@app.command()
def serve(
    host: str | None = _host_option(),
    port: int | None = _port_option(),
    grpc_port: int | None = _grpc_port_option(),
    workers: str | None = _workers_option(),
    min_workers: int | None = _min_workers_option(),
    max_workers: int | None = _max_workers_option(),
    examples: bool | None = typer.Option(
        None,
        "--examples/--no-examples",
        help="Register and deploy the bundled example models.",
        show_default="MODELYARD_EXAMPLES, else no-examples",
    ),
    home: str | None = _home_option(),
    log_level: str | None = _log_level_option(),
    log_format: str | None = _log_format_option(),
    access_log: bool | None = _access_log_option(),
) -> None:
    """Run everything in one process: control plane, inference server and dashboard.

    Ctrl-C stops it within a second or two, replicas long-polling it included.
    """
    from modelyard.server import run_all_in_one

    settings = _server_settings(
        host=host, port=port, grpc_port=grpc_port, examples=examples, home=home,
        min_workers=min_workers, max_workers=max_workers, log_level=log_level, log_format=log_format,
        access_log=access_log, **_workers(workers),
    )  # fmt: skip
    run_all_in_one(settings)
    _exiting()


@app.command("control-plane")
def control_plane(
    host: str | None = _host_option(),
    port: int | None = _port_option(),
    workers: int | None = typer.Option(
        None, "--workers", help="Worker processes.", show_default="MODELYARD_WORKERS, else 1"
    ),
    home: str | None = _home_option(),
    log_level: str | None = _log_level_option(),
    log_format: str | None = _log_format_option(),
    access_log: bool | None = _access_log_option(),
) -> None:
    """Run the control plane alone (API, docs, dashboard); replicas run as 'modelyard inference'.

    Database and artifact store come from MODELYARD_DATABASE_URL and MODELYARD_ARTIFACTS_URL
    (+ MODELYARD_ARTIFACTS_OPTIONS), e.g. PostgreSQL and S3 when several machines share it.
    """
    from modelyard.server import run_control_plane

    settings = _server_settings(
        host=host, port=port, workers=workers, home=home, log_level=log_level, log_format=log_format,
        access_log=access_log,
    )  # fmt: skip
    run_control_plane(settings)
    _exiting()


@app.command()
def inference(
    service: str | None = common.service_option(),
    control_plane: str | None = typer.Option(
        None,
        "--control-plane",
        help="Control plane URL to sync the configuration from.",
        show_default="MODELYARD_CONTROL_PLANE_URL, else --url",
    ),
    host: str | None = _host_option(),
    port: int | None = _port_option(),
    grpc_port: int | None = _grpc_port_option(),
    workers: str | None = _workers_option(),
    min_workers: int | None = _min_workers_option(),
    max_workers: int | None = _max_workers_option(),
    token: str | None = typer.Option(
        None, "--token", help="Token presented to the control plane (a replica token: it reports status)."
    ),
    endpoints: str | None = typer.Option(
        None,
        "--endpoints",
        help="Load only these endpoint versions: comma-separated keys or patterns (iris/a,iris/*).",
        show_default="MODELYARD_ENDPOINTS, else all",
    ),
    log_level: str | None = _log_level_option(),
    log_format: str | None = _log_format_option(),
    access_log: bool | None = _access_log_option(),
) -> None:
    """Run an inference server (data plane) for one service, synced from a control plane.

    --workers auto: the number of worker processes follows load (in-flight requests per
    worker, MODELYARD_AUTOSCALE_TARGET_INFLIGHT) between --min-workers and --max-workers.
    --token here or before the command (modelyard --token T inference) works the same.
    """
    from modelyard.server import run_inference

    settings = _server_settings(
        service=service, control_plane_url=control_plane, host=host, port=port, token=token,
        grpc_port=grpc_port, endpoints=endpoints, min_workers=min_workers, max_workers=max_workers,
        log_level=log_level, log_format=log_format, access_log=access_log, **_workers(workers),
    )  # fmt: skip
    run_inference(settings)
    _exiting()


# -- status ---------------------------------------------------------------------------------


@app.command()
def status(
    service: str | None = common.service_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the service's revision and what each live inference replica has loaded."""
    name = common.resolve_service(service)
    with common.client() as c:
        answer = c.status(name)
    if as_json:
        common.print_json(answer)
        return
    replicas = answer.get("replicas") or []
    typer.echo(
        f"service {answer.get('service', name)!r} at revision {answer.get('revision')}, "
        f"{len(replicas)} live replica(s)"
    )
    rows = []
    for replica in replicas:
        behind = replica.get("revision") != answer.get("revision")
        for ep in replica.get("endpoints") or [{"key": "(none)"}]:
            rows.append(
                [
                    replica.get("id"),
                    f"{replica.get('revision')}{' (behind)' if behind else ''}",
                    ep.get("key", ""),
                    ep.get("state", ""),
                    ep.get("error") or "",
                    common.short_time(replica.get("updated_at")),
                ]
            )
    if rows:
        common.print_table(["replica", "revision", "endpoint", "state", "error", "seen"], rows)


# -- tokens ---------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="A name for the token."),
    role: str = typer.Option(
        "admin",
        "--role",
        help="admin (may change things), replica (reads, and reports replica status and statistics: "
        "for inference replicas and queue workers) or reader (reads only).",
    ),
) -> None:
    """Create a token; prints its plaintext (shown only this once) alone on the last line."""
    if role not in ("admin", "replica", "reader"):
        raise common.fail(f"role {role!r} is not one of: admin, replica, reader")
    with common.client() as c:
        answer = c.create_token(name, role)
    typer.echo(
        f"token {answer.get('name')!r} ({answer.get('role')}) created; it is shown only this once:", err=True
    )
    typer.echo(answer["token"])


@token_app.command("list")
def token_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List tokens (names and roles; never their values)."""
    with common.client() as c:
        tokens = c.list_tokens()
    if as_json:
        common.print_json(tokens)
        return
    common.print_table(
        ["name", "role", "created"],
        [[t.get("name"), t.get("role"), common.short_time(t.get("created_at"))] for t in tokens],
        empty="no tokens",
    )


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token."""
    with common.client() as c:
        c.revoke_token(name)
    typer.echo(f"token {name!r} revoked")


def main() -> None:
    """Console-script entry point."""
    app()
