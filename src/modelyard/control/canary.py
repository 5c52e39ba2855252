"""Canary / A-B routing endpoints of a service (the control plane's side).

A canary is a routing name (``iris_canary``) whose requests replicas split over endpoint
versions by weight (:class:`modelyard.config.CanaryConfig`, the wire contract). Here they are
stored, validated against the service's current endpoints and delivered in
:attr:`ServiceConfig.canaries`; every write bumps the service's revision in its transaction.

Refused with a 4xx and nothing stored: a target, prefix or shadow that names nothing in the
service (at add time; a target removed later only shifts its share, and the listing and the
replicas' ``/status`` say so), a routing name already used by an unversioned endpoint or an
auto-deploy rule (sharing the name of *versioned* endpoints is allowed: the canary answers
``/serve/<name>``, each version still answers ``/serve/<name>/<version>``), and a canary
whose targets lead back to itself through other canaries. The weights, target count and
sticky key are checked by the config model itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.config import CanaryConfig, split_endpoint_key
from modelyard.control.revisions import check_expected_revision
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.store import Database, EndpointRow, ServiceRow, utcnow
from modelyard.store.tables import AutoDeployRow, CanaryRow

MAX_CHAIN = 16
"""Canaries may route to other canaries; chains deeper than this are refused."""


class CanaryInfo(BaseModel):
    """A canary as the API lists it: its configuration and what it points at now."""

    model_config = ConfigDict(frozen=True)

    canary: CanaryConfig
    missing: list[str]
    """Targets (or shadows) that name no endpoint of the service now; their share goes to the rest."""
    resolved: list[str]
    """The targets the weights apply to now (prefix mode: the newest versions, newest first)."""


def service_row(session: Session, name: str, *, lock: bool = False) -> ServiceRow:
    query = select(ServiceRow).where(ServiceRow.name == name)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"service {name!r} not found")
    return row


def canaries_of(session: Session, service_id: int) -> list[CanaryConfig]:
    rows = session.scalars(
        select(CanaryRow).where(CanaryRow.service_id == service_id).order_by(CanaryRow.endpoint)
    )
    return [CanaryConfig.model_validate(r.config) for r in rows]


def numeric_versions(versions: Iterable[str]) -> list[str]:
    """Numeric versions, newest (highest) first: what prefix mode splits over."""
    numeric = []
    for version in versions:
        try:
            numeric.append((float(version), version))
        except ValueError:
            continue
    return [v for _, v in sorted(numeric, reverse=True)]


class _Index:
    """The service's endpoint keys and names, read once per call."""

    def __init__(self, session: Session, service_id: int) -> None:
        pairs = session.execute(
            select(EndpointRow.endpoint, EndpointRow.version).where(EndpointRow.service_id == service_id)
        ).all()
        self.keys = {f"{e}/{v}" if v else e for e, v in pairs}
        self.versions: dict[str, list[str]] = {}
        for endpoint, version in pairs:
            self.versions.setdefault(endpoint, []).append(version)
        self.auto = set(
            session.scalars(select(AutoDeployRow.endpoint).where(AutoDeployRow.service_id == service_id))
        )

    def has_target(self, target: str) -> bool:
        endpoint, version = split_endpoint_key(target)
        return target in self.keys if version else endpoint in self.versions

    def resolved(self, canary: CanaryConfig) -> list[str]:
        if canary.prefix is None:
            return list(canary.targets)
        newest = numeric_versions(self.versions.get(canary.prefix, []))
        return [f"{canary.prefix}/{v}" for v in newest[: len(canary.weights)]]


def _info(canary: CanaryConfig, index: _Index, names: set[str]) -> CanaryInfo:
    missing = [t for t in canary.targets if t not in names and not index.has_target(t)]
    missing += [s for s in canary.shadow if s not in index.keys]
    resolved = [t for t in index.resolved(canary) if t not in missing]
    if canary.prefix is not None and not resolved:
        missing.append(f"{canary.prefix}/*")
    return CanaryInfo(canary=canary, missing=missing, resolved=resolved)


def find_loop(name: str, graph: dict[str, list[str]]) -> list[str] | None:
    """A path of canary names from ``name`` back to itself, if its targets lead there."""
    stack: list[tuple[str, list[str]]] = [(name, [name])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for target in graph.get(node, []):
            if target == name:
                return [*path, name]
            if target in graph and target not in seen:
                if len(path) > MAX_CHAIN:
                    return [*path, target]
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


class Canaries:
    """Canary routing endpoints over the control plane's database."""

    def __init__(self, db: Database, on_change: Callable[[str], None] = lambda _service: None) -> None:
        self.db = db
        self.on_change = on_change

    def list_canaries(self, service: str) -> list[CanaryInfo]:
        with self.db.read() as session:
            svc = service_row(session, service)
            canaries = canaries_of(session, svc.id)
            index = _Index(session, svc.id)
        names = {c.endpoint for c in canaries}
        return [_info(c, index, names) for c in canaries]

    def get(self, service: str, name: str) -> CanaryInfo:
        for info in self.list_canaries(service):
            if info.canary.endpoint == name:
                return info
        raise NotFound(f"canary {name!r} not found in service {service!r}")

    def add(
        self, service: str, canary: CanaryConfig, *, expected_revision: int | None = None
    ) -> tuple[CanaryInfo, bool]:
        """Create or replace the canary ``canary.endpoint``; returns it and whether it was new."""
        try:
            with self.db.write() as session:
                svc = service_row(session, service, lock=True)
                check_expected_revision(service, svc.revision, expected_revision)
                rows = {r.endpoint: r for r in session.scalars(
                    select(CanaryRow).where(CanaryRow.service_id == svc.id)
                )}  # fmt: skip
                index = _Index(session, svc.id)
                graph = {n: list(CanaryConfig.model_validate(r.config).targets) for n, r in rows.items()}
                graph[canary.endpoint] = list(canary.targets)
                self._check(service, canary, index, graph)
                row = rows.get(canary.endpoint)
                created = row is None
                now = utcnow()
                if row is None:
                    row = CanaryRow(service_id=svc.id, endpoint=canary.endpoint, created_at=now)
                    session.add(row)
                row.config = canary.model_dump(mode="json")
                row.updated_at = now
                svc.revision += 1
                info = _info(canary, index, set(graph))
        except IntegrityError:
            raise Conflict(f"canary {canary.endpoint!r} changed concurrently; try again") from None
        self.on_change(service)
        return info, created

    @staticmethod
    def _check(service: str, canary: CanaryConfig, index: _Index, graph: dict[str, list[str]]) -> None:
        name = canary.endpoint
        if "" in index.versions.get(name, []):
            # A canary may share its name with versioned endpoints (``/serve/iris`` splits,
            # ``/serve/iris/a`` stays direct), never with an unversioned one: both would answer
            # ``/serve/<name>``.
            raise Conflict(
                f"{name!r} is already an unversioned endpoint of service {service!r}; pick another name"
            )
        if name in index.auto:
            raise Conflict(f"{name!r} is an auto-deploy endpoint of service {service!r}; pick another name")
        for target in canary.targets:
            if target not in graph and not index.has_target(target):
                raise NotFound(
                    f"canary {name!r}: target {target!r} is not an endpoint (or canary) of service "
                    f"{service!r}; add it first"
                )
        prefix = canary.prefix
        known = prefix in index.auto or numeric_versions(index.versions.get(prefix or "", []))
        if prefix is not None and not known:
            raise NotFound(
                f"canary {name!r}: no numbered version of {prefix!r} in service {service!r} "
                f"(and no auto-deploy rule for it); add {prefix}/1 first"
            )
        for shadow in canary.shadow:
            if shadow not in index.keys:
                raise NotFound(
                    f"canary {name!r}: shadow {shadow!r} is not an endpoint version of {service!r}"
                )
        loop = find_loop(name, graph)
        if loop is not None:
            raise BadRequest(f"canary {name!r} would loop into itself: {' -> '.join(loop)}")

    def remove(self, service: str, name: str, *, expected_revision: int | None = None) -> None:
        with self.db.write() as session:
            svc = service_row(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            row = session.scalar(
                select(CanaryRow).where(CanaryRow.service_id == svc.id, CanaryRow.endpoint == name)
            )
            if row is None:
                raise NotFound(f"canary {name!r} not found in service {service!r}")
            users = [
                n for n, targets in ((c.endpoint, c.targets) for c in canaries_of(session, svc.id))
                if name in targets
            ]  # fmt: skip
            if users:
                raise Conflict(f"canary {name!r} is a target of canary {users[0]!r}; change that one first")
            session.delete(row)
            svc.revision += 1
        self.on_change(service)
