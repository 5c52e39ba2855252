"""``k8s render``: every manifest valid against the Kubernetes/CRD schemas, wired together, stable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from modelyard.deploy import k8s
from modelyard.deploy.k8s_objects import LIVE_PATH, METRICS_PATH, READY_PATH, dns_name, label_value
from modelyard.deploy.spec import parse_file, parse_text
from modelyard.settings import Settings
from tests.deploy.k8s_checks import by_kind, check_wiring, containers, validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference.yaml"

GPU_SPEC = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: Resnet_50.v2, service: vision}
spec:
  framework: torch
  queue: {stream: images, consumerGroup: gpu-workers, pendingEntries: 4, maxReplicas: 3}
  predictors:
    - name: big
      model: {tags: [prod], published: true}
      autoScale: {maxReplicas: 4, targetInflight: 0.5, targetCpuUtilization: 60}
      resources: {cpu: 2, memory: 8Gi, gpu: 1}
"""


@pytest.fixture(scope="module")
def example_docs() -> list[dict]:
    return k8s.render(parse_file(EXAMPLE), namespace="ml")


def test_every_rendered_manifest_validates(example_docs: list[dict]) -> None:
    kinds = [d["kind"] for d in example_docs]
    for kind in (
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "ServiceMonitor",
    ):
        assert kind in kinds, kind
    gpu_docs = k8s.render(parse_text(GPU_SPEC), admin_token="s3cret")
    for doc in [*example_docs, *gpu_docs]:
        validate(doc)


def test_schema_validation_catches_mistakes(example_docs: list[dict]) -> None:
    """The validators are not vacuous: a typo or a wrong type fails."""
    import copy

    import jsonschema

    dep = copy.deepcopy(by_kind(example_docs, "Deployment")[1])
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate(dep)
    scaled = copy.deepcopy(by_kind(example_docs, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["pendingEntriesCount"] = 10  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = copy.deepcopy(by_kind(example_docs, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_wiring(example_docs: list[dict]) -> None:
    check_wiring(example_docs)
    check_wiring(k8s.render(parse_text(GPU_SPEC)))
    assert all(d["metadata"]["namespace"] == "ml" for d in example_docs)


def test_per_predictor_objects_follow_the_spec(example_docs: list[dict]) -> None:
    deps = {d["metadata"]["name"]: d for d in by_kind(example_docs, "Deployment")}
    a, b = deps["modelyard-prod-iris-a"], deps["modelyard-prod-iris-b"]
    assert "replicas" not in a["spec"] and b["spec"]["replicas"] == 1
    (hpa,) = by_kind(example_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 10
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]
    assert pods_metric == {
        "metric": {"name": "modelyard_inflight_requests"},
        "target": {"type": "AverageValue", "averageValue": "8"},
    }
    (c,) = containers(a)
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MODELYARD_SERVICE"] == "prod"
    assert env["MODELYARD_CONTROL_PLANE_URL"] == "http://modelyard-control-plane:8080"
    assert len(by_kind(example_docs, "PodDisruptionBudget")) == 2
    (svc,) = [s for s in by_kind(example_docs, "Service") if s["metadata"]["name"] == "modelyard-prod"]
    assert svc["spec"]["selector"]["modelyard.io/service"] == "prod"
    (worker,) = [d for n, d in deps.items() if n.endswith("-queue")]
    assert containers(worker)[0]["args"] == [
        "queue-worker",
        "--service",
        "prod",
        "--endpoint",
        "iris",
        "--stream",
        "serving_stream",
    ]


def test_gpu_predictor_gets_the_gpu_image_resources_and_toleration() -> None:
    docs = k8s.render(parse_text(GPU_SPEC), namespace=None, image="reg.example/my:1", admin_token="t0k")
    dep = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].startswith("modelyard-vision"))
    (c,) = containers(dep)
    assert c["image"] == "reg.example/my:1-gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["cpu"] == "2"
    assert dep["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "namespace" not in dep["metadata"]
    assert dep["metadata"]["labels"]["modelyard.io/inference"] == "Resnet_50.v2"
    assert dep["metadata"]["name"] == dns_name("modelyard", "vision", "Resnet_50.v2", "big")
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    targets = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert targets["Pods"]["pods"]["target"]["averageValue"] == "500m"
    assert targets["Resource"]["resource"]["target"]["averageUtilization"] == 60
    (scaled,) = by_kind(docs, "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "images" and trigger["metadata"]["consumerGroup"] == "gpu-workers"
    assert trigger["metadata"]["pendingEntriesCount"] == "4" and scaled["spec"]["maxReplicaCount"] == 3
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"] == {"token": "t0k"}


def test_names_are_dns_safe_and_distinct() -> None:
    assert dns_name("modelyard", "prod", "iris", "a") == "modelyard-prod-iris-a"
    assert dns_name("x", "A_b") != dns_name("x", "a-b")
    long = dns_name("modelyard", "s" * 100, "e" * 100)
    assert len(long) <= 63
    assert len(label_value("v" * 128)) <= 63 and label_value("short") == "short"


def test_render_is_deterministic_and_round_trips() -> None:
    first = k8s.dump(k8s.render(parse_file(EXAMPLE), namespace="ml"))
    second = k8s.dump(k8s.render(parse_file(EXAMPLE), namespace="ml"))
    assert first == second
    assert list(yaml.safe_load_all(first)) == k8s.render(parse_file(EXAMPLE), namespace="ml")


def test_shared_service_rendered_once_and_no_platform() -> None:
    other = EXAMPLE.read_text().replace("name: iris, service: prod", "name: wine, service: prod")
    docs = k8s.render([*parse_file(EXAMPLE), *parse_text(other)], platform=False)
    services = [d["metadata"]["name"] for d in by_kind(docs, "Service")]
    assert services == ["modelyard-prod"]
    assert not by_kind(docs, "Secret") and not by_kind(docs, "ServiceMonitor")


def test_probe_paths_are_routes_the_apps_serve(tmp_path: Path) -> None:
    """The inference app answers the probe paths (not 404); the control plane has /api/health."""
    from modelyard.control.api import create_control_app
    from modelyard.server import create_inference_app

    settings = Settings(home=tmp_path / "home", control_plane_url="http://127.0.0.1:9")  # type: ignore[call-arg]
    docs = k8s.render(parse_file(EXAMPLE))
    probe_paths = {
        c[p]["httpGet"]["path"]
        for d in by_kind(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "inference"
        for c in containers(d)
        for p in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert probe_paths == {LIVE_PATH, READY_PATH}

    async def statuses(app: object, paths: tuple[str, ...]) -> list[int]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as http:
            return [(await http.get(path)).status_code for path in paths]

    replica = create_inference_app(settings)
    live, ready, unknown = asyncio.run(statuses(replica, (LIVE_PATH, READY_PATH, "/health/no")))
    assert live == 200 and ready in (200, 503)  # ready is 503 until the first config arrives
    assert unknown == 404
    control = create_control_app(settings)
    control_probes = {
        c["readinessProbe"]["httpGet"]["path"]
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["name"] == "modelyard-control-plane"
        for c in containers(d)
    }
    assert asyncio.run(statuses(control, tuple(control_probes))) == [200]
    assert METRICS_PATH == "/metrics"


def test_cli_render(tmp_path: Path) -> None:
    import typer

    from modelyard.cli import _common as common
    from modelyard.cli.deploy import register

    app = typer.Typer(cls=common.Group)
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["k8s", "render", "-f", str(EXAMPLE), "--namespace", "ml"])
    assert result.exit_code == 0, result.output
    assert list(yaml.safe_load_all(result.stdout)) == k8s.render(parse_file(EXAMPLE), namespace="ml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("trafficWeight: 10", "trafficWeight: -5"))
    result = runner.invoke(app, ["k8s", "render", "-f", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:21: spec.predictors[1].trafficWeight: must be ≥ 0" in result.output
