"""Kubernetes manifests for the platform and for ``Inference`` specs (``modelyard k8s render``).

What is rendered, and why it is shaped so:

* control plane — ``modelyard control-plane`` (Deployment, Service: the API and dashboard
  alone, no replica of its own); its database and artifact store come from the
  ``modelyard-postgres`` / ``modelyard-s3`` Secrets, its admin token from the
  ``modelyard-admin-token`` Secret mounted as ``<home>/token`` (the file the control plane
  registers as admin on start), and ``MODELYARD_REPLICA_TOKEN`` from the
  ``modelyard-replica-token`` Secret, which it registers as the ``replica`` token
  ``replicas``. Replicas and queue workers present that same Secret as ``MODELYARD_TOKEN``:
  the control plane demands a ``replica`` token for status reports and statistics and a valid
  one for artifact downloads, and that is all the role allows (a leaked one changes no
  configuration). Without
  ``--admin-token`` / ``--replica-token`` the Secrets are rendered empty, and the references
  to them are not optional, so pods wait until someone fills them; a default token would be
  a hole.
* per predictor: a Deployment (``modelyard inference`` with ``MODELYARD_ENDPOINTS`` set to
  its own endpoint version, so it loads that model only), a Service over its pods, a
  PodDisruptionBudget and, from ``autoScale``, a HorizontalPodAutoscaler (CPU + the Pods
  metric ``modelyard_inflight_requests`` through the Prometheus adapter). One predictor per
  Deployment is what makes per-predictor resources mean something: a GPU predictor's model
  never loads on CPU pods, and each autoscaler sees its own predictor's load.
* one Gateway API ``HTTPRoute`` per spec (:mod:`modelyard.deploy.k8s_routing`): the traffic
  split moves from the replicas to the Gateway named by ``spec.gateway`` — ``/serve/<name>``
  weighted over the predictors' Services by ``trafficWeight``, ``/serve/<name>/<version>``
  (and the OIP ``/v2/models/<name>/versions/<version>``) to that predictor alone. No Service
  over the whole modelyard service is rendered: with one version per pod it would send a
  request for ``iris/b`` to pods that only have ``iris/a``.
* queue workers (``modelyard queue-worker --group G``) with a KEDA ``ScaledObject`` on that
  same consumer group: its lag (``lagCount``: entries no worker has taken yet, Redis ≥ 7)
  wakes workers from zero and scales on the backlog; its pending entries (taken, not yet
  acknowledged; one worker per ``--batch-size``) keep busy workers up once the lag is 0 and
  wake one for entries a stopped worker left (and cover the moments the lag reads 0 while
  workers delete acknowledged entries out of order: Redis cannot tell the lag then). Pending
  entries alone cannot scale from zero: they exist only once a worker has read them. Idle
  workers go back to zero after ``cooldownPeriod``. Workers serve the canary endpoint, so
  they load every predictor's model (no ``MODELYARD_ENDPOINTS``).
* a ServiceMonitor scraping ``/metrics`` of every Service labelled ``modelyard.io/metrics``
  (each pod sits behind exactly one such Service, so it is scraped once).

The kustomize base (:func:`kustomize_base`) is the platform with one generic replica
Deployment serving the whole ``default`` service behind one Service; per-model objects come
from ``k8s render --no-platform``.

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
    REPLICA_SECRET,
    Doc,
    dns_name,
    dump,
    label_value,
)
from modelyard.deploy.k8s_queue import queue_worker
from modelyard.deploy.k8s_routing import http_route, predictor_service
from modelyard.deploy.plan import canary_for
from modelyard.deploy.spec import AutoScale, InferenceSpec, Queue
from modelyard.errors import BadRequest

__all__ = ["DEFAULT_IMAGE", "dump", "render"]

# -- the platform ---------------------------------------------------------------------------


def token_secret(name: str, namespace: str | None, labels: dict[str, str], token: str | None) -> Doc:
    """A Secret with one ``token`` key: the given one, or empty with a note on how to fill it.

    Empty rather than generated: a token in rendered YAML ends up in git, and the pods that
    need it (non-optional references) wait until someone fills it, so nothing runs unguarded.
    """
    secret: Doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": ko.meta(name, namespace, labels),
        "type": "Opaque",
    }
    if token:
        secret["stringData"] = {"token": token}
    else:
        secret["metadata"]["annotations"] = {
            "modelyard.io/fill-me": f"kubectl create secret generic {name} "
            "--from-literal=token=$(openssl rand -hex 32) --dry-run=client -o yaml | kubectl apply -f -"
        }
    return secret


def control_plane(
    namespace: str | None, image: str, admin_token: str | None = None, replica_token: str | None = None
) -> list[Doc]:
    """Admin- and replica-token Secrets, control plane Deployment and Service."""
    labels = {"app.kubernetes.io/name": "modelyard", "app.kubernetes.io/component": "control-plane"}
    env = [
        {"name": "MODELYARD_HOME", "value": HOME},
        {"name": "MODELYARD_HOST", "value": "0.0.0.0"},
        {"name": "MODELYARD_PORT", "value": str(PORT)},
        # registered as the replica token "replicas" at start: what replicas present
        ko.secret_env("MODELYARD_REPLICA_TOKEN", REPLICA_SECRET, "token"),
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
        token_secret(ADMIN_SECRET, namespace, labels, admin_token),
        token_secret(REPLICA_SECRET, namespace, labels, replica_token),
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
        # the control plane's MODELYARD_REPLICA_TOKEN: reports, stats and artifacts need it
        ko.secret_env("MODELYARD_TOKEN", REPLICA_SECRET, "token"),
    ]


def service_labels(service: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/component": "inference",
        "modelyard.io/service": label_value(service),
    }


def inference_service(service: str, namespace: str | None) -> Doc:
    """One Kubernetes Service over all pods of a modelyard service (the kustomize base's
    replicas, which serve the whole service; ``k8s render`` gives each predictor its own)."""
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
    endpoints: list[str] | None = None,
) -> Doc:
    """``modelyard inference``; with ``endpoints`` it loads only those endpoint versions."""
    env = [
        *_replica_env(service),
        {"name": "MODELYARD_HOST", "value": "0.0.0.0"},
        {"name": "MODELYARD_PORT", "value": str(PORT)},
    ]
    if endpoints:
        env.append({"name": "MODELYARD_ENDPOINTS", "value": ",".join(endpoints)})
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


def inference_manifests(spec: InferenceSpec, namespace: str | None, image: str) -> list[Doc]:
    """Per-predictor Deployment/Service/PDB/HPA, the HTTPRoute and the queue worker of one spec."""
    service, name = spec.metadata.service, spec.metadata.name
    keys = [f"{name}/{p.endpoint_version}" for p in spec.spec.predictors]
    canary = canary_for(spec, keys)  # no file access: rendering needs no preprocess code
    docs: list[Doc] = []
    services: dict[str, str] = {}
    chosen = spec.spec.image or image
    spec_labels = {**service_labels(service), "modelyard.io/inference": label_value(name)}
    for key, predictor in zip(keys, spec.spec.predictors, strict=True):
        labels = {**spec_labels, "modelyard.io/predictor": label_value(predictor.name)}
        dep_name = dns_name("modelyard", service, name, predictor.name)
        services[key] = dep_name
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
                endpoints=[key],
            )
        )
        docs.append(predictor_service(dep_name, namespace, labels))
        docs.append(pdb(dep_name, namespace, labels))
        if predictor.auto_scale:
            docs.append(hpa(dep_name, namespace, labels, predictor.auto_scale))
    docs.append(http_route(spec, namespace, spec_labels, services, canary))
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
                queue,
                _replica_env(service),
            )
        )
    return docs


def render(
    specs: Sequence[InferenceSpec],
    namespace: str | None = None,
    image: str = DEFAULT_IMAGE,
    admin_token: str | None = None,
    platform: bool = True,
    replica_token: str | None = None,
) -> list[Doc]:
    """Every manifest for the specs (plus the platform unless ``platform=False``), each once."""
    docs: list[Doc] = []
    if platform:
        docs.extend(control_plane(namespace, image, admin_token, replica_token))
    for spec in specs:
        docs.extend(inference_manifests(spec, namespace, image))
    if platform:
        docs.append(service_monitor(namespace))
    seen: dict[tuple[str, str], Doc] = {}
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        if key in seen:  # two specs whose names map to one object name: one would overwrite the other
            raise BadRequest(f"two objects would be the {key[0]} {key[1]!r}: rename a spec or a predictor")
        seen[key] = doc
    return docs


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
            Queue(),
            _replica_env("default"),
        ),
        "servicemonitor.yaml": [service_monitor(None)],
    }
