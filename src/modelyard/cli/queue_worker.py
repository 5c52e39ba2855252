"""``modelyard queue-worker``: consume a Redis stream of inference inputs (see docs/queue.md).

Registered in the root app (``modelyard/cli/main.py``), where the root ``--url``/``--token``
apply to it as to every command; ``python -m modelyard.cli.queue_worker`` runs it alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modelyard.cli import _common as common

if TYPE_CHECKING:
    from modelyard.settings import Settings


def _fallback(*decls: str, help: str, show_default: str) -> Any:
    """An option left ``None`` when not given: its value then comes from where ``show_default``
    says (the root flags, the environment, a computed default), which ``--help`` shows."""
    return typer.Option(None, *decls, help=help, show_default=show_default)


def queue_worker(
    service: str | None = _fallback(
        "--service",
        help="The serving service whose endpoints the worker runs.",
        show_default="MODELYARD_SERVICE, else default",
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="Default endpoint (iris/1) for entries without an 'endpoint' field."
    ),
    stream: str = typer.Option("serving_stream", "--stream", help="The Redis input stream."),
    redis_url: str | None = typer.Option(
        None,
        "--redis-url",
        envvar="MODELYARD_REDIS_URL",
        help="Redis URL.",
        show_default="MODELYARD_REDIS_URL, else redis://127.0.0.1:6379/0",
    ),
    control_plane: str | None = _fallback(
        "--control-plane",
        "--url",
        help="Control plane URL to follow.",
        show_default="the root --url, else MODELYARD_URL",
    ),
    token: str | None = _fallback(
        "--token", help="API token.", show_default="the root --token, else MODELYARD_TOKEN, else <home>/token"
    ),
    consumers: int = typer.Option(1, "--consumers", min=1, help="Concurrent consumers in this process."),
    group: str = typer.Option("modelyard", "--group", help="Consumer group name."),
    consumer: str | None = _fallback("--consumer", help="Consumer name prefix.", show_default="<host>-<pid>"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, max=4096, help="Entries read per batch."),
    block_ms: int = typer.Option(1000, "--block-ms", min=1, help="How long one read waits for entries."),
    claim_idle_ms: int = typer.Option(
        30_000, "--claim-idle-ms", min=1, help="Reclaim entries another consumer left pending this long."
    ),
    max_failures: int = typer.Option(
        3, "--max-failures", min=1, help="Deliveries before an entry goes to the dead-letter stream."
    ),
    result_ttl: int = typer.Option(86_400, "--result-ttl", min=1, help="Seconds results are kept."),
    keep_acked: bool = typer.Option(
        False, "--keep-acked", help="Keep acknowledged entries in the stream (else they are deleted)."
    ),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve /metrics on this port."),
    home: Path | None = _fallback(
        "--home", help="State folder (token file, cache).", show_default="MODELYARD_HOME, else ~/.modelyard"
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Artifact cache folder."),
    log_level: str | None = _fallback(
        "--log-level",
        help="critical, error, warning, info or debug.",
        show_default="MODELYARD_LOG_LEVEL, else info",
    ),
    log_format: str | None = _fallback(
        "--log-format",
        help="text, or json: one JSON object per line.",
        show_default="MODELYARD_LOG_FORMAT, else text",
    ),
) -> None:
    """Run a queue worker: read inputs from a Redis stream, run them, write results by uri."""
    from modelyard.logs import setup_logging
    from modelyard.queue.runner import run_worker
    from modelyard.queue.worker import WorkerConfig

    settings = worker_settings(
        service=service,
        redis_url=redis_url,
        control_plane_url=control_plane,
        token=token,
        home=home,
        cache_dir=cache_dir,
        log_level=log_level,
        log_format=log_format,
    )
    setup_logging(settings)  # quiet: no line per call of its control plane client
    config = WorkerConfig(
        stream=stream,
        group=group,
        consumer=consumer or "",
        endpoint=endpoint.strip("/") if endpoint else None,
        consumers=consumers,
        batch_size=batch_size,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        max_failures=max_failures,
        result_ttl_s=result_ttl,
        delete_acked=not keep_acked,
    )
    asyncio.run(run_worker(settings, config, metrics_port=metrics_port))


def worker_settings(**flags: Any) -> Settings:
    """Settings for a worker: its own flags, then the root ``--url``/``--token``, then the environment.

    ``modelyard --url U --token T queue-worker ...`` gives the worker the same control plane
    and token as every other command; MODELYARD_URL, MODELYARD_CONTROL_PLANE_URL and
    MODELYARD_TOKEN apply only when neither the command nor the root was given one.
    """
    from pydantic import ValidationError

    from modelyard.settings import Settings

    given = {k: v for k, v in flags.items() if v is not None}
    root = common.globals_()
    if root.url is not None:
        given.setdefault("control_plane_url", root.url)
    if root.token is not None:
        given.setdefault("token", root.token)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise common.fail(
            "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        ) from None


def main() -> None:
    typer.run(queue_worker)


if __name__ == "__main__":
    main()
