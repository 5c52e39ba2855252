"""``k8s render``: every manifest valid against the Kubernetes/CRD schemas, wired together, stable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from modelyard.deploy import k8s
from modelyard.deploy.k8s_objects import (
    LIVE_PATH,
    METRICS_PATH,
    READY_PATH,
    REPLICA_SECRET,
    dns_name,
    label_value,
)
from modelyard.deploy.spec import parse_file, parse_text
from modelyard.errors import BadRequest
from modelyard.settings import Settings
from tests.deploy.k8s_checks import (
    EXTERNAL_SECRETS,
    by_kind,
    check_keda_wiring,
    check_wiring,
    containers,
    env_of,
    validate,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference.yaml"

GPU_SPEC = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: Resnet_50.v2, service: vision}
spec:
  framework: torch
  queue: {stream: images, consumerGroup: gpu-workers, lagCount: 4, batchSize: 32, maxReplicas: 3}
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
        "HTTPRoute",
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
    scaled["spec"]["triggers"][0]["metadata"]["lagCount"] = 10  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = copy.deepcopy(by_kind(example_docs, "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 0  # a field of the HPA, not of a ScaledObject
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate(scaled)
    scaled = copy.deepcopy(by_kind(example_docs, "ScaledObject")[0])
    scaled["metadata"]["labels"]["modelyard.io/replicas"] = 3  # ObjectMeta labels are strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = copy.deepcopy(by_kind(example_docs, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    monitor = copy.deepcopy(by_kind(example_docs, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["tlsConfig"] = {"insecureSkipVerify": True, "serverNme": "x"}
    with pytest.raises(jsonschema.ValidationError, match="serverNme"):
        validate(monitor)
    route = by_kind(example_docs, "HTTPRoute")[0]
    validate(route)
    for path, bad in (
        (("rules", 0, "backendRefs", 0, "weight"), 2_000_000),  # int32 in 0..1,000,000
        (("rules", 0, "backendRefs", 0, "weight"), "90"),
        (("rules", 0, "matches", 0, "path", "type"), "Prefix"),  # PathPrefix, Exact or RegularExpression
        (("rules", 0, "backendRefs", 0, "serviceName"), "x"),
        (("parentRefs", 0, "namespace"), "Not_A_Namespace"),
    ):
        broken = copy.deepcopy(route)
        target = broken["spec"]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = bad
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


def test_wiring(example_docs: list[dict]) -> None:
    check_wiring(example_docs)
    check_wiring(k8s.render(parse_text(GPU_SPEC)))
    assert all(d["metadata"]["namespace"] == "ml" for d in example_docs)


def test_wiring_catches_a_worker_and_trigger_that_disagree() -> None:
    """The consumer group KEDA measures must be the one the workers read with (and scale from 0)."""
    import copy

    docs = k8s.render(parse_text(GPU_SPEC))
    (scaled,) = by_kind(docs, "ScaledObject")
    worker = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == scaled["metadata"]["name"]
    )
    check_keda_wiring(scaled, worker)

    no_group = copy.deepcopy(worker)  # the worker falls back to its default group, modelyard
    args = containers(no_group)[0]["args"]
    del args[args.index("--group") : args.index("--group") + 2]
    with pytest.raises(AssertionError, match="gpu-workers"):
        check_keda_wiring(scaled, no_group)
    other_stream = copy.deepcopy(scaled)
    other_stream["spec"]["triggers"][1]["metadata"]["stream"] = "serving_stream"
    with pytest.raises(AssertionError, match="serving_stream"):
        check_keda_wiring(other_stream, worker)
    pending_only = copy.deepcopy(scaled)
    del pending_only["spec"]["triggers"][0]
    with pytest.raises(AssertionError, match="only a lag trigger can wake the first worker"):
        check_keda_wiring(pending_only, worker)
    unknown_flag = copy.deepcopy(worker)
    containers(unknown_flag)[0]["args"] += ["--consumer-group", "gpu-workers"]
    with pytest.raises(AssertionError, match="--consumer-group"):
        check_keda_wiring(scaled, unknown_flag)


def test_per_predictor_objects_follow_the_spec(example_docs: list[dict]) -> None:
    deps = {d["metadata"]["name"]: d for d in by_kind(example_docs, "Deployment")}
    a, b = deps["modelyard-prod-iris-a"], deps["modelyard-prod-iris-b"]
    assert env_of(a)["MODELYARD_ENDPOINTS"]["value"] == "iris/a"  # each loads its own model only
    assert env_of(b)["MODELYARD_ENDPOINTS"]["value"] == "iris/b"
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
    services = {s["metadata"]["name"]: s for s in by_kind(example_docs, "Service")}
    assert sorted(services) == ["modelyard-control-plane", "modelyard-prod-iris-a", "modelyard-prod-iris-b"]
    assert services["modelyard-prod-iris-b"]["spec"]["selector"]["modelyard.io/predictor"] == "b"
    (worker,) = [d for n, d in deps.items() if n.endswith("-queue")]
    assert "MODELYARD_ENDPOINTS" not in env_of(worker)  # it serves the canary: every predictor
    assert containers(worker)[0]["args"] == [
        "queue-worker",
        "--service",
        "prod",
        "--endpoint",
        "iris",
        "--stream",
        "serving_stream",
        "--group",
        "modelyard",
        "--batch-size",
        "256",
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
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] == 3
    backlog, in_flight = scaled["spec"]["triggers"]
    assert backlog["type"] == in_flight["type"] == "redis-streams"
    for trigger in (backlog, in_flight):
        assert trigger["metadata"]["stream"] == "images"
        assert trigger["metadata"]["consumerGroup"] == "gpu-workers"
    assert backlog["metadata"]["lagCount"] == "4" and backlog["metadata"]["activationLagCount"] == "0"
    assert "pendingEntriesCount" not in backlog["metadata"]  # KEDA ignores it next to lagCount
    assert in_flight["metadata"]["pendingEntriesCount"] == "32" and "lagCount" not in in_flight["metadata"]
    worker = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == scaled["metadata"]["name"]
    )
    args = containers(worker)[0]["args"]
    assert args[args.index("--stream") + 1] == "images" and args[args.index("--group") + 1] == "gpu-workers"
    assert args[args.index("--batch-size") + 1] == "32"
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert secrets["modelyard-admin-token"]["stringData"] == {"token": "t0k"}
    assert "stringData" not in secrets["modelyard-replica-token"]  # empty: to fill in place
    assert "modelyard.io/fill-me" in secrets["modelyard-replica-token"]["metadata"]["annotations"]


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


def test_two_specs_of_one_service_and_no_platform() -> None:
    other = EXAMPLE.read_text().replace("name: iris, service: prod", "name: wine, service: prod")
    docs = k8s.render([*parse_file(EXAMPLE), *parse_text(other)], platform=False)
    services = [d["metadata"]["name"] for d in by_kind(docs, "Service")]
    assert services == [
        "modelyard-prod-iris-a",
        "modelyard-prod-iris-b",
        "modelyard-prod-wine-a",
        "modelyard-prod-wine-b",
    ]
    assert [r["metadata"]["name"] for r in by_kind(docs, "HTTPRoute")] == [
        "modelyard-prod-iris",
        "modelyard-prod-wine",
    ]
    assert not by_kind(docs, "Secret") and not by_kind(docs, "ServiceMonitor")
    with pytest.raises(AssertionError, match="modelyard-replica-token, which is not rendered"):
        check_wiring(docs)  # the platform's Secret: rendered with it, or created beforehand
    check_wiring(docs, external_secrets={*EXTERNAL_SECRETS, REPLICA_SECRET})


def test_object_names_that_collide_are_an_error() -> None:
    """A predictor named ``queue`` would be the queue worker's Deployment: refused, not dropped."""
    text = EXAMPLE.read_text().replace("- name: b\n", "- name: queue\n")
    with pytest.raises(BadRequest, match="Deployment 'modelyard-prod-iris-queue'"):
        k8s.render(parse_text(text))


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
    result = runner.invoke(app, ["k8s", "render", "-f", str(EXAMPLE), "--replica-token", "r3p"])
    assert result.exit_code == 0, result.output
    (secret,) = [d for d in yaml.safe_load_all(result.stdout) if d["metadata"]["name"] == REPLICA_SECRET]
    assert secret["stringData"] == {"token": "r3p"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("trafficWeight: 10", "trafficWeight: -5"))
    result = runner.invoke(app, ["k8s", "render", "-f", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:21: spec.predictors[1].trafficWeight: must be ≥ 0" in result.output
