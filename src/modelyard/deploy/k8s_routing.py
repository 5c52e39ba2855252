"""Per-predictor Services and the Gateway API ``HTTPRoute`` that splits traffic between them.

Why the split is Kubernetes' job and not the replicas': each predictor runs as its own
Deployment that loads only its own endpoint version (``MODELYARD_ENDPOINTS``), so a GPU
predictor's model never loads on CPU pods and each HorizontalPodAutoscaler scales on its
own predictor's load. A replica can then only answer for its own version, so something in
front must choose the predictor: the ``HTTPRoute`` (``gateway.networking.k8s.io/v1``) does,
with the spec's ``trafficWeight`` as its ``backendRefs`` weights:

* ``/serve/<canary>`` (and, when the canary is the endpoint's own name, the OIP
  ``/v2/models/<name>``) → every predictor's Service, weighted. ``PathPrefix`` matches whole
  path segments, so ``/serve/iris`` and ``/serve/iris/`` match, ``/serve/iris2`` does not; a
  version no predictor has (``/serve/iris/x``) lands on a predictor and gets its 404.
* ``/serve/<name>/<version>`` and ``/v2/models/<name>/versions/<version>`` → that
  predictor's Service alone (a longer prefix wins over the weighted rule).
* with ``spec.canaryEndpoint`` set to another name, ``/serve/<name>`` goes to the highest
  version, as on one machine.

On each pod the canary keeps only its own target (see :mod:`modelyard.serving.selection`),
so ``/serve/iris`` arriving at predictor ``a`` is answered by ``iris/a``. Sticky canaries and
shadows are the replicas' features; with one version per pod they do not apply (use the
Gateway's session persistence or ``RequestMirror`` filter instead).
"""

from __future__ import annotations

from modelyard.deploy import k8s_objects as ko
from modelyard.deploy.k8s_objects import PORT, Doc
from modelyard.deploy.plan import CanaryPlan
from modelyard.deploy.spec import InferenceSpec, SpecError

GATEWAY_GROUP = "gateway.networking.k8s.io"
MAX_WEIGHT = 1_000_000
"""An HTTPRoute backendRef's weight is an int32 in 0..1,000,000."""
MAX_RULES = 16
"""HTTPRoute allows 16 rules (and 16 backendRefs per rule)."""


def serve_path(endpoint: str, version: str = "") -> str:
    return f"/serve/{endpoint}/{version}" if version else f"/serve/{endpoint}"


def oip_path(endpoint: str, version: str = "") -> str:
    return f"/v2/models/{endpoint}/versions/{version}" if version else f"/v2/models/{endpoint}"


def gateway_weights(weights: list[float]) -> list[int]:
    """The spec's weights as HTTPRoute integers with the same ratios.

    Whole numbers stay as they are (``90, 10``); decimals are scaled by the smallest power
    of ten that makes them whole (``0.5, 1.5`` → ``5, 15``); anything else is scaled so the
    largest is 1,000,000 (a positive weight never becomes 0).
    """
    for digits in range(7):
        scaled = [w * 10**digits for w in weights]
        if all(abs(x - round(x)) <= 1e-9 * max(1.0, abs(x)) and (round(x) > 0) == (x > 0) for x in scaled):
            whole = [round(x) for x in scaled]
            if max(whole) <= MAX_WEIGHT:
                return whole
            break
    top = max(weights)
    return [max(1, round(w / top * MAX_WEIGHT)) if w > 0 else 0 for w in weights]


def predictor_service(name: str, namespace: str | None, labels: dict[str, str]) -> Doc:
    """A Service over one predictor's pods: the HTTPRoute's backend, and what Prometheus scrapes."""
    return ko.service(name, namespace, labels, labels)


def http_route(
    spec: InferenceSpec,
    namespace: str | None,
    labels: dict[str, str],
    services: dict[str, str],
    canary: CanaryPlan | None,
) -> Doc:
    """The HTTPRoute of one spec; ``services`` maps each endpoint version key to its Service."""
    name = spec.metadata.name
    predictors = spec.spec.predictors
    split = canary.endpoint if canary else name
    extra = canary is not None and split != name
    if 1 + int(extra) + len(predictors) > MAX_RULES:
        raise SpecError(
            [
                f"{spec.line_of('spec', 'predictors')}: spec.predictors: {len(predictors)} predictors need "
                f"{1 + int(extra) + len(predictors)} HTTPRoute rules; Kubernetes allows {MAX_RULES}"
            ]
        )
    targets, weights = (
        (canary.targets, canary.weights) if canary else ([f"{name}/{predictors[0].endpoint_version}"], [1.0])
    )
    backends = [{"name": services[t], "port": PORT} for t in targets]
    if canary is not None:
        for backend, weight in zip(backends, gateway_weights(weights), strict=True):
            backend["weight"] = weight
    rules = [_rule(_matches(split, "", oip=split == name), backends)]
    if extra:  # /serve/<name> without a version: the highest version, as the replicas route it
        from modelyard.serving.table import version_order

        top = max(predictors, key=lambda p: version_order(p.endpoint_version)).endpoint_version
        rules.append(_rule(_matches(name, ""), [{"name": services[f"{name}/{top}"], "port": PORT}]))
    for predictor in predictors:
        version = predictor.endpoint_version
        service = services[f"{name}/{version}"]
        rules.append(_rule(_matches(name, version), [{"name": service, "port": PORT}]))
    gateway = spec.spec.gateway
    parent: Doc = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace or namespace:
        parent["namespace"] = gateway.namespace or namespace
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": ko.meta(ko.dns_name("modelyard", spec.metadata.service, name), namespace, labels),
        "spec": {"parentRefs": [parent], "rules": rules},
    }


def _matches(endpoint: str, version: str, oip: bool = True) -> list[Doc]:
    paths = [serve_path(endpoint, version)] + ([oip_path(endpoint, version)] if oip else [])
    return [{"path": {"type": "PathPrefix", "value": path}} for path in paths]


def _rule(matches: list[Doc], backends: list[Doc]) -> Doc:
    return {"matches": matches, "backendRefs": backends}
