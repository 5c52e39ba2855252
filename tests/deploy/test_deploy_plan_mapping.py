"""Spec → desired control-plane state: endpoint versions, options, canary, preprocess hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelyard.deploy.plan import hash_preprocess, plan_spec
from modelyard.deploy.spec import parse_file, parse_text
from modelyard.errors import BadRequest

REPO = Path(__file__).resolve().parents[2]


def _spec(predictors: str, extra: str = "") -> str:
    return (
        "apiVersion: modelyard.io/v1\nkind: Inference\nmetadata: {name: iris, service: prod}\n"
        f"spec:\n  framework: sklearn\n{extra}  predictors:\n{predictors}"
    )


def test_the_issue_example_maps_to_two_versions_and_a_canary() -> None:
    (spec,) = parse_file(REPO / "examples" / "inference.yaml")
    plan = plan_spec(spec)
    assert plan.service == "prod" and plan.endpoint == "iris"
    a, b = plan.endpoints
    assert (a.key, b.key) == ("iris/a", "iris/b")
    assert a.engine == b.engine == "sklearn"
    assert a.options == {"max_batch_size": 32, "max_batch_delay_ms": 5}
    assert b.options == {}
    assert a.model.name == "iris" and a.model.version == 3 and b.model.version == 4
    code = REPO / "examples" / "sklearn" / "preprocess.py"
    assert a.preprocess is not None and a.preprocess.filename == "preprocess.py"
    assert a.preprocess.sha256 == hashlib.sha256(code.read_bytes()).hexdigest()
    assert b.preprocess == a.preprocess  # a canary's targets take the same requests
    assert plan.canary is not None
    assert plan.canary.as_dict() == {
        "endpoint": "iris",
        "targets": ["iris/a", "iris/b"],
        "weights": [90.0, 10.0],
    }
    assert a.where.endswith("inference.yaml:11")


def test_single_predictor_without_weight_has_no_canary() -> None:
    (spec,) = parse_text(_spec("    - name: only\n      model: {id: m1}\n"))
    plan = plan_spec(spec)
    assert [e.key for e in plan.endpoints] == ["iris/only"] and plan.canary is None


def test_versions_are_stable_under_reordering_and_overridable() -> None:
    preds = (
        "    - {name: a, version: '1', model: {id: m1}}\n"
        "    - {name: b, model: {id: m2}, framework: xgboost, options: {device: cpu}}\n"
    )
    (spec,) = parse_text(_spec(preds, "  canaryEndpoint: iris_canary\n"))
    plan = plan_spec(spec)
    assert [(e.key, e.engine) for e in plan.endpoints] == [("iris/1", "sklearn"), ("iris/b", "xgboost")]
    assert plan.endpoints[1].options == {"device": "cpu"}
    # no weights with several predictors: an even split on the named canary endpoint
    assert plan.canary is not None
    assert plan.canary.as_dict() == {
        "endpoint": "iris_canary",
        "targets": ["iris/1", "iris/b"],
        "weights": [1.0, 1.0],
    }
    reordered = "\n".join(reversed(preds.rstrip("\n").split("\n"))) + "\n"
    (again,) = parse_text(_spec(reordered))
    assert {e.key: e.model.id for e in plan_spec(again).endpoints} == {"iris/1": "m1", "iris/b": "m2"}


def test_partial_weights_give_zero_to_the_rest() -> None:
    preds = "    - {name: a, model: {id: m1}, trafficWeight: 1}\n    - {name: b, model: {id: m2}}\n"
    (spec,) = parse_text(_spec(preds))
    plan = plan_spec(spec)
    assert plan.canary is not None and plan.canary.weights == [1.0, 0.0]


def test_fractional_batch_delay_is_kept() -> None:
    preds = "    - {name: a, model: {id: m1}, batching: {maxBatchSize: 8, maxDelayMs: 2.5}}\n"
    (spec,) = parse_text(_spec(preds))
    assert plan_spec(spec).endpoints[0].options == {"max_batch_size": 8, "max_batch_delay_ms": 2.5}


def test_missing_preprocess_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "inference.yaml"
    file.write_text(_spec("    - name: a\n      model: {id: m1}\n      preprocess: ./nope.py\n"))
    (spec,) = parse_file(file)
    with pytest.raises(BadRequest, match=r"inference.yaml:9: spec.predictors\[0\].preprocess: .*nope.py"):
        plan_spec(spec)


def test_folder_preprocess_hash_is_stable_and_content_addressed(tmp_path: Path) -> None:
    pkg = tmp_path / "feats"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .p import Preprocess\n")
    (pkg / "p.py").write_text("class Preprocess:\n    pass\n")
    first = hash_preprocess(pkg, "x")
    assert first.kind == "folder" and first.filename == "feats.tar.gz"
    assert hash_preprocess(pkg, "x").sha256 == first.sha256
    (pkg / "p.py").write_text("class Preprocess:\n    x = 1\n")
    assert hash_preprocess(pkg, "x").sha256 != first.sha256
