"""``endpoint add --wait``: follow the replicas' status reports until a version loaded or failed.

Replicas report what they serve to the control plane on every change (``modelyard status``
shows it): the revision they have applied and each endpoint version's state. A version has
settled on a replica once that replica is at the revision of the write (or later) and reports
the version ``ready`` or ``failed``; a replica at that revision that does not list it does not
serve it (its ``--endpoints`` filter leaves it out). Replicas whose last report is older than
:data:`SILENT_S` are taken for gone (the control plane lists replicas for a minute after their
last report), so a stopped replica does not hold the wait until its timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import typer

from modelyard.cli import _common as common

if TYPE_CHECKING:
    from modelyard.client import Client

SILENT_S = 25.0
"""A replica reports at least every 10 s; one silent for this long is not waited for."""
POLL_S = 0.1


@dataclass
class Outcome:
    """Where ``key`` stands on the live replicas once the wait ends."""

    replicas: int = 0
    """Live replicas of the service (those reporting to the control plane)."""
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Replica id → its load error."""
    pending: dict[str, str] = field(default_factory=dict)
    """Replica id → what it reports yet (``loading``, ``at revision 4``)."""
    waited_s: float = 0.0

    @property
    def settled(self) -> bool:
        return not self.pending


def _age_s(updated_at: Any, now: datetime) -> float:
    try:
        seen = datetime.fromisoformat(str(updated_at))
    except ValueError:
        return 0.0
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=timezone.utc)
    return (now - seen).total_seconds()


def outcome(status: dict[str, Any], key: str, revision: int) -> Outcome:
    """Where ``key`` stands in one ``GET .../status`` answer, for a write at ``revision``."""
    now = datetime.now(timezone.utc)
    out = Outcome()
    for replica in status.get("replicas") or []:
        if _age_s(replica.get("updated_at"), now) > SILENT_S:
            continue
        out.replicas += 1
        rid = str(replica.get("id"))
        if int(replica.get("revision") or 0) < revision:
            out.pending[rid] = f"at revision {replica.get('revision')}, not yet {revision}"
            continue
        entry = next((e for e in replica.get("endpoints") or [] if e.get("key") == key), None)
        if entry is None:
            continue  # this replica does not serve it (its --endpoints filter)
        state = entry.get("state")
        if state == "ready":
            out.ready.append(rid)
        elif state == "failed":
            out.failed[rid] = str(entry.get("error") or "failed to load")
        else:
            out.pending[rid] = str(state)
    return out


def wait_until_settled(client: Client, service: str, key: str, timeout_s: float) -> Outcome:
    """Poll the service's status until ``key`` is ready or failed on every live replica.

    Returns at once when no replica is live; after ``timeout_s`` with ``pending`` filled in.
    """
    started = time.monotonic()
    revision = int(client.status(service).get("revision") or 0)
    while True:
        result = outcome(client.status(service), key, revision)
        result.waited_s = time.monotonic() - started
        if result.settled or result.replicas == 0 or result.waited_s >= timeout_s:
            return result
        time.sleep(POLL_S)


def report_loaded(c: Client, svc: str, key: str, timeout_s: float) -> None:
    """``--wait``: print where ``key`` stands on the replicas; exit 1 unless it is ready on all."""
    result = wait_until_settled(c, svc, key, timeout_s)
    if result.replicas == 0:
        typer.echo(f"no replica of service {svc!r} is running: it loads {key!r} when one starts")
        return
    if result.failed:
        reasons = "; ".join(f"on {rid}: {error}" for rid, error in sorted(result.failed.items()))
        raise common.fail(
            f"endpoint {key!r} failed to load {reasons}. It stays in service {svc!r}: fix it with "
            f"'modelyard endpoint update', or 'modelyard endpoint remove --endpoint {key}'"
        )
    if result.pending:
        states = ", ".join(f"{rid}: {state}" for rid, state in sorted(result.pending.items()))
        raise common.fail(f"endpoint {key!r} is not ready after {result.waited_s:.0f} s ({states})")
    if not result.ready:
        typer.echo(f"no running replica of service {svc!r} serves {key!r} (their --endpoints filters)")
        return
    typer.echo(f"endpoint {key!r} ready on {len(result.ready)}/{result.replicas} replica(s)")
