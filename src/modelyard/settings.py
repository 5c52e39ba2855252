"""Every knob in one place.

Settings are read when :class:`Settings` is instantiated (in the composition
root or the CLI), never at import time, so tests build their own with
``Settings(home=tmp_path)``. Environment variables use the ``MODELYARD_``
prefix: ``MODELYARD_HOME``, ``MODELYARD_DATABASE_URL`` and so on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENDPOINT_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.\-*?\[\]!]+(/[A-Za-z0-9_.\-*?\[\]!]+)?$")
"""An endpoint key (``iris/a``, ``iris``) or an fnmatch pattern over keys (``iris/*``)."""


def _default_home() -> Path:
    return Path("~/.modelyard").expanduser()


class Settings(BaseSettings):
    """modelyard's configuration, from ``MODELYARD_*`` variables, then defaults."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    """Folder for local state: the SQLite database, artifacts, caches and the admin token file."""

    url: str = "http://127.0.0.1:8080"
    """Where the CLI and SDK find the control plane (and an all-in-one server)."""

    token: str | None = None
    """Bearer token for the control plane API; when unset the CLI reads ``<home>/token``."""

    replica_token: str | None = None
    """A secret the control plane registers at start as the ``reader`` token named ``replicas``
    (a changed value replaces the previous one), for replicas and queue workers that cannot read
    ``<home>/token`` to present as their :attr:`token`: the ``modelyard-replica-token`` Secret
    of ``modelyard k8s render``. Reader is all a replica needs; unset: nothing is registered."""

    database_url: str | None = None
    """SQLAlchemy URL of the control plane's database; default SQLite at ``<home>/modelyard.db``.

    PostgreSQL: ``postgresql+psycopg://user@host:5432/db``."""

    artifacts_url: str | None = None
    """fsspec URL where artifacts (model files, preprocess code) are kept;
    default ``<home>/artifacts``. ``s3://bucket/prefix``, ``gs://``, ``az://`` work with
    their fsspec package installed."""

    artifacts_options: dict[str, object] = Field(default_factory=dict)
    """Extra keyword arguments for the artifact filesystem (e.g. ``{"endpoint_url": ...}`` for S3)."""

    cache_dir: Path | None = None
    """Where inference replicas cache downloaded artifacts by hash; default ``<home>/cache``."""

    cache_keep_s: float = Field(default=3600.0, ge=0)
    """Cached artifacts that no last-known configuration in the cache folder refers to any more
    are removed this many seconds after their download (checked after configuration changes),
    so a replica's disk does not fill with every model it ever served."""

    service: str = "default"
    """The serving service an inference server serves."""

    endpoints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Endpoint versions this inference replica loads, of its :attr:`service`: endpoint keys or
    fnmatch patterns, comma-separated in ``MODELYARD_ENDPOINTS`` (``iris/a``, ``iris/*``; a
    name without ``/`` is the unversioned endpoint); empty: all of them. ``k8s render`` gives
    each predictor's Deployment its own version, so a GPU model never loads on CPU pods and each
    HorizontalPodAutoscaler sees its own predictor's load. Canaries keep only the targets left."""

    control_plane_url: str | None = None
    """Control plane that an inference server syncs from; default :attr:`url`."""

    host: str = "127.0.0.1"
    """Address the server binds."""

    port: int = 8080
    """Port the server binds."""

    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the inference replica's Open Inference Protocol gRPC front (KServe V2 / Triton's
    ``inference.GRPCInferenceService``, on :attr:`host`), beside the HTTP one; ``None``: no gRPC.
    ``--grpc-port`` of ``modelyard serve`` and ``modelyard inference``; needs the ``grpc`` extra.
    With several workers each binds it with ``SO_REUSEPORT`` (the kernel spreads connections)."""

    workers: int = 1
    """Number of server worker processes; ``auto`` (``--workers auto``, ``MODELYARD_WORKERS=auto``)
    turns on :attr:`autoscale` and starts :attr:`min_workers` of them."""

    autoscale: bool = False
    """Let the number of worker processes follow load (in-flight requests per worker) between
    :attr:`min_workers` and :attr:`max_workers`: ``modelyard inference --workers auto``."""

    min_workers: int = Field(default=1, ge=1)
    """Fewest worker processes when autoscaling (also how many start)."""

    max_workers: int | None = Field(default=None, ge=1)
    """Most worker processes when autoscaling; default the machine's CPU count."""

    autoscale_target_inflight: float = Field(default=4.0, gt=0)
    """In-flight requests per worker that autoscaling aims at: it runs
    ``ceil(load / target)`` workers, load being the mean number of requests in flight (time spent
    in requests per second, from the workers' shared Prometheus files) over
    :attr:`autoscale_window_s`."""

    autoscale_window_s: float = Field(default=3.0, gt=0)
    """Seconds of history the load is averaged over."""

    autoscale_interval_s: float = Field(default=0.5, gt=0)
    """How often the supervisor reads the load and decides."""

    autoscale_up_cooldown_s: float = Field(default=2.0, ge=0)
    """Least time between a change in the worker count and the next scale-up (a new worker
    needs a moment to start before the load can show its effect)."""

    autoscale_down_delay_s: float = Field(default=30.0, ge=0)
    """Scale down only to the most workers the load asked for over this many seconds, and no
    sooner than this after the previous change (no flapping on bursty traffic)."""

    ready_wait_s: float | None = None
    """How long a starting inference worker waits for its configuration and models before it
    accepts requests (so a worker joining others never answers 503 "loading"); after that it
    serves anyway. Default 30 s with :attr:`autoscale`, else 0 (accept at once, report
    readiness on ``/health/ready``)."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted, counted after gzip decompression (413 above it)."""

    inline_max_ms: float = Field(default=0.5, ge=0)
    """Synchronous endpoint chains (preprocess, predict, postprocess) measured faster than this
    run on the event loop instead of hopping to the worker pool, whose hand-over costs about as
    much CPU as a small model's predict; slower ones, and any that turn slow, run in the pool.
    0 keeps every call in the pool. An endpoint's ``inline_max_ms`` option overrides it."""

    sync_wait_s: float = 20.0
    """How long one long-poll for configuration changes waits on the control plane."""

    sync_retry_s: float = 1.0
    """Pause between attempts when the control plane cannot be reached."""

    require_token_for_reads: bool = False
    """Also demand a bearer token for read-only control plane calls."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for the queue client and workers."""

    log_level: str = "info"
    """Logging level of the servers."""

    preload_engines: list[str] = Field(default_factory=lambda: ["sklearn"])
    """Engines whose framework a replica imports in the background at start, so the first
    endpoint of that kind does not pay for the import (seconds for scikit-learn)."""

    stats_interval_s: float = 2.0
    """How often a replica sends its request counts and latency histogram to the control plane
    (for the dashboard's live charts; only when they changed, else every 10 s); 0 turns it off."""

    metrics_dir: Path | None = None
    """Folder for prometheus_client's multiprocess files when a server runs several workers;
    default a fresh temporary folder per server run. Emptied at start."""

    examples: bool = False
    """Register and deploy the bundled example models on start (``modelyard serve --examples``)."""

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            value = [str(v).strip() for v in value if str(v).strip()]
            for pattern in value:
                if not ENDPOINT_PATTERN_RE.match(pattern):
                    raise ValueError(
                        f"endpoints: {pattern!r} is not an endpoint key or pattern such as iris/a, "
                        "iris/* or iris (letters, digits, '_', '.', '-', and * ? [ ] as wildcards)"
                    )
        return value

    @model_validator(mode="before")
    @classmethod
    def _workers_auto(cls, data: Any) -> Any:
        if isinstance(data, dict) and str(data.get("workers", "")).strip().lower() == "auto":
            data = {**data, "autoscale": True, "workers": data.get("min_workers") or 1}
        return data

    @model_validator(mode="after")
    def _check_worker_bounds(self) -> Settings:
        if self.max_workers is not None and self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) is below min_workers ({self.min_workers})")
        return self

    def several_processes(self) -> bool:
        """Whether the server runs (or may run, when autoscaling) more than one worker process."""
        return self.workers > 1 or self.autoscale

    def resolved_max_workers(self) -> int:
        return max(self.min_workers, self.max_workers or os.cpu_count() or 1)

    def resolved_ready_wait_s(self) -> float:
        if self.ready_wait_s is not None:
            return self.ready_wait_s
        return 30.0 if self.autoscale else 0.0

    def resolved_home(self) -> Path:
        return Path(self.home).expanduser()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home() / 'modelyard.db'}"

    def resolved_artifacts_url(self) -> str:
        return self.artifacts_url or str(self.resolved_home() / "artifacts")

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or self.resolved_home() / "cache").expanduser()

    def resolved_control_plane_url(self) -> str:
        return (self.control_plane_url or self.url).rstrip("/")

    def token_file(self) -> Path:
        return self.resolved_home() / "token"
