"""Validation and wiring checks shared by the render and kustomize-base tests.

Built-in kinds are validated with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas,
strict: unknown fields fail); the KEDA ``ScaledObject`` and ``ServiceMonitor`` CRDs with the
JSON schemas in ``schemas/`` (written from the CRDs' openAPIV3Schema; nothing outside PyPI is
reachable here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

from modelyard.settings import Settings

K8S_VERSIONS = ("1.28.0", "1.37.0")
SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
FOREIGN_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "REDIS_ADDRESS", "REDIS_PASSWORD"}
"""Variables read by something other than Settings: s3fs/botocore, and KEDA's scaler."""

Doc = dict[str, Any]


def validate(doc: Doc) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def containers(deployment: Doc) -> list[Doc]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def check_wiring(docs: list[Doc]) -> None:
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
    for scaled in by_kind(docs, "ScaledObject"):
        dep = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        env = {e["name"] for c in containers(dep) for e in c.get("env", [])}
        for trigger in scaled["spec"]["triggers"]:
            for key, value in trigger["metadata"].items():
                if key.endswith("FromEnv"):
                    assert value in env, f"KEDA reads {value} from the worker's env, which lacks it"
    for monitor in by_kind(docs, "ServiceMonitor"):
        sel = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in by_kind(docs, "Service") if selects(sel, s["metadata"]["labels"])]
        assert services, "the ServiceMonitor selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for svc in services:
                assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
