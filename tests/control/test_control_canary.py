"""Canary routing endpoints on the control plane (real app under uvicorn, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.servers import run_uvicorn_in_thread

from modelyard.control.api import create_control_app
from modelyard.settings import Settings

SERVICE = "default"


@pytest.fixture
def api(settings: Settings, database_url: str) -> Iterator[httpx.Client]:
    app_settings = settings.model_copy(update={"database_url": database_url})
    app: FastAPI = create_control_app(app_settings)
    token = app_settings.token_file().read_text().strip()
    try:
        with (
            run_uvicorn_in_thread(app) as url,
            httpx.Client(
                base_url=f"{url}/api", headers={"authorization": f"Bearer {token}"}, timeout=30
            ) as client,
        ):
            yield client
    finally:
        app.state.db.dispose()


def revision(api: httpx.Client) -> int:
    return int(api.get(f"/services/{SERVICE}").json()["revision"])


def add_endpoint(api: httpx.Client, endpoint: str, version: str) -> None:
    r = api.post(
        f"/services/{SERVICE}/endpoints", json={"endpoint": endpoint, "version": version, "engine": "sklearn"}
    )
    assert r.status_code == 201, r.text


def add_canary(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post(f"/services/{SERVICE}/canaries", json=body)


@pytest.fixture
def iris(api: httpx.Client) -> httpx.Client:
    for version in ("1", "2", "10"):
        add_endpoint(api, "iris", version)
    return api


def test_add_list_get_remove_bumps_revision_and_reaches_the_config(iris: httpx.Client) -> None:
    api = iris
    before = revision(api)
    r = add_canary(api, endpoint="iris_canary", weights=[0.1, 0.9], targets=["iris/2", "iris/1"])
    assert r.status_code == 201, r.text
    assert r.json()["resolved"] == ["iris/2", "iris/1"] and r.json()["missing"] == []
    assert revision(api) == before + 1
    r = add_canary(api, endpoint="iris_ab", weights=[1, 3], prefix="iris", sticky_key="header:X-User-Id",
                   shadow=["iris/1"])  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["resolved"] == ["iris/10", "iris/2"]  # numeric order, newest first
    config = api.get(f"/services/{SERVICE}/config").json()
    assert config["revision"] == before + 2
    by_name = {c["endpoint"]: c for c in config["canaries"]}
    assert by_name["iris_canary"]["weights"] == [0.1, 0.9]
    assert by_name["iris_ab"]["prefix"] == "iris" and by_name["iris_ab"]["shadow"] == ["iris/1"]
    # replacing keeps one canary and answers 200
    r = add_canary(api, endpoint="iris_canary", weights=[0.5, 0.5], targets=["iris/2", "iris/1"])
    assert r.status_code == 200
    assert [c["canary"]["endpoint"] for c in api.get(f"/services/{SERVICE}/canaries").json()] == [
        "iris_ab",
        "iris_canary",
    ]
    assert api.get(f"/services/{SERVICE}/canaries/iris_canary").json()["canary"]["weights"] == [0.5, 0.5]
    assert api.delete(f"/services/{SERVICE}/canaries/iris_canary").status_code == 204
    assert revision(api) == before + 4
    assert api.get(f"/services/{SERVICE}/canaries/iris_canary").status_code == 404
    assert api.delete(f"/services/{SERVICE}/canaries/iris_canary").status_code == 404


def test_a_removed_target_is_listed_as_missing(iris: httpx.Client) -> None:
    api = iris
    add_canary(api, endpoint="c", weights=[1, 1], targets=["iris/2", "iris/1"])
    assert api.delete(f"/services/{SERVICE}/endpoints/iris/2").status_code == 204
    info = api.get(f"/services/{SERVICE}/canaries/c").json()
    assert info["missing"] == ["iris/2"] and info["resolved"] == ["iris/1"]


def test_canaries_may_chain_and_a_target_canary_cannot_be_removed(iris: httpx.Client) -> None:
    api = iris
    assert add_canary(api, endpoint="inner", weights=[1, 1], targets=["iris/2", "iris/1"]).status_code == 201
    assert add_canary(api, endpoint="outer", weights=[1, 1], targets=["inner", "iris/10"]).status_code == 201
    r = api.delete(f"/services/{SERVICE}/canaries/inner")
    assert r.status_code == 409 and "outer" in r.json()["error"]


BAD = [
    ({"weights": [-0.1, 1.1], "targets": ["iris/2", "iris/1"]}, 422, "not negative"),
    ({"weights": [0, 0], "targets": ["iris/2", "iris/1"]}, 422, "sum to zero"),
    ({"weights": [0.1, 0.2, 0.7], "targets": ["iris/2", "iris/1"]}, 422, "one weight per target"),
    ({"weights": [1], "targets": ["iris/2", "iris/1"]}, 422, "one weight per target"),
    ({"weights": [1, 1], "targets": ["iris/2", "iris/7"]}, 404, "iris/7"),
    ({"weights": [1, 1], "targets": ["iris/2", "nothing"]}, 404, "nothing"),
    ({"weights": [1, 1], "targets": ["iris/2", "c"]}, 422, "itself"),
    ({"weights": [1], "prefix": "c"}, 422, "itself"),
    ({"weights": [1], "prefix": "absent"}, 404, "absent"),
    ({"weights": [1, 1], "targets": ["iris/2", "iris/1"], "prefix": "iris"}, 422, "not both"),
    ({"weights": [1]}, 422, "not both"),
    ({"weights": [1, 1], "targets": ["iris/2", "iris/1"], "sticky_key": "cookie:x"}, 422, "header:"),
    ({"weights": [1, 1], "targets": ["iris/2", "iris/1"], "shadow": ["iris/9"]}, 404, "iris/9"),
    ({"weights": [1, 1], "targets": ["iris/2", "iris/1"], "shadow": ["iris"]}, 422, "endpoint version"),
    ({"weights": [float("inf"), 1], "targets": ["iris/2", "iris/1"]}, 422, ""),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD)
def test_bad_canaries_are_refused_with_the_reason_and_nothing_stored(
    iris: httpx.Client, body: dict[str, Any], status: int, reason: str
) -> None:
    api = iris
    before = revision(api)
    if body["weights"] and body["weights"][0] == float("inf"):
        raw = b'{"endpoint":"c","weights":[1e999,1],"targets":["iris/2","iris/1"]}'
        r = api.post(
            f"/services/{SERVICE}/canaries", content=raw, headers={"content-type": "application/json"}
        )
    else:
        r = add_canary(api, endpoint="c", **body)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]
    assert revision(api) == before
    assert api.get(f"/services/{SERVICE}/canaries").json() == []


def test_a_loop_through_other_canaries_is_refused(iris: httpx.Client) -> None:
    api = iris
    assert add_canary(api, endpoint="a", weights=[1, 1], targets=["iris/1", "iris/2"]).status_code == 201
    assert add_canary(api, endpoint="b", weights=[1, 1], targets=["a", "iris/2"]).status_code == 201
    before = revision(api)
    r = add_canary(api, endpoint="a", weights=[1, 1], targets=["b", "iris/2"])  # a -> b -> a
    assert r.status_code == 400, r.text
    assert "loop" in r.json()["error"] and "a -> b -> a" in r.json()["error"]
    assert revision(api) == before
    stored = api.get(f"/services/{SERVICE}/canaries/a").json()["canary"]
    assert stored["targets"] == ["iris/1", "iris/2"]


def test_a_canary_may_share_a_versioned_name_but_never_an_unversioned_one(iris: httpx.Client) -> None:
    api = iris
    # iris/1, iris/2, iris/10 are versioned: a canary "iris" answers /serve/iris, versions stay direct
    r = add_canary(api, endpoint="iris", weights=[1, 1], targets=["iris/2", "iris/1"])
    assert r.status_code == 201, r.text
    # ...and then an unversioned endpoint "iris" would shadow the canary
    before = revision(api)
    r = api.post(
        f"/services/{SERVICE}/endpoints", json={"endpoint": "iris", "version": "", "engine": "sklearn"}
    )
    assert r.status_code == 409, r.text
    assert "'iris' is a canary" in r.json()["error"]
    assert revision(api) == before
    # the other way round: an unversioned endpoint takes the name first
    add_endpoint(api, "solo", "")
    before = revision(api)
    r = add_canary(api, endpoint="solo", weights=[1], targets=["iris/1"])
    assert r.status_code == 409 and "already an unversioned endpoint" in r.json()["error"]
    assert revision(api) == before


def test_if_match_applies_to_canary_writes(iris: httpx.Client) -> None:
    api = iris
    stale = revision(api) - 1
    r = api.post(
        f"/services/{SERVICE}/canaries",
        json={"endpoint": "c", "weights": [1], "targets": ["iris/1"]},
        headers={"if-match": f'"{stale}"'},
    )
    assert r.status_code == 409 and r.json()["kind"] == "revision_conflict"
    assert api.get(f"/services/{SERVICE}/canaries").json() == []
