"""Following the control plane: long-poll for new revisions, keep a last-known copy on disk.

The loop asks ``GET /api/services/<s>/config?after=<rev>&wait=<s>``; the control
plane answers as soon as the revision moves (so a change is live in well under
a second) or with 304 after the wait. Each new configuration is written to
``<cache>/service-<name>.json`` before it is applied, so a replica that
restarts while the control plane is down still serves what it served before.
Connection failures are retried with a short back-off; they never stop
serving. They are logged with a back-off of their own: the first at once (after a moment for a
replica still starting, whose control plane may be starting too), then after 10 s, 20 s, 40 s...
up to every 5 minutes, each line saying for how long and how many attempts, and one line when
the control plane answers again; a control plane down for an hour is a dozen lines, not 3,600.

A replica given ``Settings.endpoints`` applies only those endpoint versions (see
:mod:`modelyard.serving.selection`); the copy on disk is the whole configuration.

Status reports the control plane refuses (401/403: no token, or one it does not know) are
logged as a warning once per distinct answer, so a replica deployed without its token is
not silently missing from ``modelyard status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import orjson
from pydantic import ValidationError

from modelyard.config import ServiceConfig
from modelyard.serving.selection import filter_config
from modelyard.serving.table import EndpointTable

log = logging.getLogger("modelyard.sync")

UNREACHABLE_LOG_FIRST_GAP_S = 10.0
"""After the first "control plane unreachable" line, the next comes this much later..."""
UNREACHABLE_LOG_MAX_GAP_S = 300.0
"""...and each gap doubles, up to this."""


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ConfigSync:
    """Keeps an :class:`EndpointTable` on the newest revision of one service."""

    def __init__(
        self,
        *,
        service: str,
        http: httpx.AsyncClient,
        table: EndpointTable,
        cache_dir: Path,
        wait_s: float = 20.0,
        retry_s: float = 1.0,
        report_status: bool = True,
        endpoints: Sequence[str] = (),
    ) -> None:
        self.service = service
        self.http = http
        self.table = table
        self.cache_file = Path(cache_dir) / f"service-{service}.json"
        self.wait_s = wait_s
        self.retry_s = retry_s
        self.report_status = report_status
        self.endpoint_filter = list(endpoints)
        """Endpoint keys or patterns this replica loads (empty: all); shown on ``/status``."""
        self.replica = replica_id()
        self.synced = asyncio.Event()
        """Set once a configuration (fresh or last-known) has been applied."""
        self.connected = False
        self._down_since: float | None = None
        """When the current outage began (monotonic), None while the control plane answers."""
        self._down_attempts = 0
        self._down_logged = False
        self._next_down_log = 0.0
        self._down_log_gap = UNREACHABLE_LOG_FIRST_GAP_S
        self._task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._report_wanted = asyncio.Event()
        self._report_refused: int | None = None
        """The status of the last refused report, so each distinct refusal is logged once."""
        self._filter_warned: int | None = None
        self.after_save: Callable[[], None] | None = None
        """Called after a new revision's last-known copy is saved (the cache prunes then)."""
        table.on_change = self._report_wanted.set

    # -- last-known copy ---------------------------------------------------------------------
    def load_last_known(self) -> ServiceConfig | None:
        try:
            return ServiceConfig.model_validate_json(self.cache_file.read_bytes())
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as exc:
            log.warning("ignoring unreadable last-known config %s: %s", self.cache_file, exc)
            return None

    def _save_last_known(self, config: ServiceConfig) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(config.model_dump(mode="json")))
        os.replace(tmp, self.cache_file)

    # -- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        cached = self.load_last_known()
        if cached is not None and cached.service == self.service:
            log.info("serving last-known config of %s at revision %d", self.service, cached.revision)
            self._apply(cached)
            self.synced.set()
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self.report_status:
            self._report_task = asyncio.get_running_loop().create_task(self._report_loop())

    async def stop(self) -> None:
        for task in (self._task, self._report_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def poll_once(self, wait: float) -> ServiceConfig | None:
        """One long-poll; returns the new config, or None when nothing changed."""
        params: dict[str, str] = {"wait": str(wait)}
        if self.table.config is not None:
            params["after"] = str(self.table.revision)
        response = await self.http.get(
            f"/api/services/{self.service}/config", params=params, timeout=wait + 10
        )
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise RuntimeError(
                f"control plane answered {response.status_code} for service {self.service!r}: "
                f"{response.text[:200]}"
            )
        return ServiceConfig.model_validate_json(response.content)

    def _apply(self, config: ServiceConfig) -> None:
        """Hand ``config`` to the table, narrowed to :attr:`endpoint_filter`."""
        if not self.endpoint_filter:
            self.table.apply(config)
            return
        narrowed = filter_config(config, self.endpoint_filter)
        if config.endpoints and not narrowed.endpoints and self._filter_warned != config.revision:
            self._filter_warned = config.revision
            log.warning(
                "endpoints filter %s matches none of service %s's endpoint versions at revision %d "
                "(%s): this replica serves nothing",
                ",".join(self.endpoint_filter),
                self.service,
                config.revision,
                ", ".join(sorted(e.key for e in config.endpoints)),
            )
        self.table.apply(narrowed)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                config = await self.poll_once(self.wait_s)
                if not self.connected:
                    self._note_reachable()
                self.connected = True
                backoff = 0.05
                if config is not None and config.revision != self.table.revision:
                    self._save_last_known(config)
                    self._apply(config)
                    if self.after_save is not None:
                        self.after_save()
                elif config is not None and self.table.config is None:
                    self._apply(config)
                self.synced.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_unreachable(exc)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(self.retry_s, backoff * 2)

    def _note_unreachable(self, exc: Exception) -> None:
        """Count a failed poll; log it only when the log back-off says so (module docstring)."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._down_attempts = 0
            self._down_log_gap = UNREACHABLE_LOG_FIRST_GAP_S
            # a serving replica says so at once; a starting one gives the control plane a moment
            self._next_down_log = now if self.connected else now + self.retry_s
        self._down_attempts += 1
        if now < self._next_down_log:
            return
        since = ""
        if self._down_logged:
            since = f", for {now - self._down_since:.0f} s ({self._down_attempts} attempts)"
        log.warning(
            "control plane unreachable (%s); serving revision %d%s; retrying every %g s, "
            "next report in %.0f s",
            exc,
            self.table.revision,
            since,
            self.retry_s,
            self._down_log_gap,
        )
        self._down_logged = True
        self._next_down_log = now + self._down_log_gap
        self._down_log_gap = min(self._down_log_gap * 2, UNREACHABLE_LOG_MAX_GAP_S)

    def _note_reachable(self) -> None:
        if self._down_logged and self._down_since is not None:
            log.info(
                "control plane reachable again for service %s after %.0f s (%d failed attempts)",
                self.service,
                time.monotonic() - self._down_since,
                self._down_attempts,
            )
        else:
            log.info("connected to the control plane for service %s", self.service)
        self._down_since = None
        self._down_logged = False

    async def _report_loop(self) -> None:
        """Tell the control plane what this replica serves: on every change, and every 10 s."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._report_wanted.wait(), 10)
            self._report_wanted.clear()
            await asyncio.sleep(0.05)  # coalesce bursts of changes
            snapshot = self.table.snapshot()
            try:
                response = await self.http.put(
                    f"/api/services/{self.service}/replicas/{self.replica}",
                    json={"revision": snapshot["revision"], "endpoints": snapshot["endpoints"]},
                    timeout=5,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable: the sync loop already says so
                log.debug("status report failed: %s", exc)
                continue
            self._report_answered(response)

    def _report_answered(self, response: httpx.Response) -> None:
        """Warn once per distinct refusal; note when reports are accepted again."""
        status = response.status_code
        if 200 <= status < 300:
            if self._report_refused is not None:
                log.info("the control plane accepts this replica's status reports again")
            self._report_refused = None
            return
        if status == self._report_refused:
            return
        self._report_refused = status
        if status == 401:
            hint = "no token was sent: set MODELYARD_TOKEN (or --token); artifact downloads need it too"
        elif status == 403:
            hint = (
                "the token is not valid there, or it is a reader token (reports need a replica token: "
                "modelyard token create NAME --role replica): check MODELYARD_TOKEN"
            )
        else:
            hint = "reports are retried"
        log.warning(
            "the control plane refused this replica's status report for service %s with %d (%s); %s",
            self.service,
            status,
            response.text[:200],
            hint,
        )
