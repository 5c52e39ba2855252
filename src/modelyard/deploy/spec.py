"""The declarative ``Inference`` spec: parsing and validation with YAML line numbers.

The shape is KubeDL's ``Inference`` adapted to modelyard (``apiVersion: modelyard.io/v1``):
one document names an endpoint (``metadata.name``) in a serving service
(``metadata.service``) and lists its predictors, each a model plus how to serve it.

Why the YAML is composed into nodes before it is validated: a pydantic error only
knows the *path* of the bad value (``spec.predictors.1.trafficWeight``). The node tree
remembers where every key and value started, so an error can say
``inference.yaml:12: spec.predictors[1].trafficWeight: must be ≥ 0`` — the user fixes the
file without counting list items.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from modelyard.config import TensorSpec, check_name
from modelyard.errors import BadRequest

API_VERSION = "modelyard.io/v1"
KIND = "Inference"

Loc = tuple[str | int, ...]


class SpecError(BadRequest):
    """The spec is not a valid ``Inference``; one ``file:line: field: why`` line per problem."""

    kind = "bad_request"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Spec(BaseModel):
    """Strict camelCase models: an unknown field is an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class ModelSelector(_Spec):
    """Which registry model a predictor serves.

    ``{id}``; or ``{name, project, version}`` for one exact version; or a query
    (``name``/``project``/``tags``/``published``) resolved to the newest match at apply time.
    ``name`` is a literal model name, not a pattern.
    """

    id: str | None = None
    name: str | None = None
    project: str | None = None
    version: int | None = Field(default=None, ge=1)
    tags: list[str] = Field(default_factory=list)
    published: bool | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ModelSelector:
        if self.id is not None:
            if any((self.name, self.project, self.version, self.tags, self.published is not None)):
                raise ValueError("give either id alone, or name/project/version/tags/published")
            return self
        if self.version is not None and not self.name:
            raise ValueError("version needs a name (and usually a project)")
        if not any((self.name, self.project, self.tags, self.published is not None)):
            raise ValueError("give id, or name/project[/version], or tags/published")
        return self


class AutoScale(_Spec):
    """HorizontalPodAutoscaler bounds and targets for one predictor's Deployment."""

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    target_inflight: float | None = Field(default=None, gt=0)
    """Average in-flight requests per pod (the ``modelyard_inflight_requests`` custom metric)."""
    target_cpu_utilization: int = Field(default=80, ge=1, le=100)

    @model_validator(mode="after")
    def _bounds(self) -> AutoScale:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) must be ≥ minReplicas ({self.min_replicas})")
        return self


class Batching(_Spec):
    """Dynamic batching: becomes the endpoint options ``max_batch_size``/``max_batch_delay_ms``."""

    max_batch_size: int = Field(ge=1)
    max_delay_ms: float = Field(default=5.0, ge=0)


class Resources(_Spec):
    """Per-pod resources; ``gpu > 0`` asks for ``nvidia.com/gpu`` and the GPU image."""

    cpu: str | None = None
    memory: str | None = None
    gpu: int = Field(default=0, ge=0)

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> Any:
        # ``cpu: 1`` in YAML is an int; Kubernetes quantities are strings.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class Predictor(_Spec):
    """One model served as one endpoint version, with its scaling and resources."""

    name: str
    version: str | None = None
    """Endpoint version; default: the predictor's name (stable when predictors are reordered)."""
    model: ModelSelector
    framework: str | None = None
    """Engine for this predictor; default ``spec.framework``."""
    traffic_weight: float | None = Field(default=None, ge=0)
    replicas: int = Field(default=1, ge=0)
    auto_scale: AutoScale | None = None
    batching: Batching | None = None
    preprocess: str | None = None
    """Path to a ``.py`` file or package folder, relative to the spec file."""
    resources: Resources = Field(default_factory=Resources)
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    auxiliary: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "predictor name")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return check_name(value, "version") if value is not None else None

    @field_validator("traffic_weight")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def endpoint_version(self) -> str:
        return self.version or self.name


class Queue(_Spec):
    """Queue workers on a Redis stream, scaled by KEDA on the consumer group's lag.

    The lag (``XINFO GROUPS``, Redis ≥ 7) counts entries no worker has taken yet, so it is
    there with zero workers: the only KEDA redis-streams mode that can wake workers from
    ``minReplicas: 0`` (pending entries are only ever counted once a worker read them). A
    second trigger on the pending entries keeps the workers that hold some.
    """

    enabled: bool = True
    stream: str = "serving_stream"
    consumer_group: str = "modelyard"
    """Passed to the workers as ``--group`` and to KEDA: the two must name the same group."""
    lag_count: int = Field(default=10, ge=1)
    """Waiting entries per worker: KEDA runs ``ceil(lag / lagCount)`` workers."""
    activation_lag_count: int = Field(default=0, ge=0)
    """More waiting entries than this wake the workers from zero (0: any entry)."""
    batch_size: int = Field(default=256, ge=1, le=4096)
    """Entries one worker reads at once (``--batch-size``); KEDA keeps one worker per this
    many pending (taken, unacknowledged) entries."""
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> Queue:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) must be ≥ minReplicas ({self.min_replicas})")
        return self


DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class GatewayRef(_Spec):
    """The Gateway API ``Gateway`` that the spec's ``HTTPRoute`` attaches to (``k8s render``).

    On Kubernetes the traffic split between predictors is the Gateway's job (each predictor
    is its own Deployment and Service); this names the Gateway, which the cluster provides
    (Envoy Gateway, Istio, Cilium, NGINX Gateway Fabric...). Default: the Gateway
    ``modelyard`` in the route's own namespace.
    """

    name: str = "modelyard"
    namespace: str | None = None
    """Default: the namespace the manifests are rendered for. Another namespace must allow
    routes from this one (the Gateway listener's ``allowedRoutes``)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 253 or not DNS_SUBDOMAIN_RE.match(value):
            raise ValueError(
                f"{value!r} is not a Kubernetes object name (lowercase letters, digits, '-', '.')"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not DNS_LABEL_RE.match(value)):
            raise ValueError(f"{value!r} is not a Kubernetes namespace (lowercase letters, digits, '-')")
        return value


class Metadata(_Spec):
    name: str
    service: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "metadata.name")

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return check_name(value, "metadata.service")


class Spec(_Spec):
    framework: str
    predictors: list[Predictor] = Field(min_length=1)
    canary_endpoint: str | None = None
    """Where the weighted split is served; default ``metadata.name``."""
    image: str | None = None
    queue: Queue = Field(default_factory=Queue)
    gateway: GatewayRef = Field(default_factory=GatewayRef)
    """Where ``k8s render``'s HTTPRoute attaches; ignored by ``apply``."""

    @model_validator(mode="after")
    def _unique(self) -> Spec:
        for attr, what in (("name", "predictor name"), ("endpoint_version", "endpoint version")):
            seen: set[str] = set()
            for predictor in self.predictors:
                value = getattr(predictor, attr)
                if value in seen:
                    raise ValueError(f"{what} {value!r} is used by more than one predictor")
                seen.add(value)
        weights = [p.traffic_weight for p in self.predictors if p.traffic_weight is not None]
        if weights and sum(weights) <= 0:
            raise ValueError("trafficWeight values add up to 0: at least one must be > 0")
        return self


class InferenceSpec(_Spec):
    """One ``Inference`` document, plus where it came from (for messages and relative paths)."""

    api_version: Literal["modelyard.io/v1"]
    kind: Literal["Inference"]
    metadata: Metadata
    spec: Spec
    _source: str = PrivateAttr(default="<string>")
    _base_dir: Path = PrivateAttr(default=Path("."))
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The file name messages cite."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """The folder relative ``preprocess`` paths start from."""
        return self._base_dir

    def line_of(self, *loc: str | int) -> str:
        """``file:line`` of the deepest known node on ``loc`` (for apply-time errors)."""
        return f"{self._source}:{_line_for(self._lines, loc)}"


# -- YAML with positions ---------------------------------------------------------------------


def _index_nodes(node: yaml.Node, path: Loc, lines: dict[Loc, int], problems: list[str], src: str) -> None:
    """Record the line of every key (for mappings) and item (for sequences) under ``path``."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = _dotted((*path, key))
                problems.append(f"{src}:{line}: {dotted}: duplicate key (first at line {seen[key]})")
            seen[key] = line
            lines[(*path, key)] = line
            _index_nodes(value_node, (*path, key), lines, problems, src)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _index_nodes(item, (*path, index), lines, problems, src)


def _line_for(lines: dict[Loc, int], loc: Sequence[str | int]) -> int:
    for cut in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:cut]))
        if line is not None:
            return line
    return 1


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _message(error: Any) -> str:
    """A short human message for one pydantic error (``must be ≥ 0`` rather than pydantic's prose)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    simple = {
        "greater_than_equal": "must be ≥ {ge}",
        "greater_than": "must be > {gt}",
        "less_than_equal": "must be ≤ {le}",
        "less_than": "must be < {lt}",
        "missing": "is required",
        "extra_forbidden": "unknown field",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "string_type": "must be a string",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "too_short": "must have at least {min_length} item(s)",
        "literal_error": "must be {expected}",
    }
    if kind in simple:
        shown = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
        try:
            return simple[kind].format(**shown)
        except (KeyError, IndexError):
            return str(error["msg"])
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _validation_problems(exc: ValidationError, lines: dict[Loc, int], src: str, prefix: Loc) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = (*prefix, *error["loc"])
        problems.append(f"{src}:{_line_for(lines, loc)}: {_dotted(loc)}: {_message(error)}")
    return problems


def parse_text(text: str, source: str = "<string>", base_dir: Path | None = None) -> list[InferenceSpec]:
    """Every ``Inference`` document in ``text`` (``---``-separated), validated.

    Raises :class:`SpecError` listing every problem found, each with its line.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError([f"{source}:{line}: YAML syntax error: {exc.problem or exc}"]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise SpecError([f"{source}:1: no Inference document in the file"])
    specs: list[InferenceSpec] = []
    problems: list[str] = []
    names: dict[tuple[str, str], int] = {}
    for node in nodes:
        lines: dict[Loc, int] = {}
        doc_problems: list[str] = []
        _index_nodes(node, (), lines, doc_problems, source)
        problems.extend(doc_problems)
        data = yaml.SafeLoader(text).construct_document(node)
        if not isinstance(data, dict):
            problems.append(f"{source}:{lines[()]}: document must be a mapping (apiVersion, kind, ...)")
            continue
        try:
            spec = InferenceSpec.model_validate(data)
        except ValidationError as exc:
            problems.extend(_validation_problems(exc, lines, source, ()))
            continue
        spec._source, spec._base_dir, spec._lines = source, base_dir or Path("."), lines
        key = (spec.metadata.service, spec.metadata.name)
        if key in names:
            problems.append(
                f"{source}:{lines.get(('metadata', 'name'), 1)}: metadata.name: {key[1]!r} in service "
                f"{key[0]!r} is already defined at line {names[key]}"
            )
        names[key] = lines.get(("metadata", "name"), 1)
        if not doc_problems:
            specs.append(spec)
    if problems:
        raise SpecError(problems)
    return specs


def parse_file(path: str | Path) -> list[InferenceSpec]:
    """Parse a spec file; relative ``preprocess`` paths resolve against its folder."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise BadRequest(f"cannot read spec file {str(file)!r}: {exc.strerror or exc}") from None
    return parse_text(text, source=str(path), base_dir=file.resolve().parent)
