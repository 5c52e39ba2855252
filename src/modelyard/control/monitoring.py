"""The control plane's monitoring core: custom statistics rules and replicas' live request stats.

Rules (``modelyard metrics add``) are stored per service and delivered to replicas in
:attr:`ServiceConfig.metrics`; adding or removing one bumps the service's revision in the same
transaction, like every endpoint change. Within a service one statistic name has one shape
(kind and buckets) wherever it is used, because it becomes one Prometheus family.

Replicas push cumulative request statistics (:mod:`modelyard.serving.stats`); the last two
reports of each replica are kept, so :meth:`Monitoring.live` can turn them into request rates
and latency quantiles per endpoint, summed over replicas, without Prometheus and statelessly
(any control plane process answers the same).

What is stored is bounded, since any token holder can push: a report is validated field by
field, larger than ``max_report_bytes`` it is refused (413, the route checks the body before
reading it), only entries for the service's endpoint versions, endpoints, canaries and the
fixed ``_unknown`` entry are kept, and at most ``max_replicas`` rows are kept per service (a new
replica replaces the one that reported least recently; rows silent for :data:`STATS_KEEP_S` go).
So ``/ui/api/live`` reads at most ``max_replicas`` small rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, NonNegativeInt, StringConstraints
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.config import MetricRule, MetricVariable, endpoint_key
from modelyard.control.revisions import check_expected_revision
from modelyard.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from modelyard.metrics_labels import UNKNOWN_ENDPOINT
from modelyard.settings import Settings
from modelyard.store import Database, EndpointRow, ReplicaRow, ServiceRow, utcnow
from modelyard.store.tables import CanaryRow, MetricRuleRow, ReplicaStatsRow

STATS_FRESH_S = 30.0
"""Replica stats older than this are left out of the live view (the replica is gone)."""
STATS_KEEP_S = 300.0
"""Rows of replicas silent this long are deleted when another replica first reports."""
DEFAULT_MAX_BYTES: int = Settings.model_fields["stats_max_bytes"].default
DEFAULT_MAX_REPLICAS: int = Settings.model_fields["stats_max_replicas"].default
MAX_REPLICA_ID = 256
"""Longest replica id (the column's size; replicas use ``<hostname>-<pid>``)."""
MAX_BUCKETS = 32
"""Latency buckets per entry (replicas send 17) and status codes per entry: what one entry can cost."""
MAX_CODES = 32
MAX_RULE_VARIABLES = 50
MAX_RULE_BUCKETS = 50
MAX_RULE_ENUM_VALUES = 100
"""Bounds of one metric rule: each variable, bucket and enum value is a series per endpoint version."""


def _bucket_bound(value: str) -> str:
    if math.isnan(float(value)):  # ValueError for anything that is not a number: a 422
        raise ValueError("a bucket bound must be a number or +Inf")
    return value


StatusCode = Annotated[str, StringConstraints(pattern=r"^[1-5][0-9][0-9]$")]
BucketBound = Annotated[str, StringConstraints(max_length=32), AfterValidator(_bucket_bound)]


class EndpointStats(BaseModel):
    """One endpoint version's cumulative counts: by status code, and the latency histogram."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    codes: dict[StatusCode, NonNegativeInt] = Field(default_factory=dict, max_length=MAX_CODES)
    count: NonNegativeInt = 0
    sum: float = 0.0
    buckets: list[tuple[BucketBound, NonNegativeInt]] = Field(default_factory=list, max_length=MAX_BUCKETS)


class StatsReport(BaseModel):
    """What a replica process sends: cumulative per-endpoint counts and latency buckets."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    time: float
    endpoints: dict[Annotated[str, StringConstraints(max_length=260)], EndpointStats] = Field(
        default_factory=dict
    )


def rule_from_row(row: MetricRuleRow) -> MetricRule:
    return MetricRule(
        endpoint=row.endpoint,
        log_freq=row.log_freq,
        variables=[MetricVariable.model_validate(v) for v in row.variables or []],
    )


def rules_of(session: Session, service_id: int) -> list[MetricRule]:
    rows = session.scalars(
        select(MetricRuleRow).where(MetricRuleRow.service_id == service_id).order_by(MetricRuleRow.endpoint)
    )
    return [rule_from_row(r) for r in rows]


def make_room(
    session: Session, table: type[ReplicaStatsRow | ReplicaRow], service: str, max_replicas: int
) -> None:
    """Before a new replica's first row in ``table`` (statistics or status reports): drop the rows
    of replicas silent for :data:`STATS_KEEP_S`, then the least recently updated past ``max_replicas``."""
    session.execute(
        delete(table).where(
            table.service == service, table.updated_at < utcnow() - timedelta(seconds=STATS_KEEP_S)
        )
    )
    excess = session.scalars(
        select(table.id)
        .where(table.service == service)
        .order_by(table.updated_at.desc(), table.id.desc())
        .offset(max_replicas - 1)
    ).all()
    if excess:
        session.execute(delete(table).where(table.id.in_(excess)))


class Monitoring:
    """Metric rules and replica statistics over the control plane's database."""

    def __init__(
        self,
        db: Database,
        on_change: Callable[[str], None] = lambda _service: None,
        *,
        max_report_bytes: int = DEFAULT_MAX_BYTES,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
    ) -> None:
        """``max_report_bytes``/``max_replicas``: ``Settings.stats_max_bytes``/``stats_max_replicas``."""
        self.db = db
        self.on_change = on_change
        self.max_report_bytes = max_report_bytes
        self.max_replicas = max_replicas

    def _service(self, session: Session, name: str, *, lock: bool = False) -> ServiceRow:
        query = select(ServiceRow).where(ServiceRow.name == name)
        if lock:
            query = query.with_for_update()
        row = session.scalar(query)
        if row is None:
            raise NotFound(f"service {name!r} not found")
        return row

    # -- rules ----------------------------------------------------------------------------------
    def list_rules(self, service: str) -> list[MetricRule]:
        with self.db.read() as session:
            return rules_of(session, self._service(session, service).id)

    def add_rule(
        self, service: str, rule: MetricRule, *, expected_revision: int | None = None
    ) -> tuple[MetricRule, bool]:
        """Create or replace the rule for ``rule.endpoint``; returns it and whether it was new."""
        self._check_size(rule)
        try:
            with self.db.write() as session:
                svc = self._service(session, service, lock=True)
                check_expected_revision(service, svc.revision, expected_revision)
                rows = list(session.scalars(select(MetricRuleRow).where(MetricRuleRow.service_id == svc.id)))
                self._check_shapes(rule, [r for r in rows if r.endpoint != rule.endpoint])
                row = next((r for r in rows if r.endpoint == rule.endpoint), None)
                created = row is None
                now = utcnow()
                if row is None:
                    row = MetricRuleRow(service_id=svc.id, endpoint=rule.endpoint, created_at=now)
                    session.add(row)
                row.log_freq = rule.log_freq
                row.variables = [v.model_dump(mode="json") for v in rule.variables]
                row.updated_at = now
                svc.revision += 1
        except IntegrityError:
            raise Conflict(f"metric rule {rule.endpoint!r} changed concurrently; try again") from None
        self.on_change(service)
        return rule, created

    @staticmethod
    def _check_size(rule: MetricRule) -> None:
        """Refuse rules that would make thousands of series per endpoint version."""
        if len(rule.variables) > MAX_RULE_VARIABLES:
            raise BadRequest(
                f"a metric rule has at most {MAX_RULE_VARIABLES} variables, got {len(rule.variables)}"
            )
        for var in rule.variables:
            if len(var.buckets) > MAX_RULE_BUCKETS:
                raise BadRequest(
                    f"metric {var.name!r} has {len(var.buckets)} buckets; at most {MAX_RULE_BUCKETS}"
                )
            if len(var.values) > MAX_RULE_ENUM_VALUES:
                raise BadRequest(
                    f"metric {var.name!r} has {len(var.values)} enum values; at most {MAX_RULE_ENUM_VALUES}"
                )

    @staticmethod
    def _check_shapes(rule: MetricRule, others: list[MetricRuleRow]) -> None:
        for row in others:
            for raw in row.variables or []:
                other = MetricVariable.model_validate(raw)
                for var in rule.variables:
                    if var.name == other.name and (var.kind, var.buckets) != (other.kind, other.buckets):
                        raise Conflict(
                            f"metric {var.name!r} is already a {other.kind}"
                            f"{' with buckets ' + str(other.buckets) if other.buckets else ''} in the rule "
                            f"for {row.endpoint!r}; one name has one shape per service: use another name"
                        )

    def remove_rule(self, service: str, endpoint: str, *, expected_revision: int | None = None) -> None:
        with self.db.write() as session:
            svc = self._service(session, service, lock=True)
            check_expected_revision(service, svc.revision, expected_revision)
            found = session.execute(
                delete(MetricRuleRow).where(
                    MetricRuleRow.service_id == svc.id, MetricRuleRow.endpoint == endpoint
                )
            )
            if not getattr(found, "rowcount", 0):
                raise NotFound(f"no metric rule for {endpoint!r} in service {service!r}")
            svc.revision += 1
        self.on_change(service)

    # -- replica statistics -------------------------------------------------------------------
    def report_stats(self, service: str, replica_id: str, report: StatsReport) -> None:
        """Keep ``report`` as the replica's latest (entries for what the service has only)."""
        if not replica_id or len(replica_id) > MAX_REPLICA_ID:
            raise BadRequest(f"a replica id has 1 to {MAX_REPLICA_ID} characters, got {len(replica_id)}")
        for _ in range(3):
            try:
                with self.db.write() as session:
                    svc = self._service(session, service)
                    current = self._stored(session, svc, report)
                    row = session.scalar(
                        select(ReplicaStatsRow).where(
                            ReplicaStatsRow.service == service, ReplicaStatsRow.replica_id == replica_id
                        )
                    )
                    if row is None:
                        self._make_room(session, service)
                        row = ReplicaStatsRow(service=service, replica_id=replica_id, previous=None)
                        session.add(row)
                    else:
                        row.previous = row.current
                    row.current = current
                    row.updated_at = utcnow()
                return
            except IntegrityError:
                continue
        raise Conflict(f"could not record the stats of replica {replica_id!r}")

    def _stored(self, session: Session, svc: ServiceRow, report: StatsReport) -> dict[str, Any]:
        """The report as stored: entries the service has, within ``max_report_bytes``."""
        known = {UNKNOWN_ENDPOINT}
        for endpoint, version in session.execute(
            select(EndpointRow.endpoint, EndpointRow.version).where(EndpointRow.service_id == svc.id)
        ):
            known.update((endpoint, endpoint_key(endpoint, version)))
        known.update(session.scalars(select(CanaryRow.endpoint).where(CanaryRow.service_id == svc.id)))
        current = report.model_dump(mode="json")
        current["endpoints"] = {k: v for k, v in current["endpoints"].items() if k in known}
        size = len(orjson.dumps(current))
        if size > self.max_report_bytes:
            raise PayloadTooLarge(
                f"statistics report of {size} bytes is over the limit of {self.max_report_bytes} bytes"
            )
        return current

    def _make_room(self, session: Session, service: str) -> None:
        make_room(session, ReplicaStatsRow, service, self.max_replicas)

    def live(self, service: str, *, fresh_s: float = STATS_FRESH_S) -> dict[str, Any]:
        """Per endpoint version: request rate, error rate and p50/p99 over each replica's last window."""
        since = utcnow() - timedelta(seconds=fresh_s)
        with self.db.read() as session:
            self._service(session, service)
            rows = [
                (previous, current)
                for previous, current in session.execute(
                    select(ReplicaStatsRow.previous, ReplicaStatsRow.current).where(
                        ReplicaStatsRow.service == service, ReplicaStatsRow.updated_at >= since
                    )
                )
            ]
        totals: dict[str, dict[str, Any]] = {}
        for previous, current in rows:
            for key, window in _windows(previous, current).items():
                total = totals.setdefault(key, {"rate": 0.0, "error_rate": 0.0, "requests": 0, "buckets": {}})
                total["rate"] += window["rate"]
                total["error_rate"] += window["error_rate"]
                total["requests"] += window["requests"]
                for le, count in window["buckets"].items():
                    total["buckets"][le] = total["buckets"].get(le, 0) + count
        out = {}
        for key, total in sorted(totals.items()):
            buckets = sorted(total.pop("buckets").items())
            out[key] = {
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in total.items()},
                "p50": quantile(0.5, buckets),
                "p99": quantile(0.99, buckets),
            }
        return {"service": service, "replicas": len(rows), "endpoints": out}


def _bucket_map(entry: dict[str, Any]) -> dict[float, int]:
    return {float(le): int(count) for le, count in entry.get("buckets") or []}


def _windows(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Differences between two cumulative reports of one replica, per endpoint version."""
    if not previous:
        return {}
    seconds = float(current.get("time", 0)) - float(previous.get("time", 0))
    if seconds <= 0:
        return {}
    out = {}
    before_all = previous.get("endpoints") or {}
    for key, now in (current.get("endpoints") or {}).items():
        before = before_all.get(key) or {}
        codes_now = {c: int(n) for c, n in (now.get("codes") or {}).items()}
        codes_before = {c: int(n) for c, n in (before.get("codes") or {}).items()}
        delta = {c: n - codes_before.get(c, 0) for c, n in codes_now.items()}
        if any(d < 0 for d in delta.values()):  # counters went back: the process restarted
            delta, buckets_before = codes_now, {}
        else:
            buckets_before = _bucket_map(before)
        requests = sum(delta.values())
        errors = sum(n for c, n in delta.items() if not c.startswith("2"))
        buckets = {le: n - buckets_before.get(le, 0) for le, n in _bucket_map(now).items()}
        out[key] = {
            "rate": requests / seconds,
            "error_rate": errors / seconds,
            "requests": requests,
            "buckets": buckets,
        }
    return out


def quantile(q: float, buckets: list[tuple[float, int]]) -> float | None:
    """``histogram_quantile`` over cumulative ``(le, count)`` buckets (``+Inf`` last); seconds or None."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return round(lower, 6)
            if count == below:
                return round(le, 6)
            return round(lower + (le - lower) * (rank - below) / (count - below), 6)
        lower, below = le, count
    return round(lower, 6)
