"""``apply`` / ``diff`` / ``delete`` of a plan against a control plane, through the SDK client.

Everything is compare-then-write: the current endpoints are read, each desired endpoint
version is compared field by field (engine, resolved model id, preprocess sha256 and file
name, inputs, outputs, options, auxiliary), and only differences are written. That is what
makes a second ``apply`` of the same file a no-op that leaves the service revision alone,
and what ``diff`` prints without writing.

The canary half of a plan goes through the canary API: the stored canary (targets, weights,
and no prefix, sticky key or shadow, which a spec does not set) is compared with the plan
and written only when it differs. The canary is written after the endpoint versions it
points at and removed before the versions it stops pointing at, so every intermediate
state is one the control plane accepts.

Concurrent writers: a plan is made against the service revision its endpoints were read at
(read before the canaries, so what was read can be newer than that revision, never older),
and every write carries the revision it expects (``If-Match``): the planned one for the
first write, one more for each write after it, since every service-scoped write moves the
revision on by exactly one. If anyone else changed the service in between (another
``apply``, an ``endpoint update``, a publish that auto-deploys), the control plane answers
409 ``revision_conflict`` and nothing of that write happens; ``apply`` then plans again from
what is there now and goes on (writes that already went through simply show as done), up
to :data:`APPLY_ATTEMPTS` times. So an ``apply`` that returns has made the service match its
spec at the revision of its last write, never a mix of its plan and someone else's change.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.config import split_endpoint_key
from modelyard.deploy.plan import CanaryPlan, DesiredEndpoint, Plan
from modelyard.errors import Conflict, NotFound, RevisionConflict

APPLY_ATTEMPTS = 6
"""Plans (and partial executions) of one spec document before ``apply`` gives up."""

Action = Literal["create", "update", "delete", "unchanged"]
_SIGN = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}


@dataclass
class EndpointChange:
    action: Action
    key: str
    details: list[str] = field(default_factory=list)
    desired: DesiredEndpoint | None = None
    model_id: str | None = None


@dataclass
class CanaryChange:
    action: Action
    plan: CanaryPlan | None
    endpoint: str
    note: str = ""


@dataclass
class ChangeSet:
    """What one spec document changes (or changed) in its service."""

    service: str
    endpoint: str
    create_service: bool = False
    endpoints: list[EndpointChange] = field(default_factory=list)
    canary: CanaryChange | None = None
    revision: int | None = None
    """The service revision the plan was made against (``None``: no such service yet)."""
    attempts: int = 1
    """Plans it took: more than one when another writer changed the service meanwhile."""
    writes: int = 0
    """Writes made, over all attempts (``apply`` may write even if its last plan is empty)."""

    @property
    def changed(self) -> bool:
        """True when applying would write something to the control plane."""
        if self.create_service or any(c.action != "unchanged" for c in self.endpoints):
            return True
        return self.canary is not None and self.canary.action in ("create", "update", "delete")

    def render(self) -> str:
        """The human diff: ``+`` create, ``~`` update, ``-`` delete, ``=`` unchanged."""
        lines = [f"service {self.service}" + (" (will be created)" if self.create_service else "")]
        for change in self.endpoints:
            head = f"  {_SIGN[change.action]} {change.key}"
            if change.action == "unchanged":
                lines.append(f"{head} (unchanged)")
                continue
            lines.append(head)
            lines.extend(f"      {detail}" for detail in change.details)
        if self.canary is not None:
            canary = self.canary
            sign = _SIGN.get(canary.action, "!")
            text = f"  {sign} canary {canary.endpoint}"
            if canary.plan is not None:
                split = ", ".join(
                    f"{t}={w:g}" for t, w in zip(canary.plan.targets, canary.plan.weights, strict=True)
                )
                text += f": {split}"
            if canary.action == "unchanged":
                text += " (unchanged)"
            lines.append(text)
            if canary.note:
                lines.append(f"      {canary.note}")
        if self.attempts > 1:
            lines.append(
                f"  (planned {self.attempts} times: the service changed while this was applied; "
                "the last plan is shown)"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "endpoint": self.endpoint,
            "create_service": self.create_service,
            "changed": self.changed,
            "revision": self.revision,
            "attempts": self.attempts,
            "writes": self.writes,
            "endpoints": [{"action": c.action, "key": c.key, "details": c.details} for c in self.endpoints],
            "canary": None
            if self.canary is None
            else {
                "action": self.canary.action,
                "endpoint": self.canary.endpoint,
                "split": self.canary.plan.as_dict() if self.canary.plan else None,
                "note": self.canary.note,
            },
        }


# -- reading current state -------------------------------------------------------------------


def resolve_model(client: Any, desired: DesiredEndpoint) -> str:
    """The registry model id a predictor's selector points at now (newest match for a query)."""
    sel = desired.model
    where = desired.model_where or f"{desired.where}: model"
    if sel.id is not None:
        try:
            return str(client.get_model(sel.id)["id"])
        except NotFound:
            raise NotFound(f"{where}: no model with id {sel.id!r}") from None
    name = re.escape(sel.name) if sel.name else None
    what = " ".join(
        part
        for part in (
            repr(sel.name) if sel.name else "any name",
            f"in project {sel.project!r}" if sel.project else "",
            f"tagged {', '.join(sel.tags)}" if sel.tags else "",
            "published" if sel.published else "",
        )
        if part
    )
    if sel.version is not None:
        for model in client.list_models(name=name, project=sel.project):
            if int(model["version"]) == sel.version:
                return str(model["id"])
        raise NotFound(f"{where}: no model {what} with version {sel.version}")
    found = client.list_models(
        name=name, project=sel.project, tags=list(sel.tags) or None, published=sel.published, limit=1
    )
    if not found:
        raise NotFound(f"{where}: no model {what}")
    return str(found[0]["id"])


def _tensors(items: Sequence[Any] | None) -> list[dict[str, Any]]:
    return [{k: v for k, v in dict(t).items() if v is not None} for t in items or ()]


def _fmt(value: Any) -> str:
    return "(none)" if value is None else repr(value)


def _dict_details(what: str, current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(current) | set(desired)):
        old, new = current.get(key), desired.get(key)
        if key not in desired:
            out.append(f"{what}.{key}: {old!r} → (removed)")
        elif key not in current:
            out.append(f"{what}.{key}: (unset) → {new!r}")
        elif old != new:
            out.append(f"{what}.{key}: {old!r} → {new!r}")
    return out


def compare(current: dict[str, Any] | None, desired: DesiredEndpoint, model_id: str) -> list[str]:
    """Field-level differences between a stored endpoint and the desired one (empty: equal)."""
    if current is None:
        details = [f"engine: {desired.engine}", f"model: {model_id}"]
        if desired.preprocess:
            details.append(
                f"preprocess: {desired.preprocess.filename} (sha256 {desired.preprocess.sha256[:12]})"
            )
        details.extend(f"options.{k}: {v!r}" for k, v in sorted(desired.options.items()))
        return details
    details = []
    if current.get("engine") != desired.engine:
        details.append(f"engine: {current.get('engine')} → {desired.engine}")
    if current.get("model_id") != model_id:
        details.append(f"model: {_fmt(current.get('model_id'))} → {model_id}")
    pre = current.get("preprocess") or None
    now = (pre["sha256"], pre.get("filename")) if pre else None
    want = (desired.preprocess.sha256, desired.preprocess.filename) if desired.preprocess else None
    if now != want:
        old = f"{now[1]} (sha256 {now[0][:12]})" if now else "(none)"
        new = f"{want[1]} (sha256 {want[0][:12]})" if want else "(none)"
        details.append(f"preprocess: {old} → {new}")
    for what in ("inputs", "outputs"):
        old_t, new_t = _tensors(current.get(what)), getattr(desired, what)
        if old_t != new_t:
            details.append(f"{what}: {old_t} → {new_t}")
    details.extend(_dict_details("options", dict(current.get("options") or {}), desired.options))
    details.extend(_dict_details("auxiliary", dict(current.get("auxiliary") or {}), desired.auxiliary))
    return details


def _current_canary(client: Any, service: str, endpoint: str) -> dict[str, Any] | None:
    """The stored canary configuration named ``endpoint`` (``None`` when there is none)."""
    for info in client.list_canaries(service):
        canary = dict(info.get("canary") or {})
        if canary.get("endpoint") == endpoint:
            return canary
    return None


def _same_canary(current: dict[str, Any], plan: CanaryPlan) -> bool:
    return (
        list(current.get("targets") or []) == plan.targets
        and [float(w) for w in current.get("weights") or []] == plan.weights
        and current.get("prefix") is None
        and not current.get("sticky_key")
        and not current.get("shadow")
    )


def _plan_canary(client: Any, plan: Plan, exists: bool, deleting: bool) -> CanaryChange | None:
    endpoint = plan.canary.endpoint if plan.canary else plan.endpoint
    current = _current_canary(client, plan.service, endpoint) if exists else None
    if deleting or plan.canary is None:
        if current is None:
            return None
        return CanaryChange("delete", None, endpoint)
    if current is None:
        return CanaryChange("create", plan.canary, endpoint)
    return CanaryChange(
        "unchanged" if _same_canary(current, plan.canary) else "update", plan.canary, endpoint
    )


def plan_changes(client: Any, plan: Plan, *, deleting: bool = False) -> ChangeSet:
    """Compare the plan with the control plane; reads only.

    The endpoints are read first, with the revision they were read at (``changes.revision``);
    everything read after them (canaries, models) is at least that new.
    """
    try:
        listed, revision = client.list_endpoints_at(plan.service)
    except NotFound:
        listed, revision = None, None
    exists = listed is not None
    changes = ChangeSet(
        plan.service, plan.endpoint, create_service=not exists and not deleting, revision=revision
    )
    current = {ep["key"]: ep for ep in listed or () if ep.get("endpoint") == plan.endpoint}
    wanted = {d.key for d in plan.endpoints}
    if not deleting:
        for desired in plan.endpoints:
            model_id = resolve_model(client, desired)
            details = compare(current.get(desired.key), desired, model_id)
            action: Action = "create" if desired.key not in current else "update" if details else "unchanged"
            changes.endpoints.append(EndpointChange(action, desired.key, details, desired, model_id))
    for key in sorted(current):
        if deleting or key not in wanted:
            note = [] if deleting else ["not in the spec any more"]
            changes.endpoints.append(EndpointChange("delete", key, note))
    changes.canary = _plan_canary(client, plan, exists, deleting)
    return changes


# -- writing ----------------------------------------------------------------------------------


class _Writer:
    """Makes one change set's writes, each only over the revision the one before left."""

    def __init__(self, client: Any, changes: ChangeSet) -> None:
        self.client = client
        self.changes = changes
        self.expected = changes.revision

    def write(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        answer = call(*args, **kwargs, if_revision=self.expected)
        self.changes.writes += 1
        if self.expected is not None:
            self.expected += 1  # every service-scoped write moves the revision on by one
        return answer

    def create_service(self) -> None:
        try:
            created = self.client.create_service(self.changes.service)
        except Conflict as exc:  # created by someone else since the plan: plan again
            raise RevisionConflict(f"service {self.changes.service!r} appeared meanwhile: {exc}") from exc
        self.changes.writes += 1
        self.expected = int(created["revision"])


def execute(client: Any, changes: ChangeSet) -> None:
    """Perform a change set: service, endpoints, then the canary (whose targets must exist), then removals.

    Each write expects the revision the plan (and this change set's own writes before it)
    left: :class:`~modelyard.errors.RevisionConflict` as soon as anyone else wrote in between.
    """
    writer = _Writer(client, changes)
    if changes.create_service:
        writer.create_service()
    for change in changes.endpoints:
        if change.action not in ("create", "update") or change.desired is None:
            continue
        d = change.desired
        writer.write(
            client.add_endpoint,
            changes.service,
            d.endpoint,
            d.version,
            engine=d.engine,
            model_id=change.model_id,
            preprocess=d.preprocess.path if d.preprocess else None,
            inputs=d.inputs,
            outputs=d.outputs,
            options=d.options,
            auxiliary=d.auxiliary,
        )
    canary = changes.canary
    if canary is not None and canary.action in ("create", "update") and canary.plan is not None:
        writer.write(
            client.add_canary,
            changes.service,
            canary.plan.endpoint,
            weights=canary.plan.weights,
            targets=canary.plan.targets,
        )
    if canary is not None and canary.action == "delete":
        writer.write(client.remove_canary, changes.service, canary.endpoint)
    for change in changes.endpoints:
        if change.action == "delete":
            endpoint, version = split_endpoint_key(change.key)
            writer.write(client.remove_endpoint, changes.service, endpoint, version)


def converge(client: Any, plan: Plan, *, deleting: bool = False, attempts: int = APPLY_ATTEMPTS) -> ChangeSet:
    """Plan and execute until one execution runs through without another writer in between.

    Each attempt plans from the current state, so the writes of an interrupted attempt count
    as done and another writer's change to what the spec owns is set back to the spec. Gives
    up with a RevisionConflict that says so after ``attempts`` plans.
    """
    writes = 0
    for attempt in range(1, attempts + 1):
        changes = plan_changes(client, plan, deleting=deleting)
        changes.attempts, changes.writes = attempt, writes
        if not changes.changed:
            return changes
        try:
            execute(client, changes)
        except RevisionConflict as exc:
            writes = changes.writes
            if attempt == attempts:
                verb = "delete" if deleting else "apply"
                raise RevisionConflict(
                    f"{verb} of {plan.endpoint!r} ({plan.source}): service {plan.service!r} kept changing "
                    f"under it ({attempts} plans, each interrupted by another writer; last: "
                    f"{exc.message}); run it again once the other writers are done — it continues "
                    "from whatever is there",
                    current=exc.current,
                ) from exc
            time.sleep(random.uniform(0, 0.05 * attempt))
            continue
        return changes
    raise AssertionError("unreachable")


def diff(client: Any, plans: Sequence[Plan]) -> list[ChangeSet]:
    return [plan_changes(client, plan) for plan in plans]


def apply(client: Any, plans: Sequence[Plan], *, attempts: int = APPLY_ATTEMPTS) -> list[ChangeSet]:
    """Make the control plane match the plans; a second call with the same plans writes nothing."""
    return [converge(client, plan, attempts=attempts) for plan in plans]


def delete(client: Any, plans: Sequence[Plan], *, attempts: int = APPLY_ATTEMPTS) -> list[ChangeSet]:
    """Remove every version of each plan's endpoint (and its canary); the service itself stays."""
    return [converge(client, plan, deleting=True, attempts=attempts) for plan in plans]
