"""``Settings.endpoints``: which endpoint versions a replica keeps, and what becomes of canaries."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard.config import CanaryConfig, EndpointConfig, MetricRule, ServiceConfig
from modelyard.serving.selection import filter_config, selects
from modelyard.settings import Settings


def _config(*keys: str, canaries: list[CanaryConfig] | None = None) -> ServiceConfig:
    endpoints = []
    for key in keys:
        endpoint, _, version = key.partition("/")
        endpoints.append(EndpointConfig(endpoint=endpoint, version=version, engine="custom"))
    return ServiceConfig(
        service="s",
        revision=7,
        endpoints=endpoints,
        canaries=canaries or [],
        metrics=[MetricRule(endpoint="iris/*")],
    )


def test_patterns_match_whole_keys() -> None:
    assert selects([], "anything/1")
    assert selects(["iris/a"], "iris/a") and not selects(["iris/a"], "iris/ab")
    assert selects(["iris/*"], "iris/a") and not selects(["iris/*"], "iris")  # versions only
    assert selects(["iris"], "iris") and not selects(["iris"], "iris/a")  # the unversioned one
    assert not selects(["Iris/a"], "iris/a")  # case matters, as in endpoint names
    assert selects(["wine/*", "iris/[ab]"], "iris/b") and not selects(["iris/[ab]"], "iris/c")


def test_endpoints_setting_is_comma_separated_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_ENDPOINTS", " iris/a , iris/* ,")
    assert Settings(_env_file=None).endpoints == ["iris/a", "iris/*"]  # type: ignore[call-arg]
    monkeypatch.setenv("MODELYARD_ENDPOINTS", "")
    assert Settings(_env_file=None).endpoints == []  # type: ignore[call-arg]
    monkeypatch.setenv("MODELYARD_ENDPOINTS", "iris/a b")
    with pytest.raises(ValidationError, match="'iris/a b' is not an endpoint key or pattern"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="'a/b/c'"):
        Settings(endpoints="a/b/c", _env_file=None)  # type: ignore[call-arg]


def test_filter_keeps_matching_versions_and_prunes_canaries() -> None:
    canaries = [
        CanaryConfig(endpoint="iris", targets=["iris/a", "iris/b"], weights=[90, 10], shadow=["iris/b"]),
        CanaryConfig(endpoint="only_b", targets=["iris/b"], weights=[1]),
        CanaryConfig(endpoint="zero_left", targets=["iris/a", "iris/b"], weights=[0, 5]),
        CanaryConfig(endpoint="outer", targets=["only_b", "iris/a"], weights=[3, 1]),
        CanaryConfig(endpoint="via_name", targets=["wine", "iris/b"], weights=[1, 1]),
        CanaryConfig(endpoint="newest", prefix="iris", weights=[1, 1]),
        CanaryConfig(endpoint="newest_wine", prefix="wine", weights=[1]),
    ]
    config = _config("iris/a", "iris/b", "wine/1", canaries=canaries)
    narrowed = filter_config(config, ["iris/a"])
    assert [e.key for e in narrowed.endpoints] == ["iris/a"]
    assert narrowed.revision == 7 and narrowed.metrics == config.metrics
    kept = {c.endpoint: c for c in narrowed.canaries}
    assert list(kept) == ["iris", "outer", "newest"]  # the order of the configuration
    assert kept["iris"].targets == ["iris/a"] and kept["iris"].weights == [90]
    assert kept["iris"].shadow == []  # iris/b is not loaded here
    assert kept["outer"].targets == ["iris/a"]  # only_b lost its target, so outer lost only_b
    assert kept["newest"].prefix == "iris"  # picks the newest of what is loaded
    # the original is untouched (it is what the replica keeps on disk)
    assert [c.endpoint for c in config.canaries][:2] == ["iris", "only_b"]
    assert filter_config(config, []) is config

    both = filter_config(config, ["wine/*", "iris/b"])
    kept = {c.endpoint: c for c in both.canaries}
    assert kept["via_name"].targets == ["wine", "iris/b"]  # ``wine``: its highest version
    assert kept["zero_left"].targets == ["iris/b"] and kept["zero_left"].weights == [5]
    assert kept["newest_wine"].prefix == "wine"
    assert "zero_left" not in {c.endpoint for c in filter_config(config, ["iris/a"]).canaries}


def test_filter_matching_nothing_leaves_an_empty_service() -> None:
    narrowed = filter_config(_config("iris/a"), ["wine/*"])
    assert narrowed.endpoints == [] and narrowed.canaries == []
