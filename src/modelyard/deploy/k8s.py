"""Kubernetes manifests for the platform and for ``Inference`` specs (``modelyard k8s render``).

What is rendered, and why it is shaped so:

* control plane — ``modelyard control-plane`` (Deployment, Service: the API and dashboard
  alone, no replica of its own); its database and artifact store
  come from the ``modelyard-postgres`` / ``modelyard-s3`` Secrets, its admin token from the
  ``modelyard-admin-token`` Secret mounted as ``<home>/token`` (the file the control plane
  registers as admin on start). Without ``--admin-token`` that Secret is rendered empty so
  pods fail closed until someone fills it; a default token would be a hole.
* one inference Deployment per predictor (``modelyard inference``), so each predictor has its
  own resources (GPU or not), replica count, HorizontalPodAutoscaler (CPU + the Pods metric
  ``modelyard_inflight_requests`` through the Prometheus adapter) and PodDisruptionBudget.
  Every replica serves the whole modelyard service and splits traffic with the canary
  itself, so the weights hold whatever the pod counts are; one Kubernetes Service per
  modelyard service selects all its predictors' pods.
* queue workers (``modelyard queue-worker``) with a KEDA ``ScaledObject`` on the Redis
  stream's pending entries (scale to zero when idle).
* a ServiceMonitor scraping ``/metrics`` of every Service labelled ``modelyard.io/metrics``.

Output is deterministic (sorted keys, fixed order) so a rendered file can be diffed and
committed. Configuration reaches containers only through ``MODELYARD_*`` variables that are
:class:`~modelyard.settings.Settings` fields (the tests check that).
"""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.deploy import k8s_objects as ko
from modelyard.deploy.k8s_objects import (
    ADMIN_SECRET,
    CONTROL_PLANE,
    DEFAULT_IMAGE,
    GPU_SUFFIX,
    HOME,
    INFLIGHT_METRIC,
    LIVE_PATH,
    METRICS_PATH,
    PORT,
    READY_PATH,
    REDIS_SECRET,
    REPLICA_SECRET,
    Doc,
    dns_name,
    dump,
    label_value,
)
from modelyard.deploy.plan import canary_for
from modelyard.deploy.spec import AutoScale, InferenceSpec

__all__ = ["DEFAULT_IMAGE", "dump", "render"]

# -- the platform ---------------------------------------------------------------------------


def control_plane(namespace: str | None, image: str, admin_token: str | None = None) -> list[Doc]:
    """Admin-token Secret, control plane Deployment and Service."""
    labels = {"app.kubernetes.io/name": "modelyard", "app.kubernetes.io/component": "control-plane"}
    secret: Doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": ko.meta(ADMIN_SECRET, namespace, labels),
        "type": "Opaque",
    }
    if admin_token:
        secret["stringData"] = {"token": admin_token}
    else:
        secret["metadata"]["annotations"] = {
            "modelyard.io/fill-me": "kubectl create secret generic modelyard-admin-token "
            "--from-literal=token=$(openssl rand -hex 32) --dry-run=client -o yaml | kubectl apply -f -"
        }
    env = [
        {"name": "MODELYARD_HOME", "value": HOME},
        {"name": "MODELYARD_HOST", "value": "0.0.0.0"},
        {"name": "MODELYARD_PORT", "value": str(PORT)},
        *ko.storage_env(),
    ]
    resources = ko.resources("500m", "512Mi", 0)
    container = ko.http_container("control-plane", image, ["control-plane"], env, resources)
    volumes, mounts = ko.home_volume()
    volumes.append({"name": "admin-token", "secret": {"secretName": ADMIN_SECRET, "defaultMode": 0o440}})
    mounts.append({"name": "admin-token", "mountPath": f"{HOME}/token", "subPath": "token", "readOnly": True})
    container["volumeMounts"] = mounts
    container["readinessProbe"] = ko.probe("/api/health", 5, 3)
    container["livenessProbe"] = ko.probe("/api/health", 10, 6)
    pod = {"containers": [container], "volumes": volumes, "securityContext": {"fsGroup": 1000}}
    return [
        secret,
        ko.deployment(CONTROL_PLANE, namespace, labels, pod, 1),
        ko.service(CONTROL_PLANE, namespace, labels, labels),
    ]


def service_monitor(namespace: str | None) -> Doc:
    labels = {"app.kubernetes.io/name": "modelyard", "app.kubernetes.io/component": "metrics"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": ko.meta("modelyard", namespace, labels),
        "spec": {
            "selector": {
                "matchLabels": {"app.kubernetes.io/part-of": "modelyard", "modelyard.io/metrics": "true"}
            },
            "endpoints": [{"port": "http", "path": METRICS_PATH, "interval": "15s", "scrapeTimeout": "10s"}],
        },
    }


def _replica_env(service: str) -> list[Doc]:
    return [
        {"name": "MODELYARD_HOME", "value": HOME},
        {"name": "MODELYARD_SERVICE", "value": service},
        {"name": "MODELYARD_CONTROL_PLANE_URL", "value": f"http://{CONTROL_PLANE}:{PORT}"},
        {"name": "MODELYARD_URL", "value": f"http://{CONTROL_PLANE}:{PORT}"},
        ko.secret_env("MODELYARD_TOKEN", REPLICA_SECRET, "token", optional=True),
    ]


def service_labels(service: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/component": "inference",
        "modelyard.io/service": label_value(service),
    }


def inference_service(service: str, namespace: str | None) -> Doc:
    """One Kubernetes Service per modelyard service, over all its predictors' pods."""
    labels = service_labels(service)
    return ko.service(dns_name("modelyard", service), namespace, labels, labels)


def inference_deployment(
    service: str,
    name: str,
    labels: dict[str, str],
    namespace: str | None,
    image: str,
    resources: Doc,
    replicas: int | None,
    gpu: int,
) -> Doc:
    env = [
        *_replica_env(service),
        {"name": "MODELYARD_HOST", "value": "0.0.0.0"},
        {"name": "MODELYARD_PORT", "value": str(PORT)},
    ]
    container = ko.http_container("inference", image, ["inference"], env, resources)
    volumes, mounts = ko.home_volume()
    container["volumeMounts"] = mounts
    container["readinessProbe"] = ko.probe(READY_PATH, 2, 2)
    container["livenessProbe"] = ko.probe(LIVE_PATH, 10, 6)
    container["startupProbe"] = ko.probe(LIVE_PATH, 2, 60)
    pod: Doc = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"fsGroup": 1000},
        "terminationGracePeriodSeconds": 30,
    }
    if gpu > 0:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return ko.deployment(name, namespace, labels, pod, replicas)


def pdb(name: str, namespace: str | None, labels: dict[str, str]) -> Doc:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": ko.meta(name, namespace, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}},
    }


def hpa(name: str, namespace: str | None, labels: dict[str, str], scale: AutoScale) -> Doc:
    metrics: list[Doc] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": scale.target_cpu_utilization},
            },
        }
    ]
    if scale.target_inflight is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": INFLIGHT_METRIC},
                    "target": {"type": "AverageValue", "averageValue": ko.quantity(scale.target_inflight)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ko.meta(name, namespace, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scale.min_replicas,
            "maxReplicas": scale.max_replicas,
            "metrics": metrics,
        },
    }


def queue_worker(
    service: str,
    endpoint_key: str,
    name: str,
    namespace: str | None,
    image: str,
    stream: str,
    group: str,
    pending: int,
    min_replicas: int,
    max_replicas: int,
) -> list[Doc]:
    """Queue-worker Deployment and its KEDA ScaledObject (Redis stream pending entries)."""
    labels = {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/component": "queue-worker",
        "modelyard.io/service": label_value(service),
        "modelyard.io/worker": label_value(name),
    }
    env = [
        *_replica_env(service),
        ko.secret_env("MODELYARD_REDIS_URL", REDIS_SECRET, "url"),
        # KEDA reads the scaler's connection from the target container's environment.
        ko.secret_env("REDIS_ADDRESS", REDIS_SECRET, "address"),
        ko.secret_env("REDIS_PASSWORD", REDIS_SECRET, "password", optional=True),
    ]
    args = ["queue-worker", "--service", service, "--endpoint", endpoint_key, "--stream", stream]
    container = ko.container("queue-worker", image, args, env, ko.resources(None, None, 0))
    volumes, mounts = ko.home_volume()
    container["volumeMounts"] = mounts
    pod = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"fsGroup": 1000},
        "terminationGracePeriodSeconds": 60,
    }
    deployment = ko.deployment(name, namespace, labels, pod, None)
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ko.meta(name, namespace, labels),
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "pollingInterval": 5,
            "cooldownPeriod": 120,
            "triggers": [
                {
                    "type": "redis-streams",
                    "metadata": {
                        "addressFromEnv": "REDIS_ADDRESS",
                        "passwordFromEnv": "REDIS_PASSWORD",
                        "stream": stream,
                        "consumerGroup": group,
                        "pendingEntriesCount": str(pending),
                    },
                }
            ],
        },
    }
    return [deployment, scaled]


def inference_manifests(spec: InferenceSpec, namespace: str | None, image: str) -> list[Doc]:
    """Service, per-predictor Deployment/PDB/HPA and the queue worker for one spec document."""
    service, name = spec.metadata.service, spec.metadata.name
    keys = [f"{name}/{p.endpoint_version}" for p in spec.spec.predictors]
    canary = canary_for(spec, keys)  # no file access: rendering needs no preprocess code
    docs: list[Doc] = [inference_service(service, namespace)]
    chosen = spec.spec.image or image
    for predictor in spec.spec.predictors:
        labels = {
            **service_labels(service),
            "modelyard.io/inference": label_value(name),
            "modelyard.io/predictor": label_value(predictor.name),
        }
        dep_name = dns_name("modelyard", service, name, predictor.name)
        res = predictor.resources
        gpu_image = chosen if chosen.endswith(GPU_SUFFIX) or res.gpu == 0 else chosen + GPU_SUFFIX
        replicas = None if predictor.auto_scale else predictor.replicas
        docs.append(
            inference_deployment(
                service,
                dep_name,
                labels,
                namespace,
                gpu_image,
                ko.resources(res.cpu, res.memory, res.gpu),
                replicas,
                res.gpu,
            )
        )
        docs.append(pdb(dep_name, namespace, labels))
        if predictor.auto_scale:
            docs.append(hpa(dep_name, namespace, labels, predictor.auto_scale))
    queue = spec.spec.queue
    if queue.enabled:
        target = canary.endpoint if canary else keys[0]
        docs.extend(
            queue_worker(
                service,
                target,
                dns_name("modelyard", service, name, "queue"),
                namespace,
                chosen,
                queue.stream,
                queue.consumer_group,
                queue.pending_entries,
                queue.min_replicas,
                queue.max_replicas,
            )
        )
    return docs


def render(
    specs: Sequence[InferenceSpec],
    namespace: str | None = None,
    image: str = DEFAULT_IMAGE,
    admin_token: str | None = None,
    platform: bool = True,
) -> list[Doc]:
    """Every manifest for the specs (plus the platform unless ``platform=False``), each once."""
    docs: list[Doc] = []
    if platform:
        docs.extend(control_plane(namespace, image, admin_token))
    for spec in specs:
        docs.extend(inference_manifests(spec, namespace, image))
    if platform:
        docs.append(service_monitor(namespace))
    unique: dict[tuple[str, str], Doc] = {}
    for doc in docs:  # a Service shared by several specs of one modelyard service appears once
        unique.setdefault((doc["kind"], doc["metadata"]["name"]), doc)
    return list(unique.values())


def kustomize_base(image: str = DEFAULT_IMAGE) -> dict[str, list[Doc]]:
    """The objects of ``deploy/kubernetes/`` (a kustomize base), by file name.

    The files are this function's output (the tests keep them equal), so the base and
    ``k8s render`` cannot drift apart. No namespace: kustomize's ``namespace:`` sets it.
    """
    labels = {**service_labels("default"), "modelyard.io/inference": "default"}
    scale = AutoScale(min_replicas=2, max_replicas=10, target_inflight=8)
    return {
        "control-plane.yaml": control_plane(None, image),
        "inference.yaml": [
            inference_service("default", None),
            inference_deployment(
                "default",
                "modelyard-inference",
                labels,
                None,
                image,
                ko.resources("1", "1Gi", 0),
                None,
                0,
            ),
            pdb("modelyard-inference", None, labels),
            hpa("modelyard-inference", None, labels, scale),
        ],
        "queue-worker.yaml": queue_worker(
            "default",
            "default",
            "modelyard-queue-worker",
            None,
            image,
            "serving_stream",
            "modelyard",
            10,
            0,
            10,
        ),
        "servicemonitor.yaml": [service_monitor(None)],
    }
