"""Automatic deployment: registry models matching a rule become ``<endpoint>/<n>`` of a service.

A rule (``modelyard auto-deploy add --endpoint iris_auto --name "iris.*" --project demo
--published --max-versions 2``) owns the endpoint name: the newest ``max_versions`` matching
models are served as ``iris_auto/<n>``, ``n`` counting up and never reused, older ones are
removed. It is event-driven: the registry calls :meth:`AutoDeploy.on_model_changed` inside
the transaction that creates, publishes or re-tags a model, so the endpoint change and the
revision bump commit with the model change and replicas learn of it from their long-poll.

The rule's preprocess code, engine and options are copied into each endpoint version when it
is deployed: changing the rule later applies to new versions only, unless the update asks for
``apply_to_existing``, so an A/B comparison never mixes feature code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.config import ArtifactRef, TensorSpec, check_name
from modelyard.control.canary import service_row
from modelyard.control.revisions import check_expected_revision
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.registry.schemas import ModelFilter
from modelyard.registry.service import select_models
from modelyard.store import Database, EndpointRow, ModelRow, ServiceRow, utcnow
from modelyard.store.tables import AutoDeployRow, CanaryRow

_COPIED = ("engine", "preprocess", "options", "auxiliary", "inputs", "outputs")
"""What a deployed endpoint version takes from its rule (and ``apply_to_existing`` rewrites)."""


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"model name filter {value!r} is not a valid regular expression: {exc}") from None
    return value


def _check_max(value: int) -> int:
    if value < 1:
        raise ValueError(f"max_versions must be at least 1, got {value}")
    return value


class AutoDeploySpec(BaseModel):
    """``POST /api/services/{s}/auto-deploy``: one rule, whole."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    engine: str
    name: str
    """Regular expression matching the whole model name."""
    project: str | None = None
    tags: list[str] = Field(default_factory=list)
    published: bool = False
    """Only published models (otherwise every matching model)."""
    max_versions: int = 1
    preprocess: ArtifactRef | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    auxiliary: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorSpec] = Field(default_factory=list)
    """Declared inputs of each deployed version (``--input-name/-type/-size``)."""
    outputs: list[TensorSpec] = Field(default_factory=list)

    _endpoint = field_validator("endpoint")(lambda v: check_name(v, "endpoint"))
    _name = field_validator("name")(_check_regex)
    _max = field_validator("max_versions")(_check_max)

    def model_filter(self) -> ModelFilter:
        return ModelFilter(
            name=self.name, project=self.project, tags=self.tags, published=True if self.published else None
        )

    def covers(self, model: ModelRow) -> bool:
        """Whether ``model`` could match (name and project; tags and published may change)."""
        if self.project is not None and model.project != self.project:
            return False
        return re.fullmatch(self.name, model.name) is not None


_CLEARED: dict[str, Any] = {"options": {}, "auxiliary": {}, "tags": [], "inputs": [], "outputs": []}
"""What a null in a PATCH sets these fields to."""


class AutoDeployPatch(BaseModel):
    """``PATCH .../auto-deploy/{endpoint}``: the fields present replace the rule's."""

    model_config = ConfigDict(extra="forbid")

    engine: str | None = None
    name: str | None = None
    project: str | None = None
    tags: list[str] | None = None
    published: bool | None = None
    max_versions: int | None = None
    preprocess: ArtifactRef | None = None
    options: dict[str, Any] | None = None
    auxiliary: dict[str, Any] | None = None
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    apply_to_existing: bool = False
    """Also rewrite engine, preprocess, options, auxiliary, inputs and outputs of the versions
    already deployed."""

    _name = field_validator("name")(lambda v: None if v is None else _check_regex(v))
    _max = field_validator("max_versions")(lambda v: None if v is None else _check_max(v))


class Deployed(BaseModel):
    key: str
    model_id: str | None
    preprocess: ArtifactRef | None


class AutoDeployRule(AutoDeploySpec):
    """A rule as the API lists it, with the endpoint versions it deployed (oldest first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    next_version: int
    deployed: list[Deployed]
    created_at: datetime
    updated_at: datetime


def _version_number(version: str) -> int:
    return int(version) if version.isdigit() else 0


class AutoDeploy:
    """Auto-deploy rules over the control plane's database, and the registry hook."""

    def __init__(
        self,
        db: Database,
        *,
        on_change: Callable[[str], None] = lambda _service: None,
        check_engine: Callable[[str], None] = lambda _engine: None,
        check_preprocess: Callable[[ArtifactRef | None], dict[str, object] | None] = lambda ref: (
            None if ref is None else ref.model_dump(mode="json")
        ),
    ) -> None:
        self.db = db
        self.on_change = on_change
        self.check_engine = check_engine
        self.check_preprocess = check_preprocess

    # -- reading -----------------------------------------------------------------------------
    def list_rules(self, service: str) -> list[AutoDeployRule]:
        with self.db.read() as session:
            svc = service_row(session, service)
            rows = session.scalars(
                select(AutoDeployRow)
                .where(AutoDeployRow.service_id == svc.id)
                .order_by(AutoDeployRow.endpoint)
            )
            return [self._out(session, svc, r) for r in rows]

    def get(self, service: str, endpoint: str) -> AutoDeployRule:
        with self.db.read() as session:
            svc = service_row(session, service)
            return self._out(session, svc, self._rule(session, svc, endpoint))

    def _out(self, session: Session, svc: ServiceRow, row: AutoDeployRow) -> AutoDeployRule:
        deployed = [
            Deployed(
                key=f"{e.endpoint}/{e.version}",
                model_id=e.model_id,
                preprocess=ArtifactRef.model_validate(e.preprocess) if e.preprocess else None,
            )
            for e in self._endpoints(session, svc, row.endpoint)
        ]
        return AutoDeployRule(
            **row.spec,
            next_version=row.next_version,
            deployed=deployed,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    @staticmethod
    def _rule(session: Session, svc: ServiceRow, endpoint: str) -> AutoDeployRow:
        row = session.scalar(
            select(AutoDeployRow).where(
                AutoDeployRow.service_id == svc.id, AutoDeployRow.endpoint == endpoint
            )
        )
        if row is None:
            raise NotFound(f"auto-deploy rule {endpoint!r} not found in service {svc.name!r}")
        return row

    @staticmethod
    def _endpoints(session: Session, svc: ServiceRow, endpoint: str) -> list[EndpointRow]:
        rows = session.scalars(
            select(EndpointRow).where(EndpointRow.service_id == svc.id, EndpointRow.endpoint == endpoint)
        )
        return sorted(rows, key=lambda r: _version_number(r.version))

    # -- writing -----------------------------------------------------------------------------
    def _spec(self, spec: AutoDeploySpec) -> dict[str, Any]:
        self.check_engine(spec.engine)
        raw = spec.model_dump(mode="json")
        raw["preprocess"] = self.check_preprocess(spec.preprocess)
        return raw

    def add(
        self, service: str, spec: AutoDeploySpec, *, expected_revision: int | None = None
    ) -> tuple[AutoDeployRule, bool]:
        """Create or replace the rule for ``spec.endpoint`` and deploy what matches now."""
        raw = self._spec(spec)
        with self._write(spec.endpoint) as session:
            svc = service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            canary = session.scalar(
                select(CanaryRow.id).where(
                    CanaryRow.service_id == svc.id, CanaryRow.endpoint == spec.endpoint
                )
            )
            if canary is not None:
                raise Conflict(f"{spec.endpoint!r} is a canary of service {service!r}; pick another name")
            row = session.scalar(
                select(AutoDeployRow).where(
                    AutoDeployRow.service_id == svc.id, AutoDeployRow.endpoint == spec.endpoint
                )
            )
            created = row is None
            now = utcnow()
            if row is None:
                if self._endpoints(session, svc, spec.endpoint):
                    raise Conflict(
                        f"endpoint {spec.endpoint!r} of service {service!r} already has versions; an "
                        "auto-deploy rule owns its endpoint name: pick another name"
                    )
                row = AutoDeployRow(service_id=svc.id, endpoint=spec.endpoint, next_version=1, created_at=now)
                session.add(row)
            row.spec = raw
            row.updated_at = now
            self.reconcile(session, svc, row)
            svc.revision += 1
            session.flush()
            out = self._out(session, svc, row)
        self.on_change(service)
        return out, created

    def update(
        self, service: str, endpoint: str, patch: AutoDeployPatch, *, expected_revision: int | None = None
    ) -> AutoDeployRule:
        given = patch.model_fields_set - {"apply_to_existing"}
        with self._write(endpoint) as session:
            svc = service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            row = self._rule(session, svc, endpoint)
            # null clears a list or mapping (as an endpoint PATCH does); other fields cannot be null
            changes = {k: _CLEARED.get(k) if getattr(patch, k) is None else getattr(patch, k) for k in given}
            try:
                spec = AutoDeploySpec.model_validate({**row.spec, **changes})
            except ValidationError as exc:
                fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
                raise BadRequest(f"auto-deploy rule {endpoint!r}: {fields} cannot be null") from None
            row.spec = self._spec(spec) if given & {"engine", "preprocess"} else spec.model_dump(mode="json")
            row.updated_at = utcnow()
            if patch.apply_to_existing:
                for ep in self._endpoints(session, svc, endpoint):
                    for field in _COPIED:
                        setattr(ep, field, row.spec.get(field))
                    ep.updated_at = row.updated_at
            self.reconcile(session, svc, row)
            svc.revision += 1
            session.flush()
            out = self._out(session, svc, row)
        self.on_change(service)
        return out

    def remove(
        self,
        service: str,
        endpoint: str,
        *,
        keep_endpoints: bool = False,
        expected_revision: int | None = None,
    ) -> None:
        """Delete the rule and (unless ``keep_endpoints``) the endpoint versions it deployed."""
        with self._write(endpoint) as session:
            svc = service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            session.delete(self._rule(session, svc, endpoint))
            if not keep_endpoints:
                for ep in self._endpoints(session, svc, endpoint):
                    session.delete(ep)
            svc.revision += 1
        self.on_change(service)

    @contextmanager
    def _write(self, endpoint: str) -> Iterator[Session]:
        """A write transaction whose constraint violations become a :class:`Conflict`."""
        try:
            with self.db.write() as session:
                yield session
        except IntegrityError:
            raise Conflict(f"auto-deploy rule {endpoint!r} changed concurrently; try again") from None

    # -- deploying ---------------------------------------------------------------------------
    def reconcile(self, session: Session, svc: ServiceRow, row: AutoDeployRow) -> bool:
        """Make the rule's endpoint versions the newest ``max_versions`` matching models.

        New models get the next numbers (oldest first); versions whose model no longer
        matches or fell out of the newest N are removed. Returns whether anything changed.
        """
        spec = AutoDeploySpec.model_validate(row.spec)
        wanted = select_models(session, spec.model_filter())[: spec.max_versions]
        wanted_ids = {m.id for m in wanted}
        existing = self._endpoints(session, svc, row.endpoint)
        changed = False
        kept: set[str] = set()
        for ep in existing:
            if ep.model_id in wanted_ids and ep.model_id not in kept:
                kept.add(ep.model_id)
            else:
                session.delete(ep)
                changed = True
        number = max([row.next_version, *(_version_number(e.version) + 1 for e in existing)])
        now = utcnow()
        for model in reversed(wanted):
            if model.id in kept:
                continue
            session.add(
                EndpointRow(
                    service_id=svc.id,
                    endpoint=row.endpoint,
                    version=str(number),
                    engine=spec.engine,
                    model_id=model.id,
                    preprocess=row.spec.get("preprocess"),
                    inputs=list(row.spec.get("inputs") or []),
                    outputs=list(row.spec.get("outputs") or []),
                    options=dict(spec.options),
                    auxiliary=dict(spec.auxiliary),
                    created_at=now,
                    updated_at=now,
                )
            )
            number += 1
            changed = True
        row.next_version = number
        session.flush()
        return changed

    def on_model_changed(self, session: Session, model: ModelRow) -> Callable[[], None] | None:
        """Registry hook: redeploy every rule that covers ``model``, in the model's transaction.

        Service rows are locked (in id order) before the rules are read, so a rule being added
        to a service that already has one is either seen here or sees this model itself.
        """
        if session.scalar(select(AutoDeployRow.id).limit(1)) is None:
            return None
        services = {
            s.id: s for s in session.scalars(select(ServiceRow).order_by(ServiceRow.id).with_for_update())
        }
        changed: dict[int, ServiceRow] = {}
        for row in session.scalars(select(AutoDeployRow).order_by(AutoDeployRow.id)):
            svc = services.get(row.service_id)
            if svc is None or not AutoDeploySpec.model_validate(row.spec).covers(model):
                continue
            if self.reconcile(session, svc, row):
                changed[svc.id] = svc
        for svc in changed.values():
            svc.revision += 1
        if not changed:
            return None
        names = sorted(s.name for s in changed.values())

        def notify() -> None:
            for name in names:
                self.on_change(name)

        return notify
