"""Auto-deploy rules on the control plane (real app under uvicorn, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.servers import run_uvicorn_in_thread

from modelyard.control.api import create_control_app
from modelyard.settings import Settings

S = "/services/default"


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
    return int(api.get(S).json()["revision"])


def upload(api: httpx.Client, data: bytes) -> str:
    r = api.post("/artifacts", content=data)
    assert r.status_code == 201, r.text
    return str(r.json()["sha256"])


def model(api: httpx.Client, name: str = "iris", **kw: Any) -> str:
    body = {
        "name": name,
        "project": "demo",
        "framework": "sklearn",
        "artifact_sha256": upload(api, b"m"),
        **kw,
    }
    r = api.post("/models", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def code(api: httpx.Client, text: str) -> dict[str, Any]:
    return {"sha256": upload(api, text.encode()), "filename": "p.py", "kind": "file"}


def deployed(api: httpx.Client, endpoint: str = "iris_auto") -> dict[str, str | None]:
    return {d["key"]: d["model_id"] for d in api.get(f"{S}/auto-deploy/{endpoint}").json()["deployed"]}


def rule(**kw: Any) -> dict[str, Any]:
    base = {"endpoint": "iris_auto", "engine": "sklearn", "name": "iris.*", "project": "demo"}
    return {**base, **kw}


def test_matching_models_become_numbered_versions_newest_n_kept(api: httpx.Client) -> None:
    m1, m2, m3 = model(api, published=True), model(api, published=True), model(api, published=True)
    model(api)  # not published
    model(api, "other", published=True)  # name does not match
    before = revision(api)
    r = api.post(f"{S}/auto-deploy", json=rule(published=True, max_versions=2))
    assert r.status_code == 201, r.text
    assert deployed(api) == {"iris_auto/1": m2, "iris_auto/2": m3}
    assert revision(api) == before + 1
    # publishing a model deploys it in the same request: no poll, no command
    m5 = model(api)
    r = api.post(f"/models/{m5}/publish")
    assert r.status_code == 200, r.text
    assert deployed(api) == {"iris_auto/2": m3, "iris_auto/3": m5}
    assert revision(api) == before + 2
    keys = {f"{e['endpoint']}/{e['version']}" for e in api.get(f"{S}/config").json()["endpoints"]}
    assert keys == {"iris_auto/2", "iris_auto/3"}
    # a newly created, published model: at once too; numbers are never reused
    m6 = model(api, "iris-v2", published=True)
    assert deployed(api) == {"iris_auto/3": m5, "iris_auto/4": m6}
    assert m1 not in deployed(api).values()


def test_tagging_deploys_and_untagging_retires(api: httpx.Client) -> None:
    api.post(f"{S}/auto-deploy", json=rule(tags=["prod"], max_versions=3))
    assert deployed(api) == {}
    m = model(api)
    assert deployed(api) == {}
    before = revision(api)
    assert api.post(f"/models/{m}/tags", json={"add": ["prod"]}).status_code == 200
    assert deployed(api) == {"iris_auto/1": m}
    assert revision(api) == before + 1
    api.post(f"/models/{m}/tags", json={"remove": ["prod"]})
    assert deployed(api) == {}
    # a deployed model cannot be removed from the registry while served
    api.post(f"/models/{m}/tags", json={"add": ["prod"]})
    assert api.delete(f"/models/{m}").status_code == 409


def test_preprocess_is_bound_at_deploy_time_unless_applied_to_existing(api: httpx.Client) -> None:
    one, two, three = code(api, "# one"), code(api, "# two"), code(api, "# three")
    model(api, published=True)
    api.post(f"{S}/auto-deploy", json=rule(published=True, max_versions=3, preprocess=one))
    r = api.patch(f"{S}/auto-deploy/iris_auto", json={"preprocess": two})
    assert r.status_code == 200, r.text
    model(api, published=True)
    by_key = {
        d["key"]: d["preprocess"]["sha256"] for d in api.get(f"{S}/auto-deploy/iris_auto").json()["deployed"]
    }
    assert by_key == {"iris_auto/1": one["sha256"], "iris_auto/2": two["sha256"]}
    r = api.patch(f"{S}/auto-deploy/iris_auto", json={"preprocess": three, "apply_to_existing": True})
    assert r.status_code == 200, r.text
    assert {d["preprocess"]["sha256"] for d in r.json()["deployed"]} == {three["sha256"]}
    config = {f"{e['endpoint']}/{e['version']}": e for e in api.get(f"{S}/config").json()["endpoints"]}
    assert config["iris_auto/1"]["preprocess"]["sha256"] == three["sha256"]


def test_lowering_max_versions_retires_the_oldest(api: httpx.Client) -> None:
    ids = [model(api, published=True) for _ in range(3)]
    api.post(f"{S}/auto-deploy", json=rule(max_versions=3))
    assert list(deployed(api).values()) == ids
    r = api.patch(f"{S}/auto-deploy/iris_auto", json={"max_versions": 1})
    assert r.status_code == 200
    assert deployed(api) == {"iris_auto/3": ids[2]}


def test_remove_takes_the_versions_unless_kept(api: httpx.Client) -> None:
    model(api, published=True)
    api.post(f"{S}/auto-deploy", json=rule())
    before = revision(api)
    assert api.delete(f"{S}/auto-deploy/iris_auto", params={"keep_endpoints": "true"}).status_code == 204
    assert [e["key"] for e in api.get(f"{S}/endpoints").json()] == ["iris_auto/1"]
    assert revision(api) == before + 1
    api.delete(f"{S}/endpoints/iris_auto/1")
    api.post(f"{S}/auto-deploy", json=rule())
    assert api.delete(f"{S}/auto-deploy/iris_auto").status_code == 204
    assert api.get(f"{S}/endpoints").json() == []
    assert api.get(f"{S}/auto-deploy").json() == []
    assert api.delete(f"{S}/auto-deploy/iris_auto").status_code == 404


BAD = [
    (rule(name="iris(["), 422, "not a valid regular expression"),
    (rule(max_versions=0), 422, "at least 1"),
    (rule(max_versions=-3), 422, "at least 1"),
    (rule(engine="nope"), 400, "unknown engine"),
    (rule(endpoint="bad/name"), 422, "not a valid name"),
    (rule(preprocess={"sha256": "0" * 64, "filename": "p.py"}), 404, "preprocess"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD)
def test_bad_rules_are_refused_with_the_reason_and_nothing_stored(
    api: httpx.Client, body: dict[str, Any], status: int, reason: str
) -> None:
    model(api, published=True)
    before = revision(api)
    r = api.post(f"{S}/auto-deploy", json=body)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]
    assert revision(api) == before
    assert api.get(f"{S}/auto-deploy").json() == [] and api.get(f"{S}/endpoints").json() == []


def test_bad_updates_are_refused_and_the_rule_stays(api: httpx.Client) -> None:
    api.post(f"{S}/auto-deploy", json=rule(max_versions=2))
    before = revision(api)
    for patch, status in (({"max_versions": 0}, 422), ({"name": "("}, 422), ({"engine": "nope"}, 400)):
        r = api.patch(f"{S}/auto-deploy/iris_auto", json=patch)
        assert r.status_code == status, r.text
    assert revision(api) == before
    assert api.get(f"{S}/auto-deploy/iris_auto").json()["max_versions"] == 2


def test_a_rule_cannot_take_a_used_name(api: httpx.Client) -> None:
    r = api.post(f"{S}/endpoints", json={"endpoint": "iris", "version": "1", "engine": "sklearn"})
    assert r.status_code == 201
    api.post(f"{S}/canaries", json={"endpoint": "iris_canary", "weights": [1], "targets": ["iris/1"]})
    before = revision(api)
    for name in ("iris", "iris_canary"):
        r = api.post(f"{S}/auto-deploy", json=rule(endpoint=name))
        assert r.status_code == 409, r.text
    assert revision(api) == before
    # and a canary may use the prefix of a rule that has deployed nothing yet
    api.post(f"{S}/auto-deploy", json=rule(name="nothing-matches"))
    r = api.post(f"{S}/canaries", json={"endpoint": "ab", "weights": [0.1, 0.9], "prefix": "iris_auto"})
    assert r.status_code == 201, r.text
    assert r.json()["missing"] == ["iris_auto/*"]
