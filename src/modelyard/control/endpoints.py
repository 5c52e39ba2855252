"""Rows ↔ shapes for endpoints, and turning a service's rows into a ServiceConfig.

Kept apart from :mod:`modelyard.control.plane` so the conversion rules (what a
replica gets to see) are readable in one place.

Endpoint ``options`` and ``auxiliary`` values may be credentials (an ``api_key`` for a
remote engine, a database password for user code), and reads are open by default: a
caller without a valid token gets every such value replaced by :data:`REDACTED` (the keys
stay, so the shape is visible). Replicas present a token and get the real values.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.config import (
    ArtifactRef,
    EndpointConfig,
    ModelRef,
    ServiceConfig,
    TensorSpec,
    endpoint_key,
)
from modelyard.control.canary import canaries_of
from modelyard.control.monitoring import rules_of
from modelyard.control.schemas import Endpoint
from modelyard.registry import model_from_row
from modelyard.store import EndpointRow, ModelRow, ServiceRow

REDACTED = "<redacted>"
"""What an anonymous caller reads instead of each ``options``/``auxiliary`` value."""

_M = TypeVar("_M", bound=BaseModel)


def redact(value: _M) -> _M:
    """``value`` (an Endpoint, EndpointConfig, auto-deploy rule...) with its option values hidden."""
    update = {
        field: {key: REDACTED for key in getattr(value, field)}
        for field in ("options", "auxiliary")
        if getattr(value, field, None)
    }
    return value.model_copy(update=update) if update else value


def redact_config(config: ServiceConfig) -> ServiceConfig:
    """The anonymous view of a service's configuration."""
    return config.model_copy(update={"endpoints": [redact(e) for e in config.endpoints]})


def _tensors(raw: list[dict[str, Any]] | None) -> list[TensorSpec]:
    return [TensorSpec.model_validate(t) for t in raw or []]


def endpoint_from_row(row: EndpointRow) -> Endpoint:
    return Endpoint(
        key=endpoint_key(row.endpoint, row.version),
        endpoint=row.endpoint,
        version=row.version,
        engine=row.engine,
        model_id=row.model_id,
        preprocess=ArtifactRef.model_validate(row.preprocess) if row.preprocess else None,
        inputs=_tensors(row.inputs),
        outputs=_tensors(row.outputs),
        options=dict(row.options or {}),
        auxiliary=dict(row.auxiliary or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def render_service_config(session: Session, service: ServiceRow) -> ServiceConfig:
    """The replica's view of ``service``.

    The caller read ``service.revision`` before this reads the endpoints: under
    READ COMMITTED the endpoints may then be newer than the revision, never
    older, so a replica can at worst fetch the same content twice, but never
    believe it has a revision whose changes it missed.
    """
    rows = session.execute(
        select(EndpointRow, ModelRow)
        .outerjoin(ModelRow, EndpointRow.model_id == ModelRow.id)
        .where(EndpointRow.service_id == service.id)
        .order_by(EndpointRow.endpoint, EndpointRow.version)
    ).all()
    endpoints = []
    for ep, model_row in rows:
        model_ref = None
        if model_row is not None:
            model = model_from_row(model_row)
            model_ref = ModelRef(
                id=model.id,
                name=model.name,
                project=model.project,
                version=model.version,
                framework=model.framework,
                artifact=model.artifact,
                url=model.url,
            )
        endpoints.append(
            EndpointConfig(
                endpoint=ep.endpoint,
                version=ep.version,
                engine=ep.engine,
                model=model_ref,
                preprocess=ArtifactRef.model_validate(ep.preprocess) if ep.preprocess else None,
                inputs=_tensors(ep.inputs),
                outputs=_tensors(ep.outputs),
                options=dict(ep.options or {}),
                auxiliary=dict(ep.auxiliary or {}),
            )
        )
    return ServiceConfig(
        service=service.name,
        revision=service.revision,
        endpoints=endpoints,
        canaries=canaries_of(session, service.id),
        metrics=rules_of(session, service.id),
    )
