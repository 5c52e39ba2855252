"""``deploy/kubernetes/``: equal to what the code renders, valid, wired; compose and Dockerfiles sane."""

from __future__ import annotations

from pathlib import Path

import yaml

from modelyard.deploy.k8s import kustomize_base
from modelyard.settings import Settings
from tests.deploy.k8s_checks import check_wiring, validate

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"


def test_base_files_equal_the_rendered_objects() -> None:
    """Regenerate with kustomize_base() after changing k8s.py (see the files' first line)."""
    for name, docs in kustomize_base().items():
        assert list(yaml.safe_load_all((BASE / name).read_text())) == docs, name


def test_kustomization_lists_every_manifest_and_all_validate() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(kustomize_base())
    docs = [d for name in kustomization["resources"] for d in yaml.safe_load_all((BASE / name).read_text())]
    for doc in docs:
        validate(doc)
    check_wiring(docs)
    for doc in yaml.safe_load_all((BASE / "secrets.example.yaml").read_text()):
        validate(doc)


def test_example_secrets_have_every_key_the_base_reads() -> None:
    examples = {
        d["metadata"]["name"]: set(d["stringData"])
        for d in yaml.safe_load_all((BASE / "secrets.example.yaml").read_text())
    }
    for name in kustomize_base():
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            text = yaml.safe_dump(doc)
            if "secretKeyRef" not in text:
                continue
            pod = doc["spec"]["template"]["spec"]
            for c in pod["containers"]:
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in examples[ref["name"]], (ref, name)


def test_compose_stack_wiring() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    for name in (
        "control-plane",
        "inference",
        "queue-worker",
        "postgres",
        "redis",
        "minio",
        "prometheus",
        "grafana",
    ):
        assert name in services, name
    fields = {f"MODELYARD_{f.upper()}" for f in Settings.model_fields}
    for name, svc in services.items():
        for key in svc.get("environment", {}):
            if key.startswith("MODELYARD_"):
                assert key in fields, f"{name}: {key} is no Settings field"
        for dep in svc.get("depends_on", {}):
            assert dep in services
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("."):  # bind mounts: the files the monitoring work writes
            assert source.startswith(("./prometheus/", "./grafana/")), mount
    cp = services["control-plane"]["environment"]
    # replicas and queue workers present the reader token the control plane registers
    token = cp["MODELYARD_REPLICA_TOKEN"]
    assert token
    for name in ("inference", "inference-2", "queue-worker"):
        assert services[name]["environment"]["MODELYARD_TOKEN"] == token, name
    assert cp["MODELYARD_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert cp["MODELYARD_ARTIFACTS_URL"].startswith("s3://")


def test_dockerfiles() -> None:
    cpu = (REPO / "Dockerfile").read_text()
    gpu = (REPO / "Dockerfile.gpu").read_text()
    # built and run by tests/deploy/test_compose_e2e.py; here, what a reader of the files relies on
    assert "ARG BASE_IMAGE=python:3.11-slim" in cpu and "ARG EXTRAS=all\n" in cpu
    assert "ARG EXTRAS=all,torch,gpu" in gpu and "onnxruntime-gpu" in gpu, "CUDA builds and NVML"
    for text in (cpu, gpu):
        assert "--no-index --find-links /wheels" in text, "installs from the wheelhouse only"
        assert "USER 1000" in text and "EXPOSE 8080" in text and 'ENTRYPOINT ["modelyard"]' in text
        assert "VOLUME /var/lib/modelyard" in text and "/health/ready" in text
