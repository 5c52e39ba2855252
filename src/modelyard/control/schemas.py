"""Wire shapes of the control plane API (services, endpoints, replicas, tokens).

The core (:class:`modelyard.control.plane.ControlPlane`) takes and returns these
immutable values, so the HTTP layer is a thin translation and the SDK can parse
answers with the same classes. Names are validated here with the same rule as
:mod:`modelyard.config`, so nothing the API accepts can be rejected later by a
replica.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from modelyard.config import NAME_RE, ArtifactRef, TensorSpec, check_name, endpoint_key
from modelyard.registry.schemas import ModelFilter

Role = Literal["reader", "replica", "admin"]
"""``reader`` reads; ``replica`` also reports status and statistics; ``admin`` changes anything."""

NAME_PATTERN = NAME_RE.pattern
"""What the OpenAPI document says names look like (services, endpoints, versions, tokens)."""
NAME_SCHEMA: dict[str, Any] = {"pattern": NAME_PATTERN}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorBody(_Out):
    """Every error answer of the control plane: the message names the problem, ``kind`` classifies it."""

    error: str
    kind: str


# -- services ---------------------------------------------------------------


class ServiceCreate(_Body):
    name: str = Field(json_schema_extra=NAME_SCHEMA)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "service")


class Service(_Out):
    name: str
    description: str
    revision: int
    created_at: datetime


# -- endpoints --------------------------------------------------------------


class ModelQuery(_Body):
    """Select the newest registry model matching all given fields (at add time)."""

    name: str | None = None
    """Regular expression matching the whole model name."""
    project: str | None = None
    tags: list[str] = Field(default_factory=list)
    published: bool | None = None

    def to_filter(self) -> ModelFilter:
        return ModelFilter(name=self.name, project=self.project, tags=self.tags, published=self.published)


class _EndpointFields(_Body):
    engine: str
    model_id: str | None = None
    model_query: ModelQuery | None = None
    preprocess: ArtifactRef | None = None
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    auxiliary: dict[str, Any] = Field(default_factory=dict)


class EndpointSpec(_EndpointFields):
    """What ``POST /api/services/{s}/endpoints`` takes: one endpoint version, whole."""

    endpoint: str = Field(json_schema_extra=NAME_SCHEMA)
    version: str = Field(default="", json_schema_extra={"pattern": f"^$|{NAME_PATTERN}"})

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_name(value, "endpoint")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_name(value, "version") if value else value

    @property
    def key(self) -> str:
        return endpoint_key(self.endpoint, self.version)


class EndpointPatch(_Body):
    """A partial :class:`EndpointSpec`: the fields present replace the stored ones.

    ``endpoint``/``version`` may be given but must equal the addressed key (an
    endpoint is renamed by adding the new one and removing the old).
    """

    endpoint: str | None = None
    version: str | None = None
    engine: str | SkipJsonSchema[None] = None
    """Absent: unchanged; it cannot be cleared (400 for null)."""
    model_id: str | None = None
    model_query: ModelQuery | None = None
    preprocess: ArtifactRef | None = None
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    options: dict[str, Any] | None = None
    auxiliary: dict[str, Any] | None = None


class Endpoint(_Out):
    """An endpoint version as stored: ``model_query`` already resolved into ``model_id``."""

    key: str
    endpoint: str
    version: str
    engine: str
    model_id: str | None
    preprocess: ArtifactRef | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    options: dict[str, Any]
    auxiliary: dict[str, Any]
    created_at: datetime
    updated_at: datetime


# -- replicas ---------------------------------------------------------------


class UserCodeErrorReport(BaseModel):
    """The last error an endpoint version's code raised on a replica (the replica cuts the
    message; the limits here only refuse what no replica sends)."""

    hook: str = Field(max_length=64)
    error: str = Field(max_length=2000)
    """The answer's message: hook, exception, and the user's file:line."""
    where: str | None = Field(default=None, max_length=2000)
    time: str = Field(max_length=64)
    """When it last happened (UTC, ISO 8601)."""
    count: int = Field(ge=0)
    """Errors of that kind (hook, exception type, line) since the version loaded."""
    total: int = Field(ge=0)
    """All user-code errors of the version since it loaded."""


class ReplicaEndpointState(BaseModel):
    key: str
    state: str
    """``loading``, ``ready``, ``failed``... as the data plane names it."""
    error: str | None = None
    engine: str | None = None
    last_user_error: UserCodeErrorReport | None = None


class ReplicaReport(_Body):
    revision: int = Field(ge=0)
    endpoints: list[ReplicaEndpointState] = Field(default_factory=list)


class ReplicaStatus(_Out):
    id: str
    revision: int
    updated_at: datetime
    endpoints: list[ReplicaEndpointState]


class ServiceStatus(_Out):
    service: str
    revision: int
    replicas: list[ReplicaStatus]


# -- tokens -----------------------------------------------------------------


class TokenCreate(_Body):
    name: str = Field(json_schema_extra=NAME_SCHEMA)
    role: Role = "reader"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "token")


class TokenCreated(_Out):
    name: str
    role: Role
    token: str


class TokenInfo(_Out):
    name: str
    role: Role
    created_at: datetime
