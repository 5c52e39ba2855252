"""The model registry on real SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.artifact_urls import DEFAULT_SCHEMES, UrlPolicy
from modelyard.artifacts import ArtifactStore
from modelyard.control import ControlPlane, EndpointSpec
from modelyard.errors import BadRequest, Conflict, NotFound
from modelyard.registry import ModelCreate, ModelFilter, ModelRegistry, TagsChange
from modelyard.store import Database, upgrade


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture
def registry(db: Database, artifacts: ArtifactStore) -> ModelRegistry:
    return ModelRegistry(db, artifacts)


def _create(registry: ModelRegistry, name: str = "iris", **kw: object) -> str:
    sha, _ = registry.artifacts.put_bytes(f"{name}-{kw}".encode())
    body = {"name": name, "framework": "sklearn", "artifact_sha256": sha, **kw}
    return registry.create(ModelCreate.model_validate(body)).id


def test_create_from_artifact(registry: ModelRegistry) -> None:
    sha, size = registry.artifacts.put_bytes(b"weights")
    model = registry.create(
        ModelCreate(
            name="iris",
            project="demo",
            framework="sklearn",
            artifact_sha256=sha,
            filename="model.pkl",
            tags=["a", "a", " b "],
            metadata={"acc": 0.9},
        )
    )
    assert len(model.id) == 32
    assert model.version == 1
    assert model.tags == ["a", "b"]
    assert model.artifact is not None
    assert (model.artifact.sha256, model.artifact.size, model.artifact.filename) == (sha, size, "model.pkl")
    assert model.metadata == {"acc": 0.9}
    assert model.created_at.tzinfo is not None
    assert registry.get(model.id) == model


def test_create_from_url(db: Database, tmp_path: Path) -> None:
    """A path the control plane reads: only where ``file`` is an accepted scheme."""
    local = UrlPolicy(schemes=frozenset({*DEFAULT_SCHEMES, "file"}))
    registry = ModelRegistry(db, ArtifactStore(str(tmp_path / "artifacts"), url_policy=local))
    src = tmp_path / "clf.joblib"
    src.write_bytes(b"joblib-bytes")
    model = registry.create(ModelCreate(name="clf", framework="sklearn", url=str(src)))
    assert model.artifact is not None
    assert model.artifact.sha256 == hashlib.sha256(b"joblib-bytes").hexdigest()
    assert model.artifact.filename == "clf.joblib"
    assert model.url == str(src)
    assert registry.artifacts.exists(model.artifact.sha256)


def test_create_needs_an_existing_artifact(registry: ModelRegistry) -> None:
    missing = "f" * 64
    with pytest.raises(NotFound, match=missing):
        registry.create(ModelCreate(name="x", framework="sklearn", artifact_sha256=missing))
    with pytest.raises(BadRequest, match="artifact_sha256 or url"):
        registry.create(ModelCreate(name="x", framework="sklearn"))


def test_versions_count_up_per_name_and_project(registry: ModelRegistry) -> None:
    a1 = registry.get(_create(registry, "a", project="p"))
    a2 = registry.get(_create(registry, "a", project="p"))
    other_project = registry.get(_create(registry, "a", project="q"))
    b1 = registry.get(_create(registry, "b", project="p"))
    assert (a1.version, a2.version, other_project.version, b1.version) == (1, 2, 1, 1)


def test_concurrent_creates_get_distinct_versions(registry: ModelRegistry) -> None:
    sha, _ = registry.artifacts.put_bytes(b"same")
    versions: list[int] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            spec = ModelCreate(name="race", framework="sklearn", artifact_sha256=sha)
            versions.append(registry.create(spec).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]


def test_list_filters(registry: ModelRegistry) -> None:
    iris1 = _create(registry, "iris", project="p", tags=["prod", "v1"])
    iris2 = _create(registry, "iris", project="p", tags=["prod"], published=True)
    iris_x = _create(registry, "iris-xgb", project="p", framework="xgboost")
    other = _create(registry, "mnist", project="q", tags=["prod"])

    def ids(**kw: object) -> list[str]:
        return [m.id for m in registry.list(ModelFilter.model_validate(kw))]

    assert ids() == [other, iris_x, iris2, iris1]  # newest first
    assert ids(name="iris") == [iris2, iris1]  # a full match, not a prefix
    assert ids(name="iris.*") == [iris_x, iris2, iris1]
    assert ids(project="q") == [other]
    assert ids(framework="xgboost") == [iris_x]
    assert ids(tags=["prod"]) == [other, iris2, iris1]
    assert ids(tags=["prod", "v1"]) == [iris1]
    assert ids(published=True) == [iris2]
    assert ids(published=False, name="iris") == [iris1]
    assert ids(limit=2) == [other, iris_x]
    with pytest.raises(BadRequest, match="regular expression"):
        ids(name="(")


def test_newest_and_query_errors(registry: ModelRegistry) -> None:
    _create(registry, "m")
    second = _create(registry, "m")
    assert registry.newest(ModelFilter(name="m")).id == second
    with pytest.raises(NotFound, match="no model matches"):
        registry.newest(ModelFilter(name="zzz"))


def test_publish_and_tags(registry: ModelRegistry) -> None:
    mid = _create(registry, "t", tags=["a", "b"])
    assert registry.publish(mid).published is True
    assert registry.change_tags(mid, TagsChange(add=["c", "a"], remove=["b"])).tags == ["a", "c"]
    assert registry.get(mid).tags == ["a", "c"]
    with pytest.raises(NotFound, match="model nope not found"):
        registry.publish("nope")
    with pytest.raises(NotFound, match="model nope not found"):
        registry.change_tags("nope", TagsChange(add=["x"]))


def test_remove_refused_while_an_endpoint_uses_it(
    registry: ModelRegistry, db: Database, artifacts: ArtifactStore
) -> None:
    plane = ControlPlane(db, artifacts, registry=registry)
    plane.create_service("svc")
    mid = _create(registry, "iris")
    plane.add_endpoint("svc", EndpointSpec(endpoint="iris", version="2", engine="sklearn", model_id=mid))
    with pytest.raises(Conflict) as info:
        registry.remove(mid)
    assert str(info.value) == f"model {mid} (iris) is used by endpoint 'iris/2' in service 'svc'"
    plane.remove_endpoint("svc", "iris/2")
    registry.remove(mid)
    with pytest.raises(NotFound, match=mid):
        registry.get(mid)
    with pytest.raises(NotFound, match=mid):
        registry.remove(mid)


def test_name_filter_that_backtracks_is_refused_quickly(registry: ModelRegistry) -> None:
    """A catastrophic pattern from an anonymous lister costs a bounded time, then a 400."""
    import time

    _create(registry, name="a" * 40 + "b")
    started = time.perf_counter()
    with pytest.raises(BadRequest, match="takes too long"):
        registry.list(ModelFilter(name="(a|a)+$"))  # 2**40 paths in a backtracking engine
    assert time.perf_counter() - started < 2.0
    assert [m.name for m in registry.list(ModelFilter(name="a+b"))] == ["a" * 40 + "b"]
