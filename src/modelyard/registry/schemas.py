"""Wire shapes of the model registry (the ``/api/models`` bodies).

They live beside the registry, not in the HTTP layer, because the registry
returns them: the core hands out plain immutable values, never ORM rows tied
to a session, and the SDK can parse answers with the same classes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelyard.config import ArtifactRef


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _clean_tags(tags: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for tag in tags:
        tag = tag.strip()
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


class ModelCreate(_Body):
    """Register a model from an uploaded artifact (``artifact_sha256``) or from ``url``.

    With both, the artifact is used and ``url`` is kept as provenance only.
    """

    name: str = Field(min_length=1, max_length=256)
    project: str = Field(default="", max_length=256)
    framework: str = Field(min_length=1, max_length=64)
    artifact_sha256: str | None = None
    url: str | None = Field(default=None, max_length=8192)
    """Fetched by the control plane when no artifact is given, within ``Settings.model_url_*``."""
    filename: str | None = Field(default=None, max_length=4096)
    """The name replicas keep the file under (the extension picks a format); checked by the
    registry, which answers 400 naming the problem (``..``, ``/``, NUL, too long...)."""
    kind: Literal["file", "folder"] = "file"
    tags: list[str] = Field(default_factory=list)
    published: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    _tags = field_validator("tags")(_clean_tags)


class Model(BaseModel):
    """A registered model as the API and SDK see it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    project: str
    version: int
    framework: str
    tags: list[str]
    published: bool
    artifact: ArtifactRef | None
    url: str | None
    metadata: dict[str, Any]
    created_at: datetime


class ModelFilter(_Body):
    """``GET /api/models`` query: every given field must match."""

    name: str | None = None
    """A regular expression that must match the whole name."""
    project: str | None = None
    framework: str | None = None
    tags: list[str] = Field(default_factory=list)
    """Each of these tags must be present."""
    published: bool | None = None
    limit: int | None = Field(default=None, ge=1)


class TagsChange(_Body):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)

    _add = field_validator("add")(_clean_tags)
    _remove = field_validator("remove")(_clean_tags)
