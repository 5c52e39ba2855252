"""The data plane's core: route a decoded request to an endpoint version and run it.

Transport-free: the HTTP app, the queue worker and user code's
``send_request`` all call :meth:`DataPlane.infer` with a decoded body and get a
Python value back (or a :class:`~modelyard.errors.ModelyardError`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.config import EndpointConfig, MetricRule, ServiceConfig
from modelyard.engines.registry import EngineRegistry
from modelyard.errors import ModelLoadError, ModelyardError
from modelyard.http_errors import status_for
from modelyard.metrics import EndpointInstruments, Metrics
from modelyard.metrics_custom import rule_for
from modelyard.metrics_labels import UNKNOWN_ENDPOINT, request_labels
from modelyard.preprocess import UserCode
from modelyard.serving.batching import BatchObserver
from modelyard.serving.codec import encode_json
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.fetch import ArtifactCache
from modelyard.serving.inflight import Admission
from modelyard.serving.inline import RunInPool
from modelyard.serving.routing import Headers, Router
from modelyard.serving.table import EndpointTable

log = logging.getLogger("modelyard.serving")

SHADOW_THREADS = 2
"""Threads that run shadow copies (sync user code and engines). Few on purpose: shadows are
best-effort, so a slow or CPU-hungry shadow queues behind its siblings (and is dropped past
``Router.max_shadows``) instead of taking the worker threads primary requests need."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _no_statistics(values: dict[str, Any]) -> None:
    """Default ``collect_custom_statistics_fn`` until metric rules are configured."""


@dataclass
class InferResult:
    key: str
    """The endpoint version that answered (``iris/2``)."""
    value: Any


class DataPlane:
    """Routes requests over an :class:`EndpointTable` and builds its endpoints."""

    def __init__(
        self,
        *,
        registry: EngineRegistry,
        cache: ArtifactCache,
        executor: Executor,
        nested_executor: Executor,
        load_executor: Executor,
        metrics: Metrics | None = None,
        shadow_executor: Executor | None = None,
        inline_max_s: float = 0.0,
        request_timeout_s: float = 0.0,
        retire_wait_s: float = 60.0,
        max_inflight: int = 0,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.inline_max_s = inline_max_s
        """Default limit under which an endpoint's sync chain may run on the event loop."""
        self.request_timeout_s = request_timeout_s
        """Default deadline of a request (endpoint option ``timeout_s``); 0: none."""
        self.retire_wait_s = retire_wait_s
        """How long a retired version waits for its requests before cancelling them."""
        self.admission = Admission(max_inflight)
        """This worker's limit on requests in flight (``Settings.max_inflight``; 0: none)."""
        self._rules: list[MetricRule] = []
        self._rules_config: ServiceConfig | None = None
        self._rules_generation = 0
        self.registry = registry
        self.cache = cache
        self.executor = executor
        self.nested_executor = nested_executor
        self.load_executor = load_executor
        self.table = EndpointTable(loader=self.load_endpoint)
        self.shadow_executor: Executor = shadow_executor or ThreadPoolExecutor(
            SHADOW_THREADS, thread_name_prefix="modelyard-shadow"
        )
        """Where shadow copies run (see :data:`SHADOW_THREADS`); threads start on first use."""
        self.router = Router(self.table, self._run_shadow, observer=self.metrics.shadow_observer())
        """Canary routing; shadow answers, latency and drops go to the metrics."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batch_observer: BatchObserver | None = None
        """Hears of every batch the dynamic batchers form (endpoints loaded after it is set)."""

    async def infer(
        self,
        endpoint: str,
        version: str | None,
        body: Any,
        *,
        nested: bool = False,
        state: dict[str, Any] | None = None,
        headers: Headers | None = None,
        executor: Executor | None = None,
    ) -> InferResult:
        """Run ``body`` on the endpoint version; ``state`` seeds the request's state (OIP puts
        the request's id and parameters there). A canary name picks its target here (``headers``:
        the request's, for sticky routing by header). ``nested`` (user code's ``send_request``)
        or an explicit ``executor`` (shadow copies) run on their own threads and skip the
        dynamic batcher, so they never wait behind, or hold up, the primary requests."""
        try:
            loaded = self.router.resolve(endpoint, version, body, headers)
        except ModelyardError as exc:
            self.count_rejected(endpoint, version, exc)
            raise
        inst = self.instruments(loaded)
        # a caller's request; a pipeline's inner call or a shadow copy is not refused half-way
        admission = self.admission if not nested and executor is None else None
        if admission is not None:
            try:
                admission.enter()
            except ModelyardError as exc:
                inst.count(status_for(exc))
                exc.endpoint = loaded.key
                raise
        custom = inst.custom
        sampled = custom is not None and custom.sampled()
        state = {} if state is None else state
        inst.inflight.inc()
        started = time.perf_counter()
        try:
            value = await loaded.run(
                body,
                state,
                custom if sampled else _no_statistics,
                executor or (self.nested_executor if nested else None),
            )
        except ModelyardError as exc:
            inst.count(status_for(exc))
            exc.endpoint = loaded.key  # the error answer names the version that failed
            raise
        except asyncio.CancelledError:
            inst.count(499)  # the client went away
            raise
        except BaseException:
            inst.count(500)
            raise
        finally:
            if admission is not None:
                admission.leave()
            inst.inflight.dec()
            inst.duration.observe(time.perf_counter() - started)
        inst.ok.inc()
        if sampled:
            assert custom is not None
            asyncio.get_running_loop().call_soon(custom.record_fields, body, value)
        return InferResult(loaded.key, value)

    async def _run_shadow(self, endpoint: str, version: str, body: Any) -> None:
        await self.infer(endpoint, version, body, executor=self.shadow_executor)

    # -- metrics ---------------------------------------------------------------------------------
    def count_rejected(self, endpoint: str, version: str | None, exc: ModelyardError) -> None:
        """Count a request refused before it reached an endpoint version (404, 503, 400, 413).

        Labelled only with what the service has (:func:`~modelyard.metrics_labels.request_labels`),
        anything else under ``endpoint="_unknown"``, so random paths cannot grow the series.
        """
        labels = request_labels(endpoint, version, self.table.versions, self.router.plans())
        self.metrics.count_unrouted(*labels, status_for(exc))

    @contextmanager
    def rejections(self, endpoint: str, version: str | None) -> Iterator[None]:
        """Count a :class:`ModelyardError` raised inside as a rejected request (the OIP fronts'
        checks before :meth:`infer`: resolving the model, reading and decoding the body)."""
        try:
            yield
        except ModelyardError as exc:
            self.count_rejected(endpoint, version, exc)
            raise

    def label_keys(self) -> set[str]:
        """Every endpoint key a request can be labelled with now (statistics pushes keep these)."""
        return {*self.table.status, *self.table.versions, *self.router.plans(), UNKNOWN_ENDPOINT}

    def instruments(self, loaded: LoadedEndpoint) -> EndpointInstruments:
        """The endpoint version's metric children, bound once (rebound when metric rules change)."""
        config = self.table.config
        if config is not self._rules_config:
            self._refresh_rules(config)
        inst = loaded.instruments
        if inst is None:
            inst = loaded.instruments = self.metrics.endpoint(loaded.config.endpoint, loaded.config.version)
        if inst.generation != self._rules_generation:
            rule = rule_for(self._rules, loaded.key)
            inst.custom = self.metrics.custom.recorder(rule, loaded.config.endpoint, loaded.config.version)
            inst.generation = self._rules_generation
        return inst

    def _refresh_rules(self, config: ServiceConfig | None) -> None:
        self._rules_config = config
        rules = list(config.metrics) if config is not None else []
        if rules != self._rules:
            self._rules = rules
            self._rules_generation += 1

    async def infer_many(
        self, endpoint: str, version: str | None, bodies: list[Any]
    ) -> tuple[str, list[Any | ModelyardError]]:
        """Run several bodies on one endpoint version: ``(key, [value or error per body])``.

        Routing errors (unknown endpoint, not loaded) raise for the whole call; errors of
        one body come back in its slot.
        """
        try:
            loaded = self.table.resolve(endpoint, version)
        except ModelyardError as exc:
            self.count_rejected(endpoint, version, exc)
            raise
        inst = self.instruments(loaded)
        custom = inst.custom
        collect = custom if custom is not None and custom.sampled() else _no_statistics
        inst.inflight.inc(len(bodies))
        started = time.perf_counter()
        try:
            outcomes = await loaded.run_many(bodies, collect)
        except BaseException:
            for _ in bodies:
                inst.count(500)
            raise
        finally:
            inst.inflight.dec(len(bodies))
        elapsed = time.perf_counter() - started
        for outcome in outcomes:
            inst.count(status_for(outcome) if isinstance(outcome, ModelyardError) else 200)
            inst.duration.observe(elapsed)
        return loaded.key, outcomes

    # -- user code's calls into other endpoints (pipelines) -------------------------------------
    def send_request(self, endpoint: str, version: str | None = None, data: Any = None) -> Any:
        """Blocking call for sync user code; runs the target on the event loop."""
        assert self.loop is not None, "the data plane is not running"
        if _running_loop() is self.loop:
            raise RunInPool  # blocking here would stall the loop it waits on; see serving.inline
        future = asyncio.run_coroutine_threadsafe(self.async_send_request(endpoint, version, data), self.loop)
        return future.result()

    async def async_send_request(self, endpoint: str, version: str | None = None, data: Any = None) -> Any:
        """The answer another endpoint would give over HTTP, as decoded JSON."""
        endpoint = endpoint.strip("/")
        if version is None and "/" in endpoint:
            endpoint, _, version = endpoint.partition("/")
        result = await self.infer(endpoint, version or None, data, nested=True)
        return orjson.loads(encode_json(result.value))

    # -- loading ---------------------------------------------------------------------------------
    def _user_error_logged(self) -> None:
        """A user-code error was logged (as rate-limited as the log; any thread): report the
        replica's status soon, so ``modelyard endpoint show`` sees the error."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.table.on_change)

    async def load_endpoint(self, config: EndpointConfig) -> LoadedEndpoint:
        started = time.perf_counter()
        try:
            model_path = None
            if config.model is not None:
                if config.model.artifact is None:
                    raise ModelLoadError(f"model {config.model.id} has no stored artifact")
                model_path = await self.cache.path_for(config.model.artifact)
            code_path = await self.cache.path_for(config.preprocess) if config.preprocess else None
        except Exception:
            self.metrics.load_failed(config.endpoint, config.version, config.engine)
            raise

        def build() -> LoadedEndpoint:
            user = None
            if code_path is not None:
                user = UserCode.load(
                    code_path,
                    config,
                    send_request=self.send_request,
                    async_send_request=self.async_send_request,
                    limits=self.cache.archive_limits,
                )
                user.errors.notify = self._user_error_logged
            try:
                engine = self.registry.create(config, model_path, user)
                engine.load()
            except BaseException:
                if user is not None:
                    try:
                        user.unload()
                    except Exception:
                        log.exception("unloading user code of %s failed", config.key)
                raise
            return LoadedEndpoint(
                config,
                engine,
                user,
                self.executor,
                self.batch_observer,
                inline_max_s=self.inline_max_s,
                timeout_s=self.request_timeout_s,
                retire_wait_s=self.retire_wait_s,
            )

        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self.load_executor, build)
        except ModelyardError:
            self.metrics.load_failed(config.endpoint, config.version, config.engine)
            raise
        except Exception as exc:
            self.metrics.load_failed(config.endpoint, config.version, config.engine)
            raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc
        self.metrics.loaded(config.endpoint, config.version, config.engine, time.perf_counter() - started)
        return loaded
