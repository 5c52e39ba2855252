"""Canary / A-B routing on a replica: one target per request, by weight, sticky or random.

``/serve/<canary>`` (no version) resolves here to one endpoint version of the canary's
targets (:class:`modelyard.config.CanaryConfig`). Only targets this replica can serve now
take part: a target that was removed, is still loading or failed gives its share to the
others (weights are normalised over what is left), so a canary never answers 404/503 while
any of its targets serves, and a new version only gets traffic once it is loaded. Prefix
mode splits over the newest ``len(weights)`` numeric versions of ``<prefix>/*`` as declared
in the current configuration, the first weight to the newest.

Sticky routing maps a stable hash of the key (a header or a JSON body field) onto the
cumulative weights, so the same key lands on the same target while the weights and the
serving targets stay the same. Shadow targets get a copy of the request as a background
task: its answer is counted (and handed to :attr:`Router.observer`, which the data plane
points at the Prometheus metrics) but never returned,
its errors are logged and swallowed, and at most ``max_shadows`` run at once (more are
dropped and counted), so the primary request is neither slowed nor failed by it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.config import CanaryConfig, ServiceConfig, split_endpoint_key
from modelyard.errors import ModelyardError, Unavailable
from modelyard.http_errors import status_for
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.table import EndpointTable

log = logging.getLogger("modelyard.serving")

Headers = Sequence[tuple[bytes, bytes]]
"""ASGI request headers (lower-case names), as the HTTP front has them."""
ShadowRun = Callable[[str, str, Any], Awaitable[Any]]
"""``run(endpoint, version, body)``: the data plane's inference call for a shadow copy."""
MAX_DEPTH = 16


class ShadowObserver(Protocol):
    """Hears of every shadow request (the metrics module counts them)."""

    def shadow_done(self, canary: str, target: str, status: int, seconds: float) -> None: ...

    def shadow_dropped(self, canary: str, target: str) -> None: ...


def sticky_point(canary: str, key: str) -> float:
    """A stable point in [0, 1) for ``key`` (the same in every process and on every replica)."""
    digest = hashlib.blake2b(f"{canary}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def pick(weights: Sequence[float], point: float) -> int:
    """The index whose share of the cumulative (normalised) weights contains ``point``."""
    total = sum(weights)
    if total <= 0:
        return min(int(point * len(weights)), len(weights) - 1)
    running = 0.0
    for index, weight in enumerate(weights):
        running += weight / total
        if point < running and weight > 0:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)


def _numeric_newest(versions: Sequence[str]) -> list[str]:
    numeric = []
    for version in versions:
        try:
            numeric.append((float(version), version))
        except ValueError:
            continue
    return [v for _, v in sorted(numeric, reverse=True)]


@dataclass
class _Plan:
    canary: CanaryConfig
    targets: list[str]
    weights: list[float]


@dataclass
class ShadowCounts:
    ok: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass
class Router:
    """Resolves ``/serve/<endpoint>[/<version>]`` over the table, canaries included."""

    table: EndpointTable
    run_shadow: ShadowRun
    max_shadows: int = 64
    observer: ShadowObserver | None = None
    random_point: Callable[[], float] = random.random
    shadows: dict[tuple[str, str], ShadowCounts] = field(default_factory=dict)
    _config: ServiceConfig | None = None
    _plans: dict[str, _Plan] = field(default_factory=dict)
    _running: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def plans(self) -> dict[str, _Plan]:
        config = self.table.config
        if config is not self._config:
            self._config = config
            plans = {}
            for canary in config.canaries if config is not None else []:
                if canary.prefix is None:
                    targets = list(canary.targets)
                else:
                    newest = _numeric_newest(self.table.versions.get(canary.prefix, []))
                    targets = [f"{canary.prefix}/{v}" for v in newest[: len(canary.weights)]]
                plans[canary.endpoint] = _Plan(canary, targets, list(canary.weights[: len(targets)]))
            self._plans = plans
        return self._plans

    def resolve(
        self, endpoint: str, version: str | None, body: Any = None, headers: Headers | None = None
    ) -> LoadedEndpoint:
        if not version:
            plan = self.plans().get(endpoint)
            if plan is not None:
                return self._route(plan, body, headers, 0)
        return self.table.resolve(endpoint, version)

    def _route(self, plan: _Plan, body: Any, headers: Headers | None, depth: int) -> LoadedEndpoint:
        name = plan.canary.endpoint
        serving = [(t, w) for t, w in zip(plan.targets, plan.weights, strict=True) if self._serves(t, depth)]
        if not serving:
            raise Unavailable(
                f"canary {name!r}: none of its targets ({', '.join(plan.targets) or 'none declared'}) "
                "is serving on this replica",
                retry_after=1,
            )
        key = self._sticky_value(plan.canary, body, headers)
        point = self.random_point() if key is None else sticky_point(name, key)
        target = serving[pick([w for _, w in serving], point)][0]
        if plan.canary.shadow:
            self._mirror(plan.canary, body)
        endpoint, version = split_endpoint_key(target)
        if not version:
            inner = self.plans().get(endpoint)
            if inner is not None and depth < MAX_DEPTH:
                return self._route(inner, body, headers, depth + 1)
        return self.table.resolve(endpoint, version or None)

    def _serves(self, target: str, depth: int) -> bool:
        endpoint, version = split_endpoint_key(target)
        if version:
            return target in self.table.ready
        inner = self.plans().get(endpoint)
        if inner is not None:
            return depth < MAX_DEPTH and any(self._serves(t, depth + 1) for t in inner.targets)
        try:
            self.table.resolve(endpoint, None)
        except ModelyardError:
            return False
        return True

    @staticmethod
    def _sticky_value(canary: CanaryConfig, body: Any, headers: Headers | None) -> str | None:
        sticky = canary.sticky()
        if sticky is None:
            return None
        where, name = sticky
        if where == "header":
            wanted = name.encode("latin-1")
            for key, raw in headers or ():
                if key.lower() == wanted:
                    return raw.decode("latin-1")
            return None
        value = body.get(name) if isinstance(body, dict) else None
        return None if value is None else str(value)

    # -- shadow traffic ------------------------------------------------------------------------
    def _mirror(self, canary: CanaryConfig, body: Any) -> None:
        for target in canary.shadow:
            counts = self.shadows.setdefault((canary.endpoint, target), ShadowCounts())
            if self._running >= self.max_shadows or target not in self.table.ready:
                counts.dropped += 1
                if self.observer is not None:
                    self.observer.shadow_dropped(canary.endpoint, target)
                continue
            payload = body if isinstance(body, bytes | str | int | float | None) else copy.deepcopy(body)
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._shadow(canary.endpoint, target, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(self, canary: str, target: str, body: Any) -> None:
        endpoint, version = split_endpoint_key(target)
        started = time.perf_counter()
        status = 200
        try:
            await self.run_shadow(endpoint, version, body)
        except ModelyardError as exc:
            status = status_for(exc)
            log.debug("shadow %s of canary %s answered %s: %s", target, canary, status, exc)
        except Exception:
            status = 500
            log.warning("shadow %s of canary %s failed", target, canary, exc_info=True)
        finally:
            self._running -= 1
        counts = self.shadows.setdefault((canary, target), ShadowCounts())
        if status == 200:
            counts.ok += 1
        else:
            counts.failed += 1
        if self.observer is not None:
            try:
                self.observer.shadow_done(canary, target, status, time.perf_counter() - started)
            except Exception:
                log.exception("shadow observer failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- status ----------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """Per canary: targets with their effective share now, and what is missing (for /status)."""
        out = []
        for name, plan in sorted(self.plans().items()):
            serving = [(t, w) for t, w in zip(plan.targets, plan.weights, strict=True) if self._serves(t, 0)]
            total = sum(w for _, w in serving) or 1.0
            declared = plan.targets if plan.canary.prefix is None else [f"{plan.canary.prefix}/*"]
            missing = [t for t in plan.targets if t not in dict(serving)]
            if plan.canary.prefix is not None and not plan.targets:
                missing = declared
            entry: dict[str, Any] = {
                "endpoint": name,
                "targets": declared,
                "shares": {t: round(w / total, 6) for t, w in serving},
                "missing": missing,
                "sticky_key": plan.canary.sticky_key,
            }
            if missing:
                entry["note"] = f"{', '.join(missing)} not serving; its share goes to the other targets"
            if plan.canary.shadow:
                entry["shadow"] = {
                    t: vars(self.shadows.get((name, t), ShadowCounts())) for t in plan.canary.shadow
                }
            out.append(entry)
        return out
