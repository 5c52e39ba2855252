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

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENDPOINT_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.\-*?\[\]!]+(/[A-Za-z0-9_.\-*?\[\]!]+)?$")
"""An endpoint key (``iris/a``, ``iris``) or an fnmatch pattern over keys (``iris/*``)."""

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")


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
    """A secret the control plane registers at start as the ``replica`` token named ``replicas``
    (a changed value replaces the previous one), for replicas and queue workers that cannot read
    ``<home>/token`` to present as their :attr:`token`: the ``modelyard-replica-token`` Secret
    of ``modelyard k8s render``. The ``replica`` role reads configurations and artifacts and
    reports status and statistics, nothing more; unset: nothing is registered."""

    database_url: str | None = None
    """SQLAlchemy URL of the control plane's database; default SQLite at ``<home>/modelyard.db``.

    PostgreSQL: ``postgresql+psycopg://user@host:5432/db``."""

    artifacts_url: str | None = None
    """fsspec URL where artifacts (model files, preprocess code) are kept;
    default ``<home>/artifacts``. ``s3://bucket/prefix``, ``gs://``, ``az://`` work with
    their fsspec package installed."""

    artifacts_options: dict[str, object] = Field(default_factory=dict)
    """Extra keyword arguments for the artifact filesystem (e.g. ``{"endpoint_url": ...}`` for S3)."""

    artifacts_stale_upload_s: float = Field(default=3600.0, gt=0)
    """At start the artifact store deletes temp files of interrupted uploads: at once when their
    writer process (same host) is gone, and any untouched for this many seconds (writers on
    other hosts of a shared store), so ``kill -9`` mid-upload never leaves files forever."""

    model_url_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http", "https", "s3", "gs", "gcs", "az", "abfs", "abfss"]
    )
    """URL schemes ``POST /api/models`` fetches a model from (comma-separated in the variable):
    http(s) and the object stores. ``file`` (which bare paths count as) is not among them, since
    a caller must not read the control plane's disk; add it, or another fsspec protocol, to
    allow it. Chained fsspec URLs (``a::b``) are always refused."""

    model_url_private_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Non-public networks http(s) model URLs may reach anyway (CIDRs, comma-separated:
    ``10.0.0.0/8,127.0.0.1``). By default the control plane refuses hosts that resolve to
    loopback, private, link-local (cloud metadata), and other non-public addresses, and checks
    every redirect, so a caller cannot make it fetch internal services (SSRF). ``0.0.0.0/0,::/0``
    turns the check off (needed when only a proxy can resolve outside names)."""

    preprocess_archive_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Most bytes a preprocess code archive (``.tar.gz``, tar or zip) may expand to, all files
    together: checked from its headers and by counting while extracting, on the control plane
    when the code is bound to an endpoint (413 above it) and on replicas when they unpack it."""

    preprocess_archive_max_files: int = Field(default=10_000, ge=1)
    """Most members (files and folders) a preprocess code archive may hold (413 above it)."""

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

    grpc_max_concurrent_rpcs: int = Field(default=256, ge=1)
    """Most RPCs the gRPC front (per worker process) runs at once; past it a call is answered
    ``RESOURCE_EXHAUSTED`` at once instead of queueing, so a flood cannot pile up work and
    memory (each call may hold a message of up to :attr:`max_body_bytes`)."""

    workers: int = 1
    """Number of server worker processes; ``auto`` (``--workers auto``, ``MODELYARD_WORKERS=auto``)
    turns on :attr:`autoscale` and starts :attr:`min_workers` of them."""

    reuse_port: bool = True
    """With several workers (a fixed number), give each its own listening socket bound with
    ``SO_REUSEPORT`` so the kernel spreads new connections evenly (Linux; see
    :mod:`modelyard.reuseport`). ``false``: uvicorn's one shared socket, where a burst of
    keep-alive connections can all land on one worker."""

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

    request_timeout_s: float = Field(default=60.0, ge=0)
    """Deadline of an inference request, from routing to its answer: past it the caller gets 504
    (``deadline_exceeded``, counted as code 504 in ``modelyard_requests``) and the work still
    awaited is cancelled (a model call already running in a thread finishes, unseen). An
    endpoint's ``timeout_s`` option overrides it; 0: no deadline."""

    max_inflight: int = Field(default=256, ge=0)
    """Admission control: the most inference requests one worker process runs at once, all
    endpoints together (health, status and metrics are never counted nor refused; calls made by
    endpoint code through ``send_request`` and shadow copies neither). Past it a request is
    answered 503 (``overloaded``) with ``Retry-After`` at once, so the admitted ones keep a
    bounded latency instead of every request waiting longer and longer. The default sheds
    nothing a replica can serve in time and matches a batching queue's default ``max_queue``;
    for a latency bound set about requests/s a worker sustains times the latency you accept
    (``bench/overload.py``). 0: no limit."""

    retire_wait_s: float = Field(default=60.0, ge=0)
    """How long a replaced or removed endpoint version waits for its in-flight requests before
    it cancels them (their callers get 503 + ``Retry-After``: the next try reaches the new
    version). Its model is unloaded only once no worker thread still runs its code. The default
    is the default :attr:`request_timeout_s`, so no request is cut short that its deadline
    would have let finish."""

    sync_wait_s: float = 20.0
    """How long one long-poll for configuration changes waits on the control plane."""

    sync_retry_s: float = 1.0
    """Pause between attempts when the control plane cannot be reached."""

    require_token_for_reads: bool = False
    """Also demand a bearer token for read-only control plane calls. Without it, callers with no
    token read everything but endpoint ``options``/``auxiliary`` values (shown redacted)."""

    control_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    """Largest JSON body the control plane API accepts (413 above it), checked after the token
    and before the body is read. Artifact uploads have their own :attr:`max_artifact_bytes`."""

    max_artifact_bytes: int = Field(default=64 * 1024**3, ge=1)
    """Largest artifact ``POST /api/artifacts`` stores (413 above it); streamed to the store."""

    anonymous_long_polls: int = Field(default=64, ge=0)
    """How many configuration long-polls without a token may wait at once per control plane
    process (503 with Retry-After beyond); replicas present a token and are not counted."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for the queue client and workers."""

    log_level: str = "info"
    """Logging level of the servers and workers: critical, error, warning, info or debug
    (``--log-level``). Libraries that log per call or per step (Alembic's migrations, httpx's
    requests) stay at warning unless this is debug."""

    log_format: str = "text"
    """``text`` (one readable line per record) or ``json`` (one JSON object per line: time,
    level, logger, message, exception; access-log lines add client, method, path, status) for
    log collectors (``--log-format``)."""

    access_log: bool = False
    """A log line per HTTP request the servers answer (``--access-log``); off by default, since
    it costs throughput and a serving replica answers thousands a second."""

    preload_engines: list[str] = Field(default_factory=lambda: ["sklearn"])
    """Engines whose framework a replica imports in the background at start, so the first
    endpoint of that kind does not pay for the import (seconds for scikit-learn)."""

    stats_interval_s: float = 2.0
    """How often a replica sends its request counts and latency histogram to the control plane
    (for the dashboard's live charts; only when they changed, else every 10 s); 0 turns it off."""

    stats_max_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest statistics document (JSON bytes) a replica pushes and the control plane stores:
    a replica past it sends its busiest endpoint versions only (~100 fit, ~300 bytes each), the
    control plane answers 413 to a larger push, so a replica row never holds more than twice this.
    ``/ui/api/live`` parses every fresh row: this times :attr:`stats_max_replicas` bounds its work."""

    stats_max_replicas: int = Field(default=50, ge=1)
    """Replica processes whose statistics the control plane keeps per service: a new one past
    this replaces the one that reported least recently (rows of replicas silent for 5 minutes
    are dropped anyway), so random replica ids cannot grow the database. The replicas' status
    reports (``/api/services/<s>/status``) are kept per service within the same bound."""

    metrics_dir: Path | None = None
    """Folder for prometheus_client's multiprocess files when a server runs several workers;
    default a fresh temporary folder per server run. Emptied at start."""

    examples: bool = False
    """Register and deploy the bundled example models on start (``modelyard serve --examples``)."""

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _check_log_choice(cls, value: Any, info: ValidationInfo) -> Any:
        allowed = LOG_LEVELS if info.field_name == "log_level" else LOG_FORMATS
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"{info.field_name} {value!r} is not one of: {', '.join(allowed)}")
        return text

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

    @field_validator("model_url_schemes", "model_url_private_networks", mode="before")
    @classmethod
    def _split_url_lists(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            value = [str(v).strip() for v in value if str(v).strip()]
            if info.field_name == "model_url_schemes":
                value = [v.lower().removesuffix("://") for v in value]
            else:
                from modelyard.artifact_urls import parse_networks

                parse_networks(value)  # a typo fails at start, naming the value
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
