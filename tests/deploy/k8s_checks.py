"""Validation and wiring checks shared by the render and kustomize-base tests.

Built-in kinds are validated with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas,
strict: unknown fields fail); the KEDA ``ScaledObject``, the ``ServiceMonitor`` and the Gateway
API ``HTTPRoute`` with their CRDs' published openAPIV3Schema (vendored in ``schemas/``, see its
README), just as strict.
"""

from __future__ import annotations

import json
import re
from functools import cache
from inspect import signature
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

from modelyard.cli.queue_worker import queue_worker
from modelyard.config import endpoint_key
from modelyard.deploy.k8s_objects import POSTGRES_SECRET, REDIS_SECRET, S3_SECRET
from modelyard.serving.selection import selects as filter_selects
from modelyard.settings import Settings

K8S_VERSIONS = ("1.28.0", "1.37.0")
SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects_v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors_v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io_httproutes_v1.json",
}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
FOREIGN_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "REDIS_ADDRESS", "REDIS_PASSWORD"}
"""Variables read by something other than Settings: s3fs/botocore, and KEDA's scaler."""
EXTERNAL_SECRETS = {POSTGRES_SECRET, S3_SECRET, REDIS_SECRET}
"""Secrets the operator creates (deploy/kubernetes/secrets.example.yaml); every other one a
manifest refers to must be rendered with it."""

Doc = dict[str, Any]


def strict(schema: Any) -> Any:
    """A CRD schema as ``--validate=strict`` applies it: unknown fields are errors, not pruned."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
    if "properties" in schema and not open_ended:
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(name: str) -> jsonschema.Draft202012Validator:
    schema = strict(json.loads((SCHEMAS / name).read_text()))
    return jsonschema.Draft202012Validator(schema)


def validate(doc: Doc) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(CRD_SCHEMAS[key]).validate(doc)
        # A CRD says only ``metadata: {type: object}``; the API server checks it as ObjectMeta.
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def containers(deployment: Doc) -> list[Doc]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def env_of(deployment: Doc) -> dict[str, Doc]:
    """The first container's env entries by name."""
    return {e["name"]: e for e in containers(deployment)[0].get("env", [])}


def check_wiring(docs: list[Doc], external_secrets: set[str] = EXTERNAL_SECRETS) -> None:
    """Selectors, names, probes, ports, env names and references agree across the documents."""
    settings_env = {f"MODELYARD_{name.upper()}" for name in Settings.model_fields}
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert len(names) == len(docs), "two objects of one kind share a name"
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    for doc in docs:
        assert DNS_1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]
        assert len(doc["metadata"]["name"]) <= 63
    for name, dep in deployments.items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selects(dep["spec"]["selector"]["matchLabels"], pod_labels), name
        others = [d for n, d in deployments.items() if n != name]
        assert not any(
            selects(dep["spec"]["selector"]["matchLabels"], o["spec"]["template"]["metadata"]["labels"])
            for o in others
        ), f"deployment {name}'s selector also matches another deployment's pods"
        for c in containers(dep):
            for env in c.get("env", []):
                if env["name"].startswith("MODELYARD_"):
                    assert env["name"] in settings_env, f"{name}: {env['name']} is no Settings field"
                else:
                    assert env["name"] in FOREIGN_ENV, f"{name}: unexpected variable {env['name']}"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ("Secret", ref["name"]) in names or ref["name"] in external_secrets, (
                        f"{name}: {env['name']} reads Secret {ref['name']}, which is not rendered"
                    )
                    if env["name"] in ("MODELYARD_TOKEN", "MODELYARD_REPLICA_TOKEN"):
                        assert not ref.get("optional"), f"{name}: without its token a replica is refused"
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["port"] in ports
            secrets_mounted = {
                v["secret"]["secretName"]
                for v in dep["spec"]["template"]["spec"].get("volumes", [])
                if "secret" in v
            }
            for secret in secrets_mounted:
                assert ("Secret", secret) in names or secret.startswith("modelyard-")
    for svc in by_kind(docs, "Service"):
        matched = [
            d
            for d in deployments.values()
            if selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert matched, f"service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            for dep in matched:
                assert any(
                    port["targetPort"] in {p["name"] for p in c.get("ports", [])} for c in containers(dep)
                ), f"service {svc['metadata']['name']} targets a port {dep['metadata']['name']} lacks"
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        hits = [d for d in deployments.values() if selects(sel, d["spec"]["template"]["metadata"]["labels"])]
        assert len(hits) == 1, f"PDB {pdb['metadata']['name']} covers {len(hits)} deployments"
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert "replicas" not in deployments[target["name"]]["spec"], "HPA and a fixed replica count fight"
        dep = deployments[target["name"]]
        assert all("cpu" in c["resources"].get("requests", {}) for c in containers(dep))
    check_tokens(deployments)
    metrics_services = [
        s for s in by_kind(docs, "Service") if s["metadata"]["labels"].get("modelyard.io/metrics")
    ]
    for name, dep in deployments.items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        scraped = [s for s in metrics_services if selects(s["spec"]["selector"], pod_labels)]
        assert len(scraped) <= 1, f"{name}'s pods are behind {len(scraped)} scraped Services: counted twice"
    for route in by_kind(docs, "HTTPRoute"):
        check_route_wiring(route, by_kind(docs, "Service"), deployments)
    for scaled in by_kind(docs, "ScaledObject"):
        check_keda_wiring(scaled, deployments[scaled["spec"]["scaleTargetRef"]["name"]])
    for monitor in by_kind(docs, "ServiceMonitor"):
        sel = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in by_kind(docs, "Service") if selects(sel, s["metadata"]["labels"])]
        assert services, "the ServiceMonitor selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for svc in services:
                assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}


def check_tokens(deployments: dict[str, Doc]) -> None:
    """Replicas present the very Secret key the control plane registers as the replica token."""
    registered = {
        (ref["name"], ref["key"])
        for dep in deployments.values()
        if (e := env_of(dep).get("MODELYARD_REPLICA_TOKEN")) and (ref := e["valueFrom"]["secretKeyRef"])
    }
    for name, dep in deployments.items():
        if containers(dep)[0]["args"][0] not in ("inference", "queue-worker"):
            continue
        token = env_of(dep).get("MODELYARD_TOKEN")
        assert token is not None, f"{name} presents no token: the control plane refuses its reports"
        ref = token["valueFrom"]["secretKeyRef"]
        if registered:  # the platform is rendered with it
            assert (ref["name"], ref["key"]) in registered, f"{name}: a token the control plane never learns"


def route_paths(route: Doc) -> list[tuple[str, Doc]]:
    """``(path, rule)`` for every path match of an HTTPRoute."""
    return [(m["path"]["value"], rule) for rule in route["spec"]["rules"] for m in rule["matches"]]


def path_key(path: str) -> tuple[str, str | None]:
    """``/serve/iris/a`` or ``/v2/models/iris/versions/a`` → ``("iris", "a")``; unversioned → None."""
    parts = path.strip("/").split("/")
    if parts[0] == "serve" and len(parts) in (2, 3):
        return parts[1], parts[2] if len(parts) == 3 else None
    if parts[:2] == ["v2", "models"] and len(parts) == 3:
        return parts[2], None
    if parts[:2] == ["v2", "models"] and len(parts) == 5 and parts[3] == "versions":
        return parts[2], parts[4]
    raise AssertionError(f"{path} is no path the inference app serves")


def check_route_wiring(route: Doc, services: list[Doc], deployments: dict[str, Doc]) -> None:
    """Each backend is a rendered Service over exactly one Deployment, whose pods load what is routed there.

    A versioned path must reach pods whose ``MODELYARD_ENDPOINTS`` selects that version; an
    unversioned one (a canary or an endpoint name) pods that load one of the versions the
    route has a rule for.
    """
    by_name = {s["metadata"]["name"]: s for s in services}
    routed = set()  # endpoint versions with a rule of their own
    for path, _ in route_paths(route):
        endpoint, version = path_key(path)
        if version is not None:
            routed.add(endpoint_key(endpoint, version))
    for path, rule in route_paths(route):
        endpoint, version = path_key(path)
        assert rule["backendRefs"], f"{path}: no backend"
        for backend in rule["backendRefs"]:
            svc = by_name.get(backend["name"])
            assert svc is not None, f"{path}: backend {backend['name']} is no rendered Service"
            assert backend["port"] in {p["port"] for p in svc["spec"]["ports"]}, f"{path}: wrong port"
            hits = [
                d
                for d in deployments.values()
                if selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
            ]
            assert len(hits) == 1, f"{path}: Service {backend['name']} spans {len(hits)} Deployments"
            value = env_of(hits[0]).get("MODELYARD_ENDPOINTS", {}).get("value", "")
            patterns = [p for p in value.split(",") if p]
            if version is not None:
                key = endpoint_key(endpoint, version)
                assert filter_selects(patterns, key), f"{path} goes to pods that load {value}, not {key}"
            else:
                assert not patterns or any(filter_selects(patterns, key) for key in routed), (
                    f"{path} goes to pods that load {value}, none of the versions this route serves"
                )


def flags(args: list[str]) -> dict[str, str]:
    """``["queue-worker", "--stream", "s", "--group", "g"]`` → ``{"--stream": "s", "--group": "g"}``."""
    out = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            assert arg not in out, f"{arg} given twice in {args}"
            out[arg] = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
    return out


def worker_defaults() -> dict[str, str]:
    """``modelyard queue-worker``'s own defaults, by flag (``--group`` → ``modelyard``...)."""
    out = {}
    for param in signature(queue_worker).parameters.values():
        option = param.default
        if option.default is not None and option.default is not ...:
            out[option.param_decls[0]] = str(option.default)
    return out


def check_keda_wiring(scaled: Doc, worker: Doc) -> None:
    """KEDA measures the stream and consumer group the worker reads with, in modes that wake it.

    The worker's defaults (``--stream serving_stream --group modelyard``) count when a flag is
    left out, so a trigger naming another group (one nobody consumes) fails here.
    """
    (container,) = containers(worker)
    assert container["args"][0] == "queue-worker", container["args"]
    given = {**worker_defaults(), **flags(container["args"][1:])}
    known = {decl for p in signature(queue_worker).parameters.values() for decl in p.default.param_decls}
    assert set(given) <= known, f"queue-worker has no {sorted(set(given) - known)}"
    env = {e["name"] for e in container.get("env", [])}
    triggers = scaled["spec"]["triggers"]
    assert triggers, "a ScaledObject without triggers"
    modes = set()
    for trigger in triggers:
        assert trigger["type"] == "redis-streams", trigger
        meta = trigger["metadata"]
        for key, value in meta.items():
            if key.endswith("FromEnv"):
                assert value in env, f"KEDA reads {value} from the worker's env, which lacks it"
        assert meta["stream"] == given["--stream"], (meta["stream"], given["--stream"])
        assert meta.get("consumerGroup") == given["--group"], (meta.get("consumerGroup"), given["--group"])
        if "lagCount" in meta:
            modes.add("lag")
        elif "pendingEntriesCount" in meta:
            modes.add("pending")
            assert meta["pendingEntriesCount"] == given["--batch-size"], "one worker per batch in flight"
        else:
            modes.add("length")
    if scaled["spec"].get("minReplicaCount", 0) == 0:
        assert "lag" in modes, "with minReplicaCount 0 only a lag trigger can wake the first worker"
