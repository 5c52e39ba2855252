"""Parsing the Inference spec: every error names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.deploy.spec import SpecError, parse_file, parse_text

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: iris, service: prod}
spec:
  framework: sklearn
  predictors:
    - name: a
      model: {name: iris, project: demo, version: 3}
      trafficWeight: 90
      replicas: 2
      autoScale: {minReplicas: 1, maxReplicas: 10, targetInflight: 8}
      batching: {maxBatchSize: 32, maxDelayMs: 5}
      resources: {cpu: 1, memory: 1Gi, gpu: 0}
    - name: b
      model: {name: iris, project: demo, version: 4}
      trafficWeight: 10
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_text(text, source="inference.yaml")
    return info.value.problems


def test_the_issue_example_parses() -> None:
    (spec,) = parse_file(REPO / "examples" / "inference.yaml")
    assert spec.metadata.name == "iris" and spec.metadata.service == "prod"
    first, second = spec.spec.predictors
    assert first.auto_scale is not None and first.auto_scale.target_inflight == 8
    assert first.batching is not None and first.batching.max_batch_size == 32
    assert first.resources.cpu == "1" and first.resources.memory == "1Gi"
    assert second.traffic_weight == 10 and second.replicas == 1
    assert spec.base_dir == (REPO / "examples").resolve()


def test_negative_weight_points_at_its_line_and_field() -> None:
    text = GOOD.replace("trafficWeight: 10", "trafficWeight: -1")
    assert errors_of(text) == ["inference.yaml:16: spec.predictors[1].trafficWeight: must be ≥ 0"]


def test_every_problem_is_reported_with_its_own_line() -> None:
    text = (
        GOOD.replace("replicas: 2", "replicas: two")
        .replace("maxBatchSize: 32", "maxBatchSize: 0")
        .replace("trafficWeight: 10", "trafficWeigth: 10")
    )
    assert errors_of(text) == [
        "inference.yaml:10: spec.predictors[0].replicas: must be an integer",
        "inference.yaml:12: spec.predictors[0].batching.maxBatchSize: must be ≥ 1",
        "inference.yaml:16: spec.predictors[1].trafficWeigth: unknown field",
    ]


def test_missing_field_points_at_the_enclosing_mapping() -> None:
    text = GOOD.replace("      model: {name: iris, project: demo, version: 4}\n", "")
    assert errors_of(text) == ["inference.yaml:14: spec.predictors[1].model: is required"]


def test_cross_field_rules_name_the_object() -> None:
    text = GOOD.replace("minReplicas: 1, maxReplicas: 10", "minReplicas: 5, maxReplicas: 2")
    assert errors_of(text) == [
        "inference.yaml:11: spec.predictors[0].autoScale: maxReplicas (2) must be ≥ minReplicas (5)"
    ]
    text = GOOD.replace("{name: iris, project: demo, version: 4}", "{id: abc, version: 4}")
    (problem,) = errors_of(text)
    assert problem.startswith("inference.yaml:15: spec.predictors[1].model: give either id alone")
    text = GOOD.replace("name: b", "name: a")
    (problem,) = errors_of(text)
    assert problem == "inference.yaml:4: spec: predictor name 'a' is used by more than one predictor"


def test_bad_names_and_header() -> None:
    text = GOOD.replace("name: a", "name: a/b").replace("kind: Inference", "kind: Deployment")
    problems = errors_of(text)
    assert problems[0] == "inference.yaml:2: kind: must be 'Inference'"
    assert problems[1].startswith("inference.yaml:7: spec.predictors[0].name: predictor name 'a/b'")


def test_yaml_syntax_error_has_the_line() -> None:
    text = GOOD.replace("  framework: sklearn", "  framework: [sklearn")
    (problem,) = errors_of(text)
    assert problem.startswith("inference.yaml:") and "YAML syntax error" in problem
    assert int(problem.split(":")[1]) in (5, 6)


def test_duplicate_keys_are_an_error_not_a_silent_override() -> None:
    text = GOOD.replace("      replicas: 2\n", "      replicas: 2\n      replicas: 3\n")
    assert errors_of(text) == [
        "inference.yaml:11: spec.predictors[0].replicas: duplicate key (first at line 10)"
    ]


def test_several_documents_and_duplicates_across_them() -> None:
    other = GOOD.replace("name: iris, service: prod", "name: wine, service: prod")
    specs = parse_text(GOOD + "---\n" + other)
    assert [s.metadata.name for s in specs] == ["iris", "wine"]
    problems = errors_of(GOOD + "---\n" + GOOD)
    assert problems == [
        "inference.yaml:20: metadata.name: 'iris' in service 'prod' is already defined at line 3"
    ]


def test_empty_and_non_mapping_documents() -> None:
    assert errors_of("") == ["inference.yaml:1: no Inference document in the file"]
    assert errors_of("- 1\n- 2\n") == ["inference.yaml:1: document must be a mapping (apiVersion, kind, ...)"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    from modelyard.errors import BadRequest

    with pytest.raises(BadRequest, match="cannot read spec file"):
        parse_file(tmp_path / "nope.yaml")


def test_queue_scaling_fields_are_checked() -> None:
    text = GOOD.replace(
        "  framework: sklearn\n",
        "  framework: sklearn\n  queue: {lagCount: 0, minReplicas: 3, maxReplicas: 2}\n",
    )
    problems = errors_of(text)
    assert "inference.yaml:6: spec.queue.lagCount: must be ≥ 1" in problems, problems
    renamed = GOOD.replace("  framework: sklearn\n", "  framework: sklearn\n  queue: {pendingEntries: 4}\n")
    (problem,) = errors_of(renamed)
    assert problem.startswith("inference.yaml:6: spec.queue.pendingEntries:"), problem
    bounds = GOOD.replace(
        "  framework: sklearn\n", "  framework: sklearn\n  queue: {minReplicas: 3, maxReplicas: 2}\n"
    )
    (problem,) = errors_of(bounds)
    assert problem == "inference.yaml:6: spec.queue: maxReplicas (2) must be ≥ minReplicas (3)", problem
