"""Custom statistics (clearml-serving's ``metrics add`` contract) on a caller-owned registry.

A :class:`~modelyard.config.MetricRule` names variables of an endpoint version; each becomes a
metric family ``modelyard_custom_<name>`` with ``service``/``endpoint``/``version`` labels:

* ``scalar`` → histogram with the rule's buckets (lists/arrays observe every element);
* ``enum``   → counter ``modelyard_custom_<name>_total`` with a ``value`` label (unknown values
  count as ``other``, so a drifting input cannot blow up the series count);
* ``value``  → gauge (the last value);
* ``counter``→ counter increased by the value (1 for ``None``/``True``).

Values come from the named top-level fields of the request body and response, and from user
code's ``collect_custom_statistics_fn({...})``, for the sampled fraction ``log_freq`` of requests.
Recording never raises: a value that cannot be recorded is counted in
``modelyard_custom_statistics_errors_total``, logged (at most once a minute) and dropped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelyard.config import MetricRule, MetricVariable

log = logging.getLogger("modelyard.metrics")

LABELS = ("service", "endpoint", "version")
LOG_EVERY_S = 60.0


def _numbers(value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        listed = value.tolist()
        return [float(v) for v in listed] if isinstance(listed, list) else [float(listed)]
    return [float(value)]


class CustomRecorder:
    """The collect function of one endpoint version: ``recorder({"x0": 1.5, "y": "cat"})``."""

    def __init__(
        self,
        rule: MetricRule,
        record: dict[str, Callable[[Any], None]],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.rule = rule
        self.log_freq = rule.log_freq
        self.record = record
        self.on_error = on_error
        self._random = random.random

    def sampled(self) -> bool:
        freq = self.log_freq
        return freq >= 1.0 or (freq > 0.0 and self._random() < freq)

    def __call__(self, values: Any) -> None:
        try:
            items = values.items()
        except Exception as exc:
            self.on_error("collect_custom_statistics_fn", exc)
            return
        for name, value in items:
            fn = self.record.get(name)
            if fn is None:
                continue
            try:
                fn(value)
            except Exception as exc:
                self.on_error(str(name), exc)

    def record_fields(self, body: Any, answer: Any) -> None:
        """Record the rule's variables found as top-level fields of the request or the answer."""
        for source in (body, answer):
            if isinstance(source, dict):
                found = {k: source[k] for k in self.record if k in source}
                if found:
                    self(found)


class CustomStatistics:
    """Metric families for custom statistics, created when a rule first names them."""

    def __init__(self, registry: CollectorRegistry, service: str, errors: Any) -> None:
        self.registry = registry
        self.service = service
        self.errors = errors
        self._families: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self._last_log = 0.0

    def _on_error(self, where: str, exc: BaseException) -> None:
        self.errors.inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning("custom statistic %s dropped: %s: %s", where, type(exc).__name__, exc)

    def _family(self, var: MetricVariable) -> Any:
        shape = (var.kind, tuple(var.buckets))
        known = self._families.get(var.name)
        if known is not None and known[0] == shape:
            return known[1]
        if known is not None:  # a rule changed the kind/buckets of this name: start the family anew
            self.registry.unregister(known[1])
        name = f"modelyard_custom_{var.name}"
        doc = f"Custom statistic {var.name!r} ({var.kind})."
        family: Any
        if var.kind == "scalar":
            family = Histogram(name, doc, LABELS, buckets=var.buckets, registry=self.registry)
        elif var.kind == "enum":
            family = Counter(name, doc, [*LABELS, "value"], registry=self.registry)
        elif var.kind == "value":
            family = Gauge(name, doc, LABELS, registry=self.registry, multiprocess_mode="livemostrecent")
        else:
            family = Counter(name, doc, LABELS, registry=self.registry)
        self._families[var.name] = (shape, family)
        return family

    def _recorder(self, var: MetricVariable, endpoint: str, version: str) -> Callable[[Any], None]:
        labels = (self.service, endpoint, version)
        family = self._family(var)
        if var.kind == "scalar":
            child = family.labels(*labels)

            def scalar(value: Any) -> None:
                for number in _numbers(value):
                    child.observe(number)

            return scalar
        if var.kind == "enum":
            children = {v: family.labels(*labels, v) for v in var.values}
            other = family.labels(*labels, "other")

            def enum(value: Any) -> None:
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    children.get(str(item), other).inc()

            return enum
        child = family.labels(*labels)
        if var.kind == "value":
            return lambda value: child.set(float(value))

        def counter(value: Any) -> None:
            child.inc(1.0 if value is None or value is True else float(value))

        return counter

    def recorder(self, rule: MetricRule | None, endpoint: str, version: str) -> CustomRecorder | None:
        """The recorder of ``rule`` for one endpoint version (None without a rule)."""
        if rule is None or not rule.variables:
            return None
        record = {}
        for var in rule.variables:
            try:
                record[var.name] = self._recorder(var, endpoint, version)
            except Exception as exc:  # e.g. a name clashing with a standard metric
                self._on_error(var.name, exc)
        return CustomRecorder(rule, record, self._on_error)


def rule_for(rules: list[MetricRule], key: str) -> MetricRule | None:
    """The most specific rule covering endpoint version ``key`` (exact over ``iris/*``)."""
    best: MetricRule | None = None
    for rule in rules:
        if rule.matches(key) and (best is None or rule.specificity() > best.specificity()):
            best = rule
    return best
