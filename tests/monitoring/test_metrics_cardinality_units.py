"""The labelling rule and the statistics bound, on the real classes without a server."""

from __future__ import annotations

import httpx
import orjson
import pytest

from modelyard.config import MetricRule, MetricVariable
from modelyard.metrics import Metrics
from modelyard.metrics_labels import UNKNOWN_ENDPOINT, method_label, request_labels
from modelyard.serving.stats import StatsReporter, bounded, encode_report, endpoint_stats

VERSIONS = {"iris": ["1", "2"], "plain": [""]}


@pytest.mark.parametrize(
    ("endpoint", "version", "expected"),
    [
        ("iris", "1", ("iris", "1")),
        ("iris", None, ("iris", "")),
        ("iris", "", ("iris", "")),
        ("plain", None, ("plain", "")),
        ("iris", "3", (UNKNOWN_ENDPOINT, "")),  # a version the endpoint does not have
        ("nope", None, (UNKNOWN_ENDPOINT, "")),
        ("nope", "1", (UNKNOWN_ENDPOINT, "")),
        ("split", None, ("split", "")),  # a canary
        ("split", "1", (UNKNOWN_ENDPOINT, "")),  # canaries have no versions
    ],
)
def test_request_labels_name_only_what_the_service_has(
    endpoint: str, version: str | None, expected: tuple[str, str]
) -> None:
    assert request_labels(endpoint, version, VERSIONS, {"split"}) == expected


def test_method_label_is_bounded() -> None:
    assert method_label("GET") == "GET"
    assert {method_label(f"M{i}") for i in range(100)} == {"other"}


def _busy_metrics(endpoints: int, requests_of: dict[int, int] | None = None) -> Metrics:
    metrics = Metrics(gpu=False)
    for i in range(endpoints):
        inst = metrics.endpoint(f"ep{i}", "1")
        for _ in range((requests_of or {}).get(i, 1)):
            inst.ok.inc()
            inst.duration.observe(0.01)
    return metrics


def test_statistics_report_is_cut_to_the_limit_keeping_the_busiest() -> None:
    metrics = _busy_metrics(400, {7: 50, 123: 40})
    full = endpoint_stats(metrics)
    assert len(encode_report(0.0, full)) > 100_000  # what would be sent unbounded
    reporter = StatsReporter(
        http=httpx.AsyncClient(), service="default", replica="r", metrics=metrics, max_bytes=8192
    )
    sent = reporter.collect()
    assert len(encode_report(1e12, sent)) <= 8192
    assert "ep7/1" in sent and "ep123/1" in sent  # the busiest first
    assert 10 < len(sent) < 400


def test_statistics_report_names_only_known_keys() -> None:
    metrics = _busy_metrics(5)
    metrics.count_unrouted(UNKNOWN_ENDPOINT, "", 404)
    known = {"ep0/1", "ep1/1", UNKNOWN_ENDPOINT}
    reporter = StatsReporter(
        http=httpx.AsyncClient(), service="default", replica="r", metrics=metrics, known=lambda: known
    )
    sent = reporter.collect()
    assert set(sent) == known
    assert sent[UNKNOWN_ENDPOINT]["codes"] == {"404": 1}


def test_bounded_leaves_a_small_report_alone() -> None:
    report = endpoint_stats(_busy_metrics(3))
    assert bounded(report, 65536) == (report, 0)
    kept, left_out = bounded(report, 64)  # not even one entry fits
    assert (kept, left_out) == ({}, 3)
    assert len(orjson.dumps({"time": 1e12, "endpoints": kept})) <= 64


def test_user_code_cannot_name_new_custom_series() -> None:
    """Only a rule's variables become series; enum values outside the rule count as ``other``."""
    metrics = Metrics(gpu=False)
    rule = MetricRule(
        endpoint="iris/*",
        log_freq=1.0,
        variables=[MetricVariable(name="animal", kind="enum", values=["cat"])],
    )
    recorder = metrics.custom.recorder(rule, "iris", "1")
    assert recorder is not None

    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (s.name, tuple(sorted(s.labels.items()))) for f in metrics.registry.collect() for s in f.samples
        }

    recorder({"animal": "cat"})
    before = series()
    for i in range(500):
        recorder({f"made_up_{i}": i, "animal": f"random-{i}"})
    assert series() == before
