"""The control plane's tables (SQLAlchemy 2 typed declarative).

The schema itself is created by the Alembic migrations in
``modelyard/store/migrations`` (never ``create_all``), so a database made by an
older release upgrades in place; a test checks that these classes and the
migrations agree. JSON columns hold lists and dicts that are only ever read
whole (tags, tensor specs, options), which keeps the schema small.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelyard.store.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def new_id() -> str:
    return uuid.uuid4().hex


class ServiceRow(Base):
    """A serving service: a named set of endpoints that a group of replicas serves."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped by one in the same transaction as every change to the service's endpoints."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelRow(Base):
    """A registered model: one immutable artifact plus mutable tags and published flag."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "project", "version", name="uq_models_name_project_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(256), index=True)
    project: Mapped[str] = mapped_column(String(256), default="")
    version: Mapped[int] = mapped_column(Integer)
    framework: Mapped[str] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    published: Mapped[bool] = mapped_column(default=False)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_filename: Mapped[str | None] = mapped_column(String(512), nullable=True)
    artifact_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    artifact_kind: Mapped[str] = mapped_column(String(16), default="file")
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Where the artifact was fetched from, kept for provenance only."""
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EndpointRow(Base):
    """One endpoint version of a service; ``version`` is ``''`` for the unversioned one."""

    __tablename__ = "endpoints"
    __table_args__ = (
        UniqueConstraint("service_id", "endpoint", "version", name="uq_endpoints_service_endpoint_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128), default="")
    engine: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), nullable=True, index=True)
    preprocess: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """An :class:`modelyard.config.ArtifactRef` as JSON."""
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    auxiliary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BlobRow(Base):
    """An artifact known to the control plane (the bytes live in the artifact store)."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TokenRow(Base):
    """An API token; only its sha256 is kept, the plaintext is shown once."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReplicaRow(Base):
    """The last status report of one inference replica of a service."""

    __tablename__ = "replicas"
    __table_args__ = (UniqueConstraint("service", "replica_id", name="uq_replicas_service_replica_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(128), index=True)
    replica_id: Mapped[str] = mapped_column(String(256))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MetricRuleRow(Base):
    """Custom statistics of a service's endpoint versions: a :class:`modelyard.config.MetricRule`."""

    __tablename__ = "metric_rules"
    __table_args__ = (UniqueConstraint("service_id", "endpoint", name="uq_metric_rules_service_id_endpoint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(260))
    """``iris/1``, ``iris`` or ``iris/*``."""
    log_freq: Mapped[float] = mapped_column(Float, default=1.0)
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReplicaStatsRow(Base):
    """The last two request-statistics reports of one replica process (for the dashboard's rates)."""

    __tablename__ = "replica_stats"
    __table_args__ = (UniqueConstraint("service", "replica_id", name="uq_replica_stats_service_replica_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(128), index=True)
    replica_id: Mapped[str] = mapped_column(String(256))
    current: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CanaryRow(Base):
    """A canary / A-B routing endpoint of a service: a :class:`modelyard.config.CanaryConfig`."""

    __tablename__ = "canaries"
    __table_args__ = (UniqueConstraint("service_id", "endpoint", name="uq_canaries_service_id_endpoint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The whole CanaryConfig as JSON (weights, targets or prefix, sticky key, shadow)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AutoDeployRow(Base):
    """An auto-deploy rule: matching registry models become ``<endpoint>/<n>`` of the service."""

    __tablename__ = "auto_deploy_rules"
    __table_args__ = (
        UniqueConstraint("service_id", "endpoint", name="uq_auto_deploy_rules_service_id_endpoint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The rule as given (engine, model filter, max_versions, preprocess, options)."""
    next_version: Mapped[int] = mapped_column(Integer, default=1)
    """The number the next deployed model gets; never reused."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
