"""Optimistic concurrency: ``If-Match: <revision>`` on service-scoped writes, 409 when stale.

Real control plane (uvicorn in a thread) on SQLite and PostgreSQL; real SDK clients in threads
and real ``modelyard`` CLI processes writing the same service at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.servers import RunningControlPlane, run_control_plane

from modelyard import errors
from modelyard.client import Client
from modelyard.control.revisions import parse_if_match
from modelyard.settings import Settings

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


@pytest.fixture
def plane(settings: Settings, database_url: str) -> Iterator[RunningControlPlane]:
    with run_control_plane(settings.model_copy(update={"database_url": database_url})) as running:
        yield running


def _client(plane: RunningControlPlane) -> Client:
    return Client(plane.url, settings=plane.settings, timeout=30)


@pytest.fixture
def endpoint(plane: RunningControlPlane) -> str:
    with _client(plane) as c:
        c.add_endpoint("default", "iris", version="1", engine="sklearn", options={"start": 0})
    return "iris/1"


def test_parse_if_match() -> None:
    assert parse_if_match(None) is None and parse_if_match("*") is None
    assert parse_if_match("7") == 7 and parse_if_match('"7"') == 7 and parse_if_match('W/"12"') == 12
    with pytest.raises(errors.BadRequest, match="If-Match 'abc' is not a service revision"):
        parse_if_match("abc")


def test_reads_carry_the_revision_and_stale_writes_get_a_clear_409(
    plane: RunningControlPlane, endpoint: str
) -> None:
    token = {"authorization": f"Bearer {plane.admin_token}"}
    with httpx.Client(base_url=f"{plane.url}/api/services/default", headers=token) as http:
        read = http.get(f"/endpoints/{endpoint}")
        revision = int(read.headers["x-modelyard-revision"])
        assert read.headers["etag"] == f'"{revision}"'
        listed = http.get("/endpoints")
        assert listed.headers["x-modelyard-revision"] == str(revision)
        # a write against the current revision goes through and moves it on
        ok = http.patch(
            f"/endpoints/{endpoint}", json={"options": {"a": 1}}, headers={"if-match": f'"{revision}"'}
        )
        assert ok.status_code == 200, ok.text
        # the same revision again is now stale: 409 naming both revisions, nothing changed
        for method, path, body in (
            ("PATCH", f"/endpoints/{endpoint}", {"options": {"b": 2}}),
            ("POST", "/endpoints", {"endpoint": "other", "engine": "sklearn"}),
            ("DELETE", f"/endpoints/{endpoint}", None),
            ("POST", "/metrics", {"endpoint": "iris/*", "variables": [{"name": "x", "kind": "value"}]}),
            ("DELETE", "/metrics/iris/*", None),
        ):
            stale = http.request(method, path, json=body, headers={"if-match": str(revision)})
            assert stale.status_code == 409, (method, path, stale.text)
            assert stale.json() == {
                "kind": "revision_conflict",
                "error": f"service 'default' changed since revision {revision} (it is at revision "
                f"{revision + 1}): another change came in first; read it again and retry",
            }
        assert http.get(f"/endpoints/{endpoint}").json()["options"] == {"a": 1}
        stale_delete = http.delete(f"{plane.url}/api/services/default", headers={"if-match": str(revision)})
        assert stale_delete.status_code == 409
        assert http.patch(f"/endpoints/{endpoint}", json={}, headers={"if-match": "x1"}).status_code == 400
        # no If-Match (or "*"): last writer wins, as before
        assert http.patch(f"/endpoints/{endpoint}", json={"options": {"c": 3}}).status_code == 200
        assert http.patch(f"/endpoints/{endpoint}", json={}, headers={"if-match": "*"}).status_code == 200
    with _client(plane) as c:
        with pytest.raises(errors.RevisionConflict, match="read it again and retry") as caught:
            c.update_endpoint("default", endpoint, options={"d": 4}, if_revision=revision)
        assert caught.value.status == 409  # type: ignore[attr-defined]
        assert isinstance(caught.value, errors.Conflict)


def test_modify_endpoint_rereads_when_another_writer_came_in_between(
    plane: RunningControlPlane, endpoint: str
) -> None:
    calls: list[dict[str, Any]] = []
    with _client(plane) as a, _client(plane) as b:

        def change(current: dict[str, Any]) -> dict[str, Any]:
            calls.append(dict(current["options"]))
            if len(calls) == 1:  # another writer changes the service between A's read and write
                b.merge_endpoint("default", endpoint, options={"from_b": True})
            return {"options": {**current["options"], "from_a": True}}

        out = a.modify_endpoint("default", endpoint, None, change)
    assert calls == [{"start": 0}, {"start": 0, "from_b": True}]
    assert out["options"] == {"start": 0, "from_a": True, "from_b": True}


def test_concurrent_sdk_writers_never_lose_an_update(plane: RunningControlPlane, endpoint: str) -> None:
    per_writer = 15
    failures: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with _client(plane) as c:
                for i in range(per_writer):
                    c.merge_endpoint("default", endpoint, options={f"{name}{i}": i}, attempts=50)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    with _client(plane) as c:
        options = c.get_endpoint("default", endpoint)["options"]
    expected = {"start": 0, **{f"{n}{i}": i for n in "abc" for i in range(per_writer)}}
    assert options == expected


def test_two_cli_processes_updating_one_endpoint_never_lose_an_update(
    plane: RunningControlPlane, endpoint: str
) -> None:
    env = {
        **os.environ,
        "MODELYARD_URL": plane.url,
        "MODELYARD_HOME": str(plane.home),
        "MODELYARD_TOKEN": plane.admin_token,
    }
    env.pop("MODELYARD_SETTINGS_JSON", None)
    count = 6
    script = (
        f'for i in $(seq 1 {count}); do "{MODELYARD}" endpoint update --endpoint {endpoint} '
        '--option "$W$i=$i" --aux "$W-seen=$i" || exit 1; done'
    )
    procs = [
        subprocess.Popen(
            ["sh", "-c", script], env={**env, "W": w}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for w in ("x", "y")
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with _client(plane) as c:
        ep = c.get_endpoint("default", endpoint)
    assert ep["options"] == {"start": 0, **{f"{w}{i}": i for w in "xy" for i in range(1, count + 1)}}
    assert ep["auxiliary"] == {"x-seen": count, "y-seen": count}
