"""Replicas' status reports are bounded like their statistics rows: rows per service, entries
per report, error texts and replica ids (a replica token cannot grow the database at will)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.artifacts import ArtifactStore
from modelyard.control import ControlPlane
from modelyard.control.replicas import ENDPOINTS_MARGIN, MAX_ERROR_CHARS
from modelyard.control.schemas import EndpointSpec, ReplicaEndpointState, ReplicaReport, UserCodeErrorReport
from modelyard.errors import BadRequest
from modelyard.registry import ModelCreate
from modelyard.store import Database, upgrade


@pytest.fixture
def plane(database_url: str, tmp_path: Path) -> Iterator[ControlPlane]:
    db = Database(database_url)
    upgrade(db)
    plane = ControlPlane(db, ArtifactStore(str(tmp_path / "artifacts")), max_replicas=3)
    plane.create_service("svc")
    yield plane
    db.dispose()


def _states(count: int) -> list[ReplicaEndpointState]:
    return [ReplicaEndpointState(key=f"e{i}/1", state="ready") for i in range(count)]


def test_new_replica_past_the_limit_replaces_the_least_recently_updated(plane: ControlPlane) -> None:
    for name in ("r0", "r1", "r2"):
        plane.report_replica("svc", name, ReplicaReport(revision=1))
    plane.report_replica("svc", "r0", ReplicaReport(revision=2))  # r1 is now the stalest
    plane.report_replica("svc", "r3", ReplicaReport(revision=1))
    plane.report_replica("svc", "r4", ReplicaReport(revision=1))  # then r2
    status = plane.service_status("svc")
    assert [(r.id, r.revision) for r in status.replicas] == [("r0", 2), ("r3", 1), ("r4", 1)]
    for i in range(20):
        plane.report_replica("svc", f"random-{i}", ReplicaReport(revision=1))
    assert len(plane.service_status("svc").replicas) == 3


def test_endpoint_entries_are_bounded_by_the_services_endpoints(plane: ControlPlane) -> None:
    plane.report_replica("svc", "r1", ReplicaReport(revision=1, endpoints=_states(ENDPOINTS_MARGIN)))
    with pytest.raises(BadRequest, match=rf"lists {ENDPOINTS_MARGIN + 1} endpoint versions.*at most 16"):
        plane.report_replica("svc", "r1", ReplicaReport(revision=1, endpoints=_states(ENDPOINTS_MARGIN + 1)))
    with pytest.raises(BadRequest, match="lists 5000 endpoint versions"):
        plane.report_replica("svc", "r2", ReplicaReport(revision=1, endpoints=_states(5000)))
    assert [len(r.endpoints) for r in plane.service_status("svc").replicas] == [ENDPOINTS_MARGIN]


def test_the_bound_grows_with_the_services_endpoints(plane: ControlPlane) -> None:
    sha, _ = plane.artifacts.put_bytes(b"model")
    body = {"name": "iris", "framework": "sklearn", "artifact_sha256": sha}
    mid = plane.registry.create(ModelCreate.model_validate(body)).id
    for i in range(4):
        plane.add_endpoint("svc", EndpointSpec(endpoint=f"e{i}", engine="sklearn", model_id=mid))
    plane.report_replica("svc", "r1", ReplicaReport(revision=5, endpoints=_states(4 + ENDPOINTS_MARGIN)))
    with pytest.raises(BadRequest, match=f"service 'svc' has 4, so at most {4 + ENDPOINTS_MARGIN}"):
        plane.report_replica("svc", "r1", ReplicaReport(revision=5, endpoints=_states(5 + ENDPOINTS_MARGIN)))


def test_error_texts_are_cut(plane: ControlPlane) -> None:
    user = UserCodeErrorReport(
        hook="preprocess", error="u" * 2000, where="w" * 2000, time="t", count=1, total=1
    )
    state = ReplicaEndpointState(key="e/1", state="failed", error="x" * 100_000, last_user_error=user)
    plane.report_replica("svc", "r1", ReplicaReport(revision=1, endpoints=[state]))
    (stored,) = plane.service_status("svc").replicas[0].endpoints
    assert stored.error is not None and len(stored.error) <= MAX_ERROR_CHARS
    assert stored.error.startswith("xxx") and stored.error.endswith("...")
    assert stored.last_user_error is not None
    assert len(stored.last_user_error.error) <= MAX_ERROR_CHARS
    assert stored.last_user_error.where is not None and len(stored.last_user_error.where) <= MAX_ERROR_CHARS


def test_replica_id_length_is_bounded(plane: ControlPlane) -> None:
    with pytest.raises(BadRequest, match="a replica id has 1 to 256 characters, got 257"):
        plane.report_replica("svc", "r" * 257, ReplicaReport(revision=1))
    with pytest.raises(BadRequest, match="got 0"):
        plane.report_replica("svc", "", ReplicaReport(revision=1))
    plane.report_replica("svc", "r" * 256, ReplicaReport(revision=1))
    assert [len(r.id) for r in plane.service_status("svc").replicas] == [256]
