"""The control plane's core: services, endpoints, configuration, replicas, tokens.

No HTTP here: the FastAPI layer (:mod:`modelyard.control.api`) and tests call
these methods directly. The one invariant everything else relies on: every
change to a service's endpoints bumps the service's ``revision`` by exactly one
*in the same transaction*, so a replica that has seen revision N has seen every
change up to N. Writes to one service lock its row first (``FOR UPDATE`` on
PostgreSQL, the database write lock on SQLite), which serialises concurrent
writers of the same service across processes.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.artifacts import ArtifactStore
from modelyard.config import ArtifactRef, ServiceConfig, check_name, split_endpoint_key
from modelyard.control.endpoints import endpoint_from_row, render_service_config
from modelyard.control.monitoring import DEFAULT_MAX_REPLICAS
from modelyard.control.replicas import REPLICA_FRESH_S, ReplicaReports
from modelyard.control.revisions import check_expected_revision
from modelyard.control.schemas import (
    Endpoint,
    EndpointPatch,
    EndpointSpec,
    ModelQuery,
    ReplicaReport,
    Role,
    Service,
    ServiceStatus,
    TokenCreated,
    TokenInfo,
)
from modelyard.control.tokens import TokenStore
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.registry import ModelRegistry
from modelyard.store import Database, EndpointRow, ModelRow, ReplicaRow, ServiceRow, utcnow
from modelyard.store.tables import CanaryRow

log = logging.getLogger(__name__)

DEFAULT_ENGINE_NAMES = frozenset(
    {"sklearn", "xgboost", "lightgbm", "custom", "custom_async", "onnx", "pytorch", "tensorflow", "triton"}
)

ChangeListener = Callable[[str], None]


def _service_out(row: ServiceRow) -> Service:
    return Service(
        name=row.name, description=row.description, revision=row.revision, created_at=row.created_at
    )


_REVISION_OF = select(ServiceRow.revision).where(ServiceRow.name == bindparam("name"))


class ControlPlane:
    """All control plane operations over one database and artifact store."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        *,
        registry: ModelRegistry | None = None,
        engine_names: Iterable[str] | None = None,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
    ) -> None:
        """``max_replicas``: ``Settings.stats_max_replicas`` (status reports kept per service)."""
        self.db = db
        self.artifacts = artifacts
        self.registry = registry or ModelRegistry(db, artifacts)
        self.engine_names = frozenset(engine_names if engine_names is not None else DEFAULT_ENGINE_NAMES)
        self.tokens = TokenStore(db)
        self.replicas = ReplicaReports(db, self._service_row, max_replicas=max_replicas)
        self._listeners: list[ChangeListener] = []

    # -- change notification ------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(service_name)`` after each committed revision bump in this process.

        Only a shortcut for waking long-polls early: other processes learn of
        changes by reading the revision from the database.
        """
        self._listeners.append(listener)

    def _changed(self, service: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(service)
            except Exception:
                log.exception("change listener failed for service %r", service)

    # -- services -------------------------------------------------------------

    def _service_row(self, session: Session, name: str, *, lock: bool = False) -> ServiceRow:
        query = select(ServiceRow).where(ServiceRow.name == name)
        if lock:
            query = query.with_for_update()
        row = session.scalar(query)
        if row is None:
            raise NotFound(f"service {name!r} not found")
        return row

    def create_service(self, name: str, description: str = "") -> Service:
        try:
            check_name(name, "service")
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        try:
            with self.db.write() as session:
                if session.scalar(select(ServiceRow.id).where(ServiceRow.name == name)) is not None:
                    raise Conflict(f"service {name!r} already exists")
                row = ServiceRow(name=name, description=description, revision=1, created_at=utcnow())
                session.add(row)
                session.flush()
                out = _service_out(row)
        except IntegrityError:
            raise Conflict(f"service {name!r} already exists") from None
        self._changed(name)
        return out

    def ensure_service(self, name: str, description: str = "") -> Service:
        """The service ``name``, created when missing (safe when several processes race)."""
        try:
            return self.get_service(name)
        except NotFound:
            pass
        try:
            return self.create_service(name, description)
        except Conflict:
            return self.get_service(name)

    def list_services(self) -> list[Service]:
        with self.db.read() as session:
            return [_service_out(r) for r in session.scalars(select(ServiceRow).order_by(ServiceRow.name))]

    def get_service(self, name: str) -> Service:
        with self.db.read() as session:
            return _service_out(self._service_row(session, name))

    def delete_service(self, name: str, *, expected_revision: int | None = None) -> None:
        """Delete the service with its endpoints and replica reports."""
        with self.db.write() as session:
            row = self._service_row(session, name, lock=True)
            check_expected_revision(name, row.revision, expected_revision)
            session.execute(delete(EndpointRow).where(EndpointRow.service_id == row.id))
            session.execute(delete(ReplicaRow).where(ReplicaRow.service == name))
            session.delete(row)
        self._changed(name)

    def current_revision(self, name: str) -> int:
        """The service's revision: one indexed lookup, cheap enough to poll every 50 ms.

        A Core query on a pooled connection with a statement built once: the long-poll
        runs it twenty times a second per watched service, so ORM sessions and statement
        compilation would be most of an idle server's CPU.
        """
        with self.db.engine.connect() as connection:
            revision = connection.execute(_REVISION_OF, {"name": name}).scalar()
        if revision is None:
            raise NotFound(f"service {name!r} not found")
        return int(revision)

    def render_config(self, service: str) -> ServiceConfig:
        """Everything a replica of ``service`` needs, at the current revision."""
        with self.db.read() as session:
            return render_service_config(session, self._service_row(session, service))

    # -- endpoints --------------------------------------------------------------

    def _check_engine(self, engine: str) -> None:
        if engine not in self.engine_names:
            known = ", ".join(sorted(self.engine_names))
            close = difflib.get_close_matches(engine.lower(), sorted(self.engine_names), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadRequest(f"unknown engine {engine!r}{hint}; known engines: {known}")

    def _resolve_model(self, session: Session, model_id: str | None, query: ModelQuery | None) -> str | None:
        if model_id is not None and query is not None:
            raise BadRequest("give either model_id or model_query, not both")
        if query is not None:
            return self.registry.newest(query.to_filter()).id
        if model_id is not None and session.get(ModelRow, model_id) is None:
            raise NotFound(f"model {model_id} not found")
        return model_id

    def _check_preprocess(self, ref: ArtifactRef | None) -> dict[str, object] | None:
        if ref is None:
            return None
        if not self.artifacts.exists(ref.sha256):
            raise NotFound(f"preprocess artifact {ref.sha256} ({ref.filename}) not found")
        self.artifacts.check_code(ref)  # file name (400); archive members and limits (400/413)
        ref = ref.model_copy(update={"size": self.artifacts.size(ref.sha256)})
        return ref.model_dump(mode="json")

    def _find(self, session: Session, service_id: int, endpoint: str, version: str) -> EndpointRow | None:
        return session.scalar(
            select(EndpointRow).where(
                EndpointRow.service_id == service_id,
                EndpointRow.endpoint == endpoint,
                EndpointRow.version == version,
            )
        )

    def _get(self, session: Session, service: ServiceRow, key: str) -> EndpointRow:
        endpoint, version = split_endpoint_key(key)
        row = self._find(session, service.id, endpoint, version)
        if row is None:
            raise NotFound(f"endpoint {key!r} not found in service {service.name!r}")
        return row

    @staticmethod
    def _refuse_canary_name(session: Session, service: ServiceRow, endpoint: str) -> None:
        """An unversioned endpoint and a canary of the same name would both answer ``/serve/<name>``."""
        taken = session.scalar(
            select(CanaryRow.id).where(CanaryRow.service_id == service.id, CanaryRow.endpoint == endpoint)
        )
        if taken is not None:
            raise Conflict(
                f"{endpoint!r} is a canary of service {service.name!r}: an unversioned endpoint of that "
                "name would shadow it; give the endpoint a version or pick another name"
            )

    @contextmanager
    def _endpoint_write(self, service: str, key: str) -> Iterator[Session]:
        """A write transaction whose constraint violations become a :class:`Conflict`.

        The service row lock serialises writers of one service, but a model can
        still be removed concurrently (its foreign key then fails here).
        """
        try:
            with self.db.write() as session:
                yield session
        except IntegrityError:
            raise Conflict(
                f"endpoint {key!r} in service {service!r} changed concurrently "
                "(or its model was just removed); try again"
            ) from None

    def add_endpoint(
        self, service: str, spec: EndpointSpec, *, expected_revision: int | None = None
    ) -> tuple[Endpoint, bool]:
        """Create or replace one endpoint version; returns it and whether it was new.

        ``expected_revision`` (``If-Match``): refuse with :class:`RevisionConflict` unless the
        service is still at that revision; the same holds for every service-scoped write.
        """
        self._check_engine(spec.engine)
        preprocess = self._check_preprocess(spec.preprocess)
        with self._endpoint_write(service, spec.key) as session:
            svc = self._service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            model_id = self._resolve_model(session, spec.model_id, spec.model_query)
            if not spec.version:
                self._refuse_canary_name(session, svc, spec.endpoint)
            now = utcnow()
            row = self._find(session, svc.id, spec.endpoint, spec.version)
            created = row is None
            if row is None:
                row = EndpointRow(
                    service_id=svc.id, endpoint=spec.endpoint, version=spec.version, created_at=now
                )
                session.add(row)
            row.engine = spec.engine
            row.model_id = model_id
            row.preprocess = preprocess
            row.inputs = [t.model_dump(mode="json") for t in spec.inputs]
            row.outputs = [t.model_dump(mode="json") for t in spec.outputs]
            row.options = dict(spec.options)
            row.auxiliary = dict(spec.auxiliary)
            row.updated_at = now
            svc.revision += 1
            session.flush()
            out = endpoint_from_row(row)
        self._changed(service)
        return out, created

    def update_endpoint(
        self, service: str, key: str, patch: EndpointPatch, *, expected_revision: int | None = None
    ) -> Endpoint:
        """Replace the fields present in ``patch``; the rest stay as they are."""
        given = patch.model_fields_set
        endpoint, version = split_endpoint_key(key)
        if patch.endpoint is not None and patch.endpoint != endpoint:
            raise BadRequest(f"cannot rename endpoint {key!r} by PATCH; add the new one, remove the old")
        if patch.version is not None and patch.version != version:
            raise BadRequest(f"cannot change the version of endpoint {key!r} by PATCH")
        if "engine" in given:
            if patch.engine is None:
                raise BadRequest(f"endpoint {key!r}: engine cannot be empty")
            self._check_engine(patch.engine)
        preprocess = self._check_preprocess(patch.preprocess) if "preprocess" in given else None
        with self._endpoint_write(service, key) as session:
            svc = self._service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            row = self._get(session, svc, key)
            if "model_query" in given and patch.model_query is not None:
                row.model_id = self._resolve_model(session, None, patch.model_query)
            elif "model_id" in given:
                row.model_id = self._resolve_model(session, patch.model_id, None)
            if "engine" in given and patch.engine is not None:
                row.engine = patch.engine
            if "preprocess" in given:
                row.preprocess = preprocess
            for field in ("inputs", "outputs"):
                if field in given:
                    setattr(row, field, [t.model_dump(mode="json") for t in getattr(patch, field) or []])
            for field in ("options", "auxiliary"):
                if field in given:
                    setattr(row, field, dict(getattr(patch, field) or {}))
            row.updated_at = utcnow()
            svc.revision += 1
            session.flush()
            out = endpoint_from_row(row)
        self._changed(service)
        return out

    def list_endpoints(self, service: str) -> list[Endpoint]:
        return self.list_endpoints_at(service)[0]

    def list_endpoints_at(self, service: str) -> tuple[list[Endpoint], int]:
        """The service's endpoints and its revision, read together (see :meth:`get_endpoint_at`)."""
        with self.db.read() as session:
            svc = self._service_row(session, service)
            revision = svc.revision
            rows = session.scalars(
                select(EndpointRow)
                .where(EndpointRow.service_id == svc.id)
                .order_by(EndpointRow.endpoint, EndpointRow.version)
            )
            return [endpoint_from_row(r) for r in rows], revision

    def get_endpoint(self, service: str, key: str) -> Endpoint:
        return self.get_endpoint_at(service, key)[0]

    def get_endpoint_at(self, service: str, key: str) -> tuple[Endpoint, int]:
        """The endpoint and the service revision read with it (for ``If-Match`` on a later write).

        The revision is read first: the endpoint may be newer than it, never older, so a
        write made against it can be refused needlessly but never loses a change.
        """
        with self.db.read() as session:
            svc = self._service_row(session, service)
            revision = svc.revision
            return endpoint_from_row(self._get(session, svc, key)), revision

    def remove_endpoint(self, service: str, key: str, *, expected_revision: int | None = None) -> None:
        with self.db.write() as session:
            svc = self._service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            session.delete(self._get(session, svc, key))
            svc.revision += 1
        self._changed(service)

    # -- replicas ---------------------------------------------------------------

    def report_replica(self, service: str, replica_id: str, report: ReplicaReport) -> None:
        """Keep the latest status report of one replica (bounded: :mod:`modelyard.control.replicas`)."""
        self.replicas.report(service, replica_id, report)

    def service_status(self, service: str, *, fresh_s: float = REPLICA_FRESH_S) -> ServiceStatus:
        """The service's revision and the replicas that reported within ``fresh_s`` seconds."""
        return self.replicas.status(service, fresh_s=fresh_s)

    # -- tokens -----------------------------------------------------------------

    def create_token(self, name: str, role: Role = "reader") -> TokenCreated:
        return self.tokens.create(name, role)

    def verify_token(self, token: str) -> Role | None:
        return self.tokens.verify(token)

    def list_tokens(self) -> list[TokenInfo]:
        return self.tokens.list()

    def revoke_token(self, name: str) -> None:
        self.tokens.revoke(name)

    def ensure_admin_token(self, token_file: Path) -> str:
        return self.tokens.ensure_admin_token(token_file)
