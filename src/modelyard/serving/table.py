"""The endpoint table of one replica: what is declared, what is loaded, what each key resolves to.

Applying a new :class:`~modelyard.config.ServiceConfig` is a delta:

* an endpoint version whose fingerprint did not change is left alone (its
  model stays loaded, its code is not re-imported);
* a new or changed one is loaded in the background while the previous one (if
  any) keeps serving; when the load finishes the table swaps that one key and
  the old version is retired after its in-flight requests finish;
* a removed one leaves the table at once and is retired the same way, except when
  another version of the same endpoint is still loading: then it keeps answering
  ``/serve/<endpoint>`` (no version) until a successor serves, so replacing ``iris/1``
  by ``iris/2`` in one change (auto-deploy with ``max_versions=1``) never answers 503;
* a failed load marks that key ``failed`` with the reason and touches nothing
  else; if an older version of the same key is loaded it keeps serving.

Retiring waits for the version's in-flight requests at most its ``retire_wait_s`` (then cancels
them) and unloads it once no worker thread runs its code any more; until then it is listed under
``draining`` in the snapshot (``/status``) with what still holds it.

All mutation happens on the event loop thread, so a swap is a single dict
assignment: a request sees either the old or the new version, never neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.config import EndpointConfig, ServiceConfig, endpoint_key, split_endpoint_key
from modelyard.errors import ModelyardError, NotFound, Unavailable
from modelyard.serving.endpoint import LoadedEndpoint, Loader

log = logging.getLogger("modelyard.serving")


def version_order(version: str) -> tuple[int, float, str]:
    """Sort key: numeric versions by value (``10`` after ``9``), others after them by text."""
    try:
        return (0, float(version), "")
    except ValueError:
        return (1, 0.0, version)


@dataclass
class EndpointStatus:
    """What a replica reports for one endpoint version."""

    key: str
    engine: str
    fingerprint: str
    state: str = "loading"
    """``loading`` (nothing serving yet), ``updating`` (previous version serving, new one
    loading), ``ready``, or ``failed`` (see ``error``; ``serving`` tells whether an older
    version still answers)."""
    error: str | None = None
    serving: bool = False
    loaded_at: float | None = None
    load_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "engine": self.engine,
            "state": self.state,
            "error": self.error,
            "serving": self.serving,
            "load_seconds": self.load_seconds,
        }


@dataclass
class EndpointTable:
    """Declared endpoints, loaded endpoints and their status for one service on one replica."""

    loader: Loader
    on_change: Callable[[], None] = lambda: None
    config: ServiceConfig | None = None
    ready: dict[str, LoadedEndpoint] = field(default_factory=dict)
    status: dict[str, EndpointStatus] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)
    _wanted: dict[str, str] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loads: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _lingering: dict[str, LoadedEndpoint] = field(default_factory=dict)
    """Removed versions still answering their unversioned endpoint until a successor serves."""
    _draining: set[LoadedEndpoint] = field(default_factory=set)
    """Retired versions not unloaded yet: requests or worker threads still run them."""

    @property
    def revision(self) -> int:
        return self.config.revision if self.config else 0

    @property
    def service(self) -> str:
        return self.config.service if self.config else ""

    def loading(self) -> bool:
        return any(s.state in ("loading", "updating") for s in self.status.values())

    def resolve(self, endpoint: str, version: str | None) -> LoadedEndpoint:
        """The loaded endpoint for ``/serve/<endpoint>[/<version>]``.

        Without a version: the unversioned endpoint if declared, else the highest version
        that serves now. A new highest version takes over once it is loaded (until then the
        previous one keeps answering, so adding a version never makes ``/serve/<endpoint>``
        answer 503); one that failed to load leaves the traffic where it was.
        """
        if version:
            key = endpoint_key(endpoint, version)
        else:
            versions = self.versions.get(endpoint)
            if not versions:
                raise NotFound(f"endpoint {endpoint!r} not found in service {self.service!r}")
            if "" in versions:
                key = endpoint
            else:
                for candidate in reversed(versions):
                    loaded = self.ready.get(endpoint_key(endpoint, candidate))
                    if loaded is not None:
                        return loaded
                lingering = sorted(self._lingering, key=lambda k: version_order(split_endpoint_key(k)[1]))
                for key in reversed(lingering):
                    if split_endpoint_key(key)[0] == endpoint:
                        return self._lingering[key]
                key = endpoint_key(endpoint, versions[-1])
        loaded = self.ready.get(key)
        if loaded is not None:
            return loaded
        status = self.status.get(key)
        if status is None:
            raise NotFound(f"endpoint {key!r} not found in service {self.service!r}")
        if status.state == "failed":
            raise Unavailable(f"endpoint {key!r} failed to load: {status.error}")
        raise Unavailable(f"endpoint {key!r} is still loading", retry_after=1)

    def apply(self, config: ServiceConfig) -> None:
        """Start moving the table to ``config``; loads continue in the background."""
        desired = config.endpoint_map()
        self.config = config
        versions: dict[str, list[str]] = {}
        for ec in desired.values():
            versions.setdefault(ec.endpoint, []).append(ec.version)
        for names in versions.values():
            names.sort(key=version_order)
        self.versions = versions
        for key in list(self._lingering):
            if split_endpoint_key(key)[0] not in versions or key in desired:
                self._retire(self._lingering.pop(key))
        for key in list(self.status):
            if key not in desired:
                self._forget(key)
        for key, ec in desired.items():
            fingerprint = ec.fingerprint()
            if self._wanted.get(key) == fingerprint:
                continue
            self._wanted[key] = fingerprint
            serving = key in self.ready
            self.status[key] = EndpointStatus(
                key=key,
                engine=ec.engine,
                fingerprint=fingerprint,
                state="updating" if serving else "loading",
                serving=serving,
            )
            previous = self._loads.pop(key, None)
            if previous is not None:
                previous.cancel()
            task = asyncio.get_running_loop().create_task(self._load(ec, fingerprint))
            self._loads[key] = task
        self.on_change()

    def _forget(self, key: str) -> None:
        self.status.pop(key, None)
        self._wanted.pop(key, None)
        task = self._loads.pop(key, None)
        if task is not None:
            task.cancel()
        old = self.ready.pop(key, None)
        if old is None:
            return
        endpoint = split_endpoint_key(key)[0]
        successors = [endpoint_key(endpoint, v) for v in self.versions.get(endpoint, [])]
        if successors and not any(k in self.ready for k in successors):
            self._lingering[key] = old  # the endpoint's new version is still loading
        else:
            self._retire(old)

    def _successor_ready(self, key: str) -> None:
        endpoint = split_endpoint_key(key)[0]
        for old_key in list(self._lingering):
            if split_endpoint_key(old_key)[0] == endpoint:
                self._retire(self._lingering.pop(old_key))

    async def _load(self, ec: EndpointConfig, fingerprint: str) -> None:
        key = ec.key
        started = time.perf_counter()
        try:
            loaded = await self.loader(ec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = exc.message if isinstance(exc, ModelyardError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ModelyardError):
                log.exception("loading %s failed", key)
            else:
                log.warning("loading %s failed: %s", key, message)
            if self._wanted.get(key) == fingerprint:
                status = self.status[key]
                status.state = "failed"
                status.error = message
                status.serving = key in self.ready
                if status.serving:
                    status.error = f"{message} (still serving the previous configuration)"
                self._loads.pop(key, None)
                self.on_change()
            return
        if self._wanted.get(key) != fingerprint:
            self._retire(loaded)  # a newer config arrived while this one loaded
            return
        old = self.ready.get(key)
        self.ready[key] = loaded
        status = self.status[key]
        status.state, status.error, status.serving = "ready", None, True
        status.loaded_at = time.time()
        status.load_seconds = round(time.perf_counter() - started, 4)
        self._loads.pop(key, None)
        log.info("endpoint %s ready (%.3f s)", key, status.load_seconds)
        if old is not None:
            self._retire(old)
        self._successor_ready(key)
        self.on_change()

    def _retire(self, loaded: LoadedEndpoint) -> None:
        task = asyncio.get_running_loop().create_task(loaded.retire())
        self._tasks.add(task)
        self._draining.add(loaded)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._draining.discard(loaded)

        task.add_done_callback(done)

    async def wait_loaded(self, timeout: float | None = None) -> None:
        """Wait until no load is in progress (tests and readiness)."""

        async def _wait() -> None:
            while self._loads:
                await asyncio.gather(*list(self._loads.values()), return_exceptions=True)

        await asyncio.wait_for(_wait(), timeout)

    async def close(self) -> None:
        for task in list(self._loads.values()):
            task.cancel()
        for key in list(self.ready):
            self._retire(self.ready.pop(key))
        for key in list(self._lingering):
            self._retire(self._lingering.pop(key))
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        """Every endpoint version's status; a serving one whose code raised also has its
        ``last_user_error`` (hook, message, the user's file:line, time, counts)."""
        endpoints = []
        for key in sorted(self.status):
            entry = self.status[key].as_dict()
            loaded = self.ready.get(key)
            last = loaded.user.errors.snapshot() if loaded is not None and loaded.user is not None else None
            if last is not None:
                entry["last_user_error"] = last
            endpoints.append(entry)
        return {
            "service": self.service,
            "revision": self.revision,
            "endpoints": endpoints,
            "retiring": sorted(self._lingering),
            "draining": sorted(
                (
                    {"key": d.key, "inflight": d.guard.requests, "threads": d.guard.threads}
                    for d in self._draining
                ),
                key=lambda d: str(d["key"]),
            ),
        }
