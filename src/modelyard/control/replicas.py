"""Replicas' status reports (``PUT /api/services/<s>/replicas/<id>``) and the service status.

Split from :mod:`modelyard.control.plane`. A report is one row per (service, replica id),
bounded like the statistics rows of :mod:`modelyard.control.monitoring`: replica ids are
random per process, so a new one past ``max_replicas`` replaces the replica that reported
least recently (and rows silent for :data:`~modelyard.control.monitoring.STATS_KEEP_S` go
first); a report lists at most the service's endpoint versions plus :data:`ENDPOINTS_MARGIN`
entries (a replica can still hold a just-removed one), with error texts cut to
:data:`MAX_ERROR_CHARS`. So ``/status`` reads a bounded number of bounded rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.control.monitoring import DEFAULT_MAX_REPLICAS, MAX_REPLICA_ID, make_room
from modelyard.control.schemas import ReplicaReport, ReplicaStatus, ServiceStatus
from modelyard.errors import BadRequest, Conflict
from modelyard.store import Database, EndpointRow, ReplicaRow, ServiceRow, utcnow

REPLICA_FRESH_S = 60.0
"""Replicas that have not reported for this long are left out of the status."""
ENDPOINTS_MARGIN = 16
"""Entries a report may list beyond the service's endpoint versions (ones being removed)."""
MAX_ERROR_CHARS = 1000
"""Longest error text kept per endpoint entry: a backstop above what a replica sends itself (it
cuts a user-code message to 500 characters, then adds where it happened), so an honest
replica's text arrives whole and any other is bounded."""

ServiceLookup = Callable[[Session, str], ServiceRow]


def _cut(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_ERROR_CHARS:
        return text[: MAX_ERROR_CHARS - 3] + "..."
    return text


class ReplicaReports:
    """The latest status report of each replica of a service, bounded in rows and size."""

    def __init__(
        self, db: Database, service_row: ServiceLookup, *, max_replicas: int = DEFAULT_MAX_REPLICAS
    ) -> None:
        """``max_replicas``: ``Settings.stats_max_replicas``, as for the statistics rows."""
        self.db = db
        self._service_row = service_row
        self.max_replicas = max_replicas

    def report(self, service: str, replica_id: str, report: ReplicaReport) -> None:
        """Keep the latest status report of one replica (an upsert by (service, replica_id))."""
        if not replica_id or len(replica_id) > MAX_REPLICA_ID:
            raise BadRequest(f"a replica id has 1 to {MAX_REPLICA_ID} characters, got {len(replica_id)}")
        endpoints = [e.model_dump(mode="json", exclude_none=True) for e in report.endpoints]
        for entry in endpoints:
            entry["error"] = _cut(entry.get("error"))
            if entry["error"] is None:
                del entry["error"]
            user = entry.get("last_user_error")
            if isinstance(user, dict):
                user["error"] = _cut(user.get("error"))
                if user.get("where") is not None:
                    user["where"] = _cut(user["where"])
        for _ in range(3):
            try:
                with self.db.write() as session:
                    svc = self._service_row(session, service)
                    self._check_count(session, svc, len(endpoints))
                    row = session.scalar(
                        select(ReplicaRow).where(
                            ReplicaRow.service == service, ReplicaRow.replica_id == replica_id
                        )
                    )
                    if row is None:
                        make_room(session, ReplicaRow, service, self.max_replicas)
                        row = ReplicaRow(service=service, replica_id=replica_id)
                        session.add(row)
                    row.revision = report.revision
                    row.endpoints = endpoints
                    row.updated_at = utcnow()
                return
            except IntegrityError:
                continue  # first reports of the same replica raced; the retry updates
        raise Conflict(f"could not record the report of replica {replica_id!r}")

    @staticmethod
    def _check_count(session: Session, svc: ServiceRow, count: int) -> None:
        if count <= ENDPOINTS_MARGIN:
            return
        known = session.scalar(
            select(func.count()).select_from(EndpointRow).where(EndpointRow.service_id == svc.id)
        )
        limit = int(known or 0) + ENDPOINTS_MARGIN
        if count > limit:
            raise BadRequest(
                f"a status report lists {count} endpoint versions; service {svc.name!r} has "
                f"{known}, so at most {limit} are accepted"
            )

    def status(self, service: str, *, fresh_s: float = REPLICA_FRESH_S) -> ServiceStatus:
        """The service's revision and the replicas that reported within ``fresh_s`` seconds."""
        since = utcnow() - timedelta(seconds=fresh_s)
        with self.db.read() as session:
            svc = self._service_row(session, service)
            rows = session.scalars(
                select(ReplicaRow)
                .where(ReplicaRow.service == service, ReplicaRow.updated_at >= since)
                .order_by(ReplicaRow.replica_id)
            )
            replicas = [
                ReplicaStatus(
                    id=r.replica_id,
                    revision=r.revision,
                    updated_at=r.updated_at,
                    endpoints=list(r.endpoints or []),  # type: ignore[arg-type]
                )
                for r in rows
            ]
            return ServiceStatus(service=svc.name, revision=svc.revision, replicas=replicas)
