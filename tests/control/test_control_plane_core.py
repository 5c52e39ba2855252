"""ControlPlane (no HTTP) on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from modelyard.artifacts import ArtifactStore
from modelyard.config import ArtifactRef, TensorSpec
from modelyard.control import (
    ControlPlane,
    EndpointPatch,
    EndpointSpec,
    ModelQuery,
    ReplicaEndpointState,
    ReplicaReport,
)
from modelyard.control.watch import RevisionWatch
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.registry import ModelCreate
from modelyard.store import Database, upgrade


@pytest.fixture
def plane(database_url: str, tmp_path: Path) -> Iterator[ControlPlane]:
    db = Database(database_url)
    upgrade(db)
    yield ControlPlane(db, ArtifactStore(str(tmp_path / "artifacts")))
    db.dispose()


def _model(plane: ControlPlane, name: str = "iris", **kw: object) -> str:
    sha, _ = plane.artifacts.put_bytes(f"{name}{kw}".encode())
    body = {"name": name, "framework": "sklearn", "artifact_sha256": sha, **kw}
    return plane.registry.create(ModelCreate.model_validate(body)).id


def test_services_crud(plane: ControlPlane) -> None:
    created = plane.create_service("a", "first")
    assert (created.name, created.description, created.revision) == ("a", "first", 1)
    plane.create_service("b")
    assert [s.name for s in plane.list_services()] == ["a", "b"]
    with pytest.raises(Conflict, match="service 'a' already exists"):
        plane.create_service("a")
    with pytest.raises(BadRequest, match="not a valid name"):
        plane.create_service("bad/name")
    assert plane.ensure_service("a").description == "first"
    assert plane.ensure_service("c").revision == 1
    plane.delete_service("a")
    with pytest.raises(NotFound, match="service 'a' not found"):
        plane.get_service("a")
    with pytest.raises(NotFound, match="service 'a' not found"):
        plane.delete_service("a")


def test_each_endpoint_write_bumps_revision_by_one(plane: ControlPlane) -> None:
    plane.create_service("svc")
    mid = _model(plane)
    spec = EndpointSpec(endpoint="iris", engine="sklearn", model_id=mid)
    ep, created = plane.add_endpoint("svc", spec)
    assert created and ep.key == "iris" and plane.current_revision("svc") == 2
    ep2, created = plane.add_endpoint("svc", spec.model_copy(update={"options": {"x": 1}}))
    assert not created and ep2.options == {"x": 1} and plane.current_revision("svc") == 3
    assert ep2.created_at == ep.created_at and ep2.updated_at >= ep.updated_at
    patched = plane.update_endpoint("svc", "iris", EndpointPatch(auxiliary={"k": "v"}))
    assert patched.options == {"x": 1} and patched.auxiliary == {"k": "v"}
    assert plane.current_revision("svc") == 4
    plane.remove_endpoint("svc", "iris")
    assert plane.current_revision("svc") == 5
    assert plane.list_endpoints("svc") == []


def test_failed_writes_do_not_bump(plane: ControlPlane) -> None:
    plane.create_service("svc")
    with pytest.raises(NotFound, match="model nope not found"):
        plane.add_endpoint("svc", EndpointSpec(endpoint="e", engine="sklearn", model_id="nope"))
    with pytest.raises(BadRequest, match="unknown engine 'magic'"):
        plane.add_endpoint("svc", EndpointSpec(endpoint="e", engine="magic"))
    with pytest.raises(NotFound, match="endpoint 'e/1' not found in service 'svc'"):
        plane.remove_endpoint("svc", "e/1")
    with pytest.raises(NotFound, match="service 'nosvc' not found"):
        plane.add_endpoint("nosvc", EndpointSpec(endpoint="e", engine="custom"))
    assert plane.current_revision("svc") == 1


def test_services_are_separate(plane: ControlPlane) -> None:
    plane.create_service("a")
    plane.create_service("b")
    plane.add_endpoint("a", EndpointSpec(endpoint="e", engine="custom"))
    assert [e.key for e in plane.list_endpoints("a")] == ["e"]
    assert plane.list_endpoints("b") == []
    assert (plane.current_revision("a"), plane.current_revision("b")) == (2, 1)
    with pytest.raises(NotFound, match="endpoint 'e' not found in service 'b'"):
        plane.get_endpoint("b", "e")
    plane.delete_service("a")  # takes its endpoints along
    plane.create_service("a")
    assert plane.list_endpoints("a") == []


def test_model_query_picks_newest_match(plane: ControlPlane) -> None:
    plane.create_service("svc")
    _model(plane, "iris", published=True)
    newest_published = _model(plane, "iris", published=True, tags=["prod"])
    _model(plane, "iris")  # newer but unpublished
    query = ModelQuery(name="iris", published=True)
    ep, _ = plane.add_endpoint("svc", EndpointSpec(endpoint="i", engine="sklearn", model_query=query))
    assert ep.model_id == newest_published
    with pytest.raises(NotFound, match="no model matches"):
        plane.add_endpoint(
            "svc", EndpointSpec(endpoint="j", engine="sklearn", model_query=ModelQuery(tags=["none"]))
        )
    later = _model(plane, "iris", published=True)
    patched = plane.update_endpoint("svc", "i", EndpointPatch(model_query=query))
    assert patched.model_id == later


def test_patch_rules(plane: ControlPlane) -> None:
    plane.create_service("svc")
    mid = _model(plane)
    plane.add_endpoint("svc", EndpointSpec(endpoint="e", version="1", engine="sklearn", model_id=mid))
    with pytest.raises(BadRequest, match="cannot rename"):
        plane.update_endpoint("svc", "e/1", EndpointPatch(endpoint="f"))
    with pytest.raises(BadRequest, match="unknown engine 'zzz'"):
        plane.update_endpoint("svc", "e/1", EndpointPatch(engine="zzz"))
    with pytest.raises(NotFound, match="endpoint 'e/2' not found"):
        plane.update_endpoint("svc", "e/2", EndpointPatch(options={}))
    cleared = plane.update_endpoint(
        "svc", "e/1", EndpointPatch.model_validate({"model_id": None, "engine": "custom"})
    )
    assert cleared.model_id is None and cleared.engine == "custom"
    assert plane.current_revision("svc") == 3


def test_preprocess_artifact_must_exist(plane: ControlPlane) -> None:
    plane.create_service("svc")
    missing = ArtifactRef(sha256="a" * 64, filename="pre.py")
    with pytest.raises(NotFound, match=f"preprocess artifact {'a' * 64} \\(pre.py\\) not found"):
        plane.add_endpoint("svc", EndpointSpec(endpoint="e", engine="custom", preprocess=missing))
    sha, size = plane.artifacts.put_bytes(b"class Preprocess: pass\n")
    ref = ArtifactRef(sha256=sha, filename="pre.py")
    ep, _ = plane.add_endpoint("svc", EndpointSpec(endpoint="e", engine="custom", preprocess=ref))
    assert ep.preprocess == ArtifactRef(sha256=sha, filename="pre.py", size=size)


def test_render_config(plane: ControlPlane) -> None:
    plane.create_service("svc")
    mid = _model(plane, "iris", project="p")
    plane.add_endpoint(
        "svc",
        EndpointSpec(
            endpoint="iris",
            version="1",
            engine="sklearn",
            model_id=mid,
            inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
            options={"max_batch_size": 8},
        ),
    )
    plane.add_endpoint("svc", EndpointSpec(endpoint="echo", engine="custom"))
    config = plane.render_config("svc")
    assert config.service == "svc" and config.revision == 3
    by_key = config.endpoint_map()
    assert set(by_key) == {"iris/1", "echo"}
    iris = by_key["iris/1"]
    assert iris.model is not None
    assert (iris.model.id, iris.model.name, iris.model.project, iris.model.version) == (mid, "iris", "p", 1)
    assert iris.model.artifact is not None
    assert iris.inputs[0].shape == [-1, 4] and iris.options == {"max_batch_size": 8}
    assert by_key["echo"].model is None
    # unchanged endpoints keep their fingerprint across revisions
    before = by_key["echo"].fingerprint()
    plane.update_endpoint("svc", "iris/1", EndpointPatch(options={}))
    after = plane.render_config("svc")
    assert after.revision == 4
    assert after.endpoint_map()["echo"].fingerprint() == before
    assert after.endpoint_map()["iris/1"].fingerprint() != iris.fingerprint()


def test_replica_reports_and_status(plane: ControlPlane) -> None:
    plane.create_service("svc")
    report = ReplicaReport(
        revision=1,
        endpoints=[ReplicaEndpointState(key="iris/1", state="failed", error="bad file", engine="sklearn")],
    )
    plane.report_replica("svc", "r1", report)
    plane.report_replica("svc", "r1", report.model_copy(update={"revision": 2}))
    plane.report_replica("svc", "r2", ReplicaReport(revision=1))
    status = plane.service_status("svc")
    assert status.service == "svc" and status.revision == 1
    assert [(r.id, r.revision) for r in status.replicas] == [("r1", 2), ("r2", 1)]
    assert status.replicas[0].endpoints[0].error == "bad file"
    assert plane.service_status("svc", fresh_s=-1).replicas == []  # stale ones drop out
    with pytest.raises(NotFound, match="service 'x' not found"):
        plane.report_replica("x", "r1", report)


def test_tokens(plane: ControlPlane) -> None:
    created = plane.create_token("ci", "reader")
    assert created.token and plane.verify_token(created.token) == "reader"
    admin = plane.create_token("ops", "admin")
    assert plane.verify_token(admin.token) == "admin"
    assert plane.verify_token("wrong") is None
    with pytest.raises(Conflict, match="token 'ci' already exists"):
        plane.create_token("ci", "reader")
    assert [(t.name, t.role) for t in plane.list_tokens()] == [("ci", "reader"), ("ops", "admin")]
    plane.revoke_token("ci")
    assert plane.verify_token(created.token) is None
    with pytest.raises(NotFound, match="token 'ci' not found"):
        plane.revoke_token("ci")


def test_admin_token_file_created_once_then_reused(plane: ControlPlane, tmp_path: Path) -> None:
    token_file = tmp_path / "home" / "token"
    first = plane.ensure_admin_token(token_file)
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert token_file.read_text().strip() == first
    assert plane.ensure_admin_token(token_file) == first
    assert plane.verify_token(first) == "admin"
    assert [t.name for t in plane.list_tokens()] == ["admin"]


def test_existing_token_file_is_registered(plane: ControlPlane, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("my-own-secret\n")
    plane.create_token("admin", "reader")  # the name is taken: another is picked
    assert plane.ensure_admin_token(token_file) == "my-own-secret"
    assert plane.verify_token("my-own-secret") == "admin"
    assert {t.name for t in plane.list_tokens()} == {"admin", "admin-2"}


def test_concurrent_endpoint_writes_each_bump_once(plane: ControlPlane) -> None:
    plane.create_service("svc")
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            for j in range(5):
                plane.add_endpoint("svc", EndpointSpec(endpoint=f"e{i}", version=str(j), engine="custom"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert plane.current_revision("svc") == 1 + 4 * 5
    assert len(plane.render_config("svc").endpoints) == 20


def test_revision_watch_shares_one_poll_between_waiters_and_wakes_on_notify() -> None:
    reads: list[str] = []
    revisions = {"svc": 3}

    def read(service: str) -> int:
        reads.append(service)
        if service not in revisions:
            raise NotFound(f"service {service!r} not found")
        return revisions[service]

    async def scenario() -> None:
        watch = RevisionWatch(read, interval_s=0.05)
        assert await watch.wait("svc", 2, 5.0) == 3, "differs already: answered at once"
        assert await watch.wait("svc", 4, 5.0) == 3, "lower (service re-created): answered at once"

        # twenty long-polls share one poll of the database
        waiters = [asyncio.create_task(watch.wait("svc", 3, 5.0)) for _ in range(20)]
        await asyncio.sleep(0.5)
        polled = len(reads) - 2 - 20  # minus the first two calls and each waiter's own first read
        assert polled <= 0.5 / 0.05 + 2, f"{polled} reads in 0.5 s for 20 waiters"
        revisions["svc"] = 4  # a write by another process: seen on the next shared read
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [4] * 20

        # a write of this process wakes the waiters without waiting for the interval
        slow = RevisionWatch(read, interval_s=30)
        waiter = asyncio.create_task(slow.wait("svc", 4, 10.0))
        await asyncio.sleep(0.05)
        revisions["svc"] = 5
        started = time.monotonic()
        slow.notify("svc")
        assert await asyncio.wait_for(waiter, 2) == 5 and time.monotonic() - started < 0.5

        async def gone() -> bool:
            return True

        started = time.monotonic()
        assert await watch.wait("svc", 5, 5.0, gone=gone) is None
        assert time.monotonic() - started < 1.5
        assert await watch.wait("svc", 5, 0.1) is None, "timed out"
        with pytest.raises(NotFound):
            await watch.wait("nope", 1, 1.0)

        # a service removed while waited on: the waiter hears of it
        waiter = asyncio.create_task(watch.wait("svc", 5, 5.0))
        await asyncio.sleep(0.1)
        del revisions["svc"]
        with pytest.raises(NotFound):
            await asyncio.wait_for(waiter, 1)
        await asyncio.sleep(0.1)
        quiet = len(reads)
        await asyncio.sleep(0.3)
        assert len(reads) == quiet, "nobody waits: nobody polls"

    anyio.run(scenario)
