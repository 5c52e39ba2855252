"""The wire format of a serving service's configuration.

This is the contract between the control plane (which renders it from the
database) and every inference replica or queue worker (which applies it). It
is served by ``GET /api/services/<name>/config`` and cached on a replica's
disk as the last known copy, so it must be self-contained: artifacts are named
by sha256 and fetched from ``GET /api/artifacts/<sha256>``.

A replica compares :meth:`EndpointConfig.fingerprint` of each endpoint version
between two revisions: equal fingerprints keep the loaded model, a changed one
loads the new version beside the old and swaps.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
"""Names of services, endpoints, versions: letters, digits, ``_ . -``; no slash."""


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_', '.', '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return value


def endpoint_key(endpoint: str, version: str | None) -> str:
    """``iris/1`` for a versioned endpoint, ``iris`` for the unversioned one."""
    return f"{endpoint}/{version}" if version else endpoint


def split_endpoint_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`endpoint_key`: ``"iris/1"`` → ``("iris", "1")``, ``"iris"`` → ``("iris", "")``."""
    endpoint, _, version = key.strip("/").partition("/")
    return endpoint, version


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One declared input or output: clearml-serving's ``--input-name/-type/-size``."""

    name: str
    dtype: str | None = None
    """numpy dtype name (``float32``, ``int64``, ``str``...)."""
    shape: list[int] | None = None
    """Dimensions, ``-1`` for any size."""


class ArtifactRef(_Frozen):
    """A content-addressed file the replica must fetch: a model file or preprocess code."""

    sha256: str
    filename: str
    size: int = 0
    kind: Literal["file", "folder"] = "file"
    """``folder`` artifacts are a gzipped tar of a folder (a package with ``__init__.py``)."""


class ModelRef(_Frozen):
    """The registry model an endpoint version serves."""

    id: str
    name: str
    project: str
    version: int
    framework: str
    artifact: ArtifactRef | None = None
    """``None`` for a model registered by URL only when the replica downloads ``url`` itself."""
    url: str | None = None


class EndpointConfig(_Frozen):
    """One endpoint version as a replica needs it."""

    endpoint: str
    version: str = ""
    """Empty string for the unversioned endpoint."""
    engine: str
    model: ModelRef | None = None
    preprocess: ArtifactRef | None = None
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    """Engine, batching and serving options (``max_batch_size``, ``max_batch_delay_ms``,
    ``max_queue``, ``timeout_s`` (the request deadline), ``threads``, ``device``...)."""
    auxiliary: dict[str, Any] = Field(default_factory=dict)
    """Free-form settings handed to user code as ``self.auxiliary_cfg``."""

    @property
    def key(self) -> str:
        return endpoint_key(self.endpoint, self.version)

    def fingerprint(self) -> str:
        """Stable hash of everything that changes what this endpoint version computes."""
        raw = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(raw).hexdigest()


STICKY_RE = re.compile(r"^(header|body):(.+)$")


class CanaryConfig(_Frozen):
    """A routing endpoint that splits traffic over endpoint versions (canary / A-B).

    ``/serve/<endpoint>`` goes to one of :attr:`targets` (endpoint versions ``iris/2``, an
    endpoint name ``iris`` or another canary's name) with probability ``weight / sum(weights)``.
    With :attr:`prefix` instead, the targets are the newest ``len(weights)`` numeric versions
    of ``<prefix>/*`` (the first weight to the newest), recomputed as versions come and go.
    :attr:`sticky_key` (``header:X-User-Id`` or ``body:user_id``) maps a hash of that value
    onto the cumulative weights instead of a random draw. :attr:`shadow` endpoint versions get
    a fire-and-forget copy of each request whose answer is never returned.
    """

    endpoint: str
    weights: list[float]
    targets: list[str] = Field(default_factory=list)
    """Explicit targets (``iris/2``), or empty when :attr:`prefix` is set."""
    prefix: str | None = None
    sticky_key: str | None = None
    shadow: list[str] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        return check_name(value, "canary endpoint")

    @field_validator("weights")
    @classmethod
    def _valid_weights(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one weight")
        if any(not math.isfinite(w) or w < 0 for w in value):
            raise ValueError(f"weights must be finite and not negative, got {value}")
        if sum(value) <= 0:
            raise ValueError(f"weights must not sum to zero, got {value}")
        return value

    @field_validator("targets", "shadow")
    @classmethod
    def _valid_targets(cls, value: list[str]) -> list[str]:
        for target in value:
            endpoint, slash, version = target.partition("/")
            check_name(endpoint, "target endpoint")
            if slash:
                check_name(version, "target version")
        if len(set(value)) != len(value):
            raise ValueError(f"targets repeat: {value}")
        return value

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value, "endpoint prefix")

    @field_validator("sticky_key")
    @classmethod
    def _valid_sticky(cls, value: str | None) -> str | None:
        if value is not None and not STICKY_RE.match(value):
            raise ValueError(f"sticky key {value!r} must be header:<name> or body:<field>")
        return value

    @model_validator(mode="after")
    def _valid_mode(self) -> CanaryConfig:
        if bool(self.targets) == (self.prefix is not None):
            raise ValueError("give either targets (input endpoints) or an endpoint prefix, not both")
        if self.targets and len(self.targets) != len(self.weights):
            raise ValueError(
                f"{len(self.weights)} weight(s) for {len(self.targets)} target(s): give one weight per target"
            )
        if self.endpoint in self.targets or self.endpoint == self.prefix:
            raise ValueError(f"canary {self.endpoint!r} cannot route to itself")
        for shadow in self.shadow:
            if "/" not in shadow:
                raise ValueError(f"shadow {shadow!r} must be an endpoint version such as iris/3")
        return self

    def sticky(self) -> tuple[str, str] | None:
        """``("header", "x-user-id")`` or ``("body", "user_id")``; header names lower-cased."""
        if self.sticky_key is None:
            return None
        where, _, name = self.sticky_key.partition(":")
        return (where, name.lower() if where == "header" else name)


METRIC_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,99}$")
"""Custom statistic names: request/response field names that are also valid Prometheus name parts."""

MetricKind = Literal["scalar", "enum", "value", "counter"]


class MetricVariable(_Frozen):
    """One custom statistic (clearml-serving's ``--variable-scalar/-enum/-value/-counter``).

    ``scalar``: histogram over :attr:`buckets`; ``enum``: a count per value in :attr:`values`
    (anything else counts as ``other``); ``value``: a gauge (last value); ``counter``: a
    counter increased by each reported value (1 when the value is ``None``/``True``).
    Exported as ``modelyard_custom_<name>`` with ``service``/``endpoint``/``version`` labels.
    """

    name: str
    kind: MetricKind
    buckets: list[float] = Field(default_factory=list)
    values: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not METRIC_NAME_RE.match(value):
            raise ValueError(
                f"metric name {value!r} is not a valid Prometheus name: use letters, digits and '_', "
                "not starting with a digit (at most 100)"
            )
        return value

    @model_validator(mode="after")
    def _valid_kind(self) -> MetricVariable:
        if self.kind == "scalar":
            if not self.buckets:
                raise ValueError(f"scalar metric {self.name!r} needs buckets, e.g. {self.name}=0,0.5,1,2")
            if any(not math.isfinite(b) for b in self.buckets):
                raise ValueError(f"scalar metric {self.name!r}: buckets must be finite numbers")
            if any(b >= a for b, a in zip(self.buckets, self.buckets[1:], strict=False)):
                raise ValueError(
                    f"scalar metric {self.name!r}: buckets must be strictly increasing, got {self.buckets}"
                )
        elif self.buckets:
            raise ValueError(f"{self.kind} metric {self.name!r} takes no buckets")
        if self.kind == "enum":
            if not self.values or any(not v for v in self.values):
                raise ValueError(f"enum metric {self.name!r} needs non-empty values, e.g. {self.name}=a,b")
            if len(set(self.values)) != len(self.values):
                raise ValueError(f"enum metric {self.name!r}: values repeat: {self.values}")
        elif self.values:
            raise ValueError(f"{self.kind} metric {self.name!r} takes no enum values")
        return self


def check_endpoint_pattern(value: str) -> str:
    """``iris/1`` (one version), ``iris`` (the unversioned endpoint) or ``iris/*`` (every version)."""
    endpoint, slash, version = value.partition("/")
    check_name(endpoint, "endpoint")
    if slash and version != "*":
        check_name(version, "version")
    return value


def pattern_matches(pattern: str, key: str) -> bool:
    """Whether the rule endpoint ``pattern`` covers the endpoint version ``key``."""
    if pattern.endswith("/*"):
        return split_endpoint_key(key)[0] == pattern[:-2]
    return pattern == key


class MetricRule(_Frozen):
    """Custom statistics of the endpoint versions that :attr:`endpoint` names (issue: monitoring)."""

    endpoint: str
    """``iris/1``, ``iris`` (unversioned) or ``iris/*`` (all versions, also those added later)."""
    log_freq: float = 1.0
    """Fraction of requests whose statistics are recorded (request counters count all)."""
    variables: list[MetricVariable] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        return check_endpoint_pattern(value)

    @field_validator("log_freq")
    @classmethod
    def _valid_freq(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"log_freq must be between 0 and 1, got {value}")
        return value

    @field_validator("variables")
    @classmethod
    def _unique(cls, value: list[MetricVariable]) -> list[MetricVariable]:
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {names}")
        return value

    def matches(self, key: str) -> bool:
        return pattern_matches(self.endpoint, key)

    def specificity(self) -> int:
        """Exact rules win over ``/*`` rules for the same endpoint version."""
        return 0 if self.endpoint.endswith("/*") else 1


class ServiceConfig(_Frozen):
    """Everything a replica of one serving service needs, at one revision."""

    service: str
    revision: int
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    canaries: list[CanaryConfig] = Field(default_factory=list)
    metrics: list[MetricRule] = Field(default_factory=list)

    @field_validator("service")
    @classmethod
    def _valid_service(cls, value: str) -> str:
        return check_name(value, "service")

    def endpoint_map(self) -> dict[str, EndpointConfig]:
        return {e.key: e for e in self.endpoints}
