"""Building blocks of Kubernetes objects, and the names and ports every modelyard manifest shares.

Kept apart from :mod:`modelyard.deploy.k8s` (which decides *what* to run) so the kustomize
base, ``k8s render`` and the tests use one definition of a probe, a label set, a port.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import yaml

DEFAULT_IMAGE = "modelyard/modelyard:0.1.0"
GPU_SUFFIX = "-gpu"
PORT = 8080
HOME = "/var/lib/modelyard"
CONTROL_PLANE = "modelyard-control-plane"
ADMIN_SECRET = "modelyard-admin-token"
REPLICA_SECRET = "modelyard-replica-token"
POSTGRES_SECRET = "modelyard-postgres"
S3_SECRET = "modelyard-s3"
REDIS_SECRET = "modelyard-redis"
INFLIGHT_METRIC = "modelyard_inflight_requests"
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
METRICS_PATH = "/metrics"
PART_OF = {"app.kubernetes.io/part-of": "modelyard", "app.kubernetes.io/managed-by": "modelyard"}

Doc = dict[str, Any]


def dns_name(*parts: str) -> str:
    """A DNS-1123 name (lowercase, ``-``, ≤ 63) from modelyard names, which also allow ``_ . A-Z``."""
    raw = "-".join(parts).lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-") or "x"
    if len(name) > 63 or name != raw:  # a hash keeps distinct inputs distinct after mangling
        digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:6]
        name = f"{name[: 63 - 7].rstrip('-')}-{digest}"
    return name


def label_value(value: str) -> str:
    """Label values allow ``[A-Za-z0-9_.-]`` up to 63 characters, as modelyard names do up to 128."""
    if len(value) <= 63:
        return value
    return f"{value[:56].rstrip('-_.')}-{hashlib.sha256(value.encode()).hexdigest()[:6]}"


def meta(name: str, namespace: str | None, labels: dict[str, str]) -> Doc:
    meta: Doc = {"name": name, "labels": {**labels, **PART_OF}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def secret_env(name: str, secret: str, key: str, optional: bool = False) -> Doc:
    ref: Doc = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def storage_env() -> list[Doc]:
    """Database and artifact store settings for the control plane, all from Secrets."""
    return [
        secret_env("MODELYARD_DATABASE_URL", POSTGRES_SECRET, "database-url"),
        secret_env("MODELYARD_ARTIFACTS_URL", S3_SECRET, "artifacts-url"),
        secret_env("MODELYARD_ARTIFACTS_OPTIONS", S3_SECRET, "artifacts-options", optional=True),
        secret_env("AWS_ACCESS_KEY_ID", S3_SECRET, "access-key-id", optional=True),
        secret_env("AWS_SECRET_ACCESS_KEY", S3_SECRET, "secret-access-key", optional=True),
    ]


def probe(path: str, period: int, failures: int) -> Doc:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def container(name: str, image: str, args: list[str], env: list[Doc], resources: Doc) -> Doc:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["modelyard"],
        "args": args,
        "env": sorted(env, key=lambda e: e["name"]),
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000},
    }


def http_container(name: str, image: str, args: list[str], env: list[Doc], resources: Doc) -> Doc:
    doc = container(name, image, args, env, resources)
    doc["ports"] = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    return doc


def deployment(name: str, ns: str | None, labels: dict[str, str], pod: Doc, replicas: int | None) -> Doc:
    spec: Doc = {
        "selector": {"matchLabels": dict(labels)},
        "template": {"metadata": {"labels": {**labels, **PART_OF}}, "spec": pod},
    }
    if replicas is not None:  # left out when an autoscaler owns the count
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, ns, labels), "spec": spec}


def service(name: str, ns: str | None, labels: dict[str, str], selector: dict[str, str]) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, ns, {**labels, "modelyard.io/metrics": "true"}),
        "spec": {
            "selector": dict(selector),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def resources(cpu: str | None, memory: str | None, gpu: int) -> Doc:
    requests = {"cpu": cpu or "500m", "memory": memory or "512Mi"}
    limits: Doc = {"memory": memory or "512Mi"}
    if gpu > 0:
        limits["nvidia.com/gpu"] = gpu
    return {"requests": requests, "limits": limits}


def home_volume() -> tuple[list[Doc], list[Doc]]:
    return [{"name": "home", "emptyDir": {}}], [{"name": "home", "mountPath": HOME}]


def quantity(value: float) -> str:
    """``8`` → ``"8"``, ``0.5`` → ``"500m"``: Kubernetes quantities for a metric target."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def dump(docs: Iterable[Doc]) -> str:
    """Multi-document YAML, keys sorted: the same input always gives the same bytes."""
    return "".join(
        "---\n" + yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=1000) for doc in docs
    )
