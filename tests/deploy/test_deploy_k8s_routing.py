"""``k8s render``'s traffic split: per-predictor Services and the Gateway API HTTPRoute over them."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import httpx
import orjson
import pytest

from modelyard.deploy import k8s
from modelyard.deploy.k8s_routing import gateway_weights
from modelyard.deploy.plan import canary_for
from modelyard.deploy.spec import InferenceSpec, SpecError, parse_file, parse_text
from modelyard.settings import Settings
from tests.deploy.k8s_checks import (
    by_kind,
    check_route_wiring,
    check_wiring,
    containers,
    env_of,
    path_key,
    route_paths,
    validate,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inference.yaml"

THREE = """\
apiVersion: modelyard.io/v1
kind: Inference
metadata: {name: wine, service: shop}
spec:
  framework: sklearn
  canaryEndpoint: wine_split
  gateway: {name: public, namespace: gateways}
  predictors:
    - {name: old, version: "9", model: {id: x}, trafficWeight: 0.5}
    - {name: new, version: "10", model: {id: x}, trafficWeight: 1.5}
    - {name: dark, version: "11", model: {id: x}, trafficWeight: 0}
"""


def backend_weights(route: dict, endpoint: str) -> dict[str, int | None]:
    (rule,) = [r for p, r in route_paths(route) if p == f"/serve/{endpoint}"]
    return {b["name"]: b.get("weight") for b in rule["backendRefs"]}


def check_weights(docs: list[dict], spec: InferenceSpec) -> None:
    """The weighted rule's backends are the spec's predictors, in the spec's proportions."""
    (route,) = [
        r for r in by_kind(docs, "HTTPRoute") if r["metadata"]["name"].endswith(f"-{spec.metadata.name}")
    ]
    keys = [f"{spec.metadata.name}/{p.endpoint_version}" for p in spec.spec.predictors]
    canary = canary_for(spec, keys)
    assert canary is not None
    weights = backend_weights(route, canary.endpoint)
    services = [
        d["metadata"]["name"]
        for key in keys
        for d in by_kind(docs, "Deployment")
        if env_of(d).get("MODELYARD_ENDPOINTS", {}).get("value") == key
    ]
    assert list(weights) == services
    got, want = list(weights.values()), canary.weights
    assert all(isinstance(w, int) for w in got)
    top_got, top_want = max(got), max(want)  # type: ignore[type-var]
    for g, w in zip(got, want, strict=True):
        assert g / top_got == pytest.approx(w / top_want, abs=1e-6)  # type: ignore[operator]


def test_weights_equal_the_spec() -> None:
    (spec,) = parse_file(EXAMPLE)
    docs = k8s.render([spec], namespace="ml")
    (route,) = by_kind(docs, "HTTPRoute")
    assert backend_weights(route, "iris") == {"modelyard-prod-iris-a": 90, "modelyard-prod-iris-b": 10}
    check_weights(docs, spec)
    (three,) = parse_text(THREE)
    docs = k8s.render([three])
    (route,) = by_kind(docs, "HTTPRoute")
    assert backend_weights(route, "wine_split") == {
        "modelyard-shop-wine-old": 5,
        "modelyard-shop-wine-new": 15,
        "modelyard-shop-wine-dark": 0,  # there, and gets nothing (its own version path still works)
    }
    check_weights(docs, three)
    even = parse_text(
        THREE.replace("trafficWeight: 0.5", "")
        .replace("trafficWeight: 1.5", "")
        .replace(", trafficWeight: 0", "")
    )
    check_weights(k8s.render(even), even[0])
    assert set(backend_weights(by_kind(k8s.render(even), "HTTPRoute")[0], "wine_split").values()) == {1}


def test_gateway_weights_keep_ratios_within_the_api_limits() -> None:
    assert gateway_weights([90.0, 10.0]) == [90, 10]
    assert gateway_weights([0.25, 0.75, 0.0]) == [25, 75, 0]
    assert gateway_weights([5e6, 1e6]) == [1_000_000, 200_000]  # int32 ≤ 1,000,000 each
    tiny = gateway_weights([1e-9, 1.0])
    assert tiny == [1, 1_000_000]  # a positive weight never becomes 0
    assert gateway_weights([1 / 3, 2 / 3]) == [500_000, 1_000_000]


def test_one_predictor_one_unweighted_backend_and_default_gateway() -> None:
    head = THREE[: THREE.index("  canaryEndpoint:")]
    single = head + "  predictors:\n    - {name: a, model: {id: x}}\n"
    docs = k8s.render(parse_text(single))
    (route,) = by_kind(docs, "HTTPRoute")
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "modelyard"}
    ]  # no namespace: the route's own
    rules = route["spec"]["rules"]
    assert len(rules) == 2 and all(
        r["backendRefs"] == [{"name": "modelyard-shop-wine-a", "port": 8080}] for r in rules
    )
    validate(route)
    check_wiring(docs)
    ns = by_kind(k8s.render(parse_text(single), namespace="ml"), "HTTPRoute")[0]
    assert ns["spec"]["parentRefs"][0]["namespace"] == "ml"


def test_other_canary_name_and_gateway_from_the_spec() -> None:
    docs = k8s.render(parse_text(THREE), namespace="shop-ns")
    (route,) = by_kind(docs, "HTTPRoute")
    validate(route)
    check_wiring(docs)
    assert route["spec"]["parentRefs"][0] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": "public",
        "namespace": "gateways",
    }
    paths = {p: [b["name"] for b in r["backendRefs"]] for p, r in route_paths(route)}
    # the split lives at the canary's name; OIP has no canary names, so no /v2 path for it
    assert len(paths["/serve/wine_split"]) == 3 and "/v2/models/wine_split" not in paths
    # the endpoint's own name answers with its highest version, as replicas do (11 > 10 > 9)
    assert paths["/serve/wine"] == paths["/v2/models/wine"] == ["modelyard-shop-wine-dark"]
    assert paths["/serve/wine/9"] == paths["/v2/models/wine/versions/9"] == ["modelyard-shop-wine-old"]


def test_spec_gateway_errors_point_at_the_line() -> None:
    bad = THREE.replace(
        "gateway: {name: public, namespace: gateways}", "gateway: {name: Public_GW, namespace: gateways}"
    )
    with pytest.raises(
        SpecError, match=r"<string>:7: spec\.gateway\.name: 'Public_GW' is not a Kubernetes object name"
    ):
        parse_text(bad)
    bad = THREE.replace("namespace: gateways}", "namespace: gateways, listener: web}")
    with pytest.raises(SpecError, match=r"<string>:7: spec\.gateway\.listener: unknown field"):
        parse_text(bad)


def test_more_predictors_than_an_httproute_can_hold_is_a_spec_error() -> None:
    predictors = "".join(f"    - {{name: p{i}, model: {{id: x}}}}\n" for i in range(16))
    text = THREE[: THREE.index("  predictors:")] + "  predictors:\n" + predictors
    with pytest.raises(
        SpecError, match=r"<string>:8: spec\.predictors: 16 predictors need 18 HTTPRoute rules"
    ):
        k8s.render(parse_text(text))
    fifteen = text.replace("  canaryEndpoint: wine_split\n", "").replace(
        "    - {name: p15, model: {id: x}}\n", ""
    )
    docs = k8s.render(parse_text(fifteen))
    (route,) = by_kind(docs, "HTTPRoute")
    assert len(route["spec"]["rules"]) == 16
    validate(route)


def test_route_paths_are_routes_of_the_inference_app(tmp_path: Path) -> None:
    """Every matched path reaches the app's endpoint lookup, not its "no route" answer."""
    from modelyard.server import create_inference_app

    docs = [*k8s.render(parse_file(EXAMPLE)), *k8s.render(parse_text(THREE), platform=False)]
    settings = Settings(home=tmp_path / "home", control_plane_url="http://127.0.0.1:9")  # type: ignore[call-arg]
    app = create_inference_app(settings)

    async def answers(paths: list[str]) -> list[tuple[str, int, str]]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as http:
            for path in paths:
                if path.startswith("/serve/"):
                    response = await http.post(path, json={"x0": 1})
                else:
                    response = await http.get(path)
                out.append((path, response.status_code, orjson.loads(response.content)["error"]))
        return out

    paths = [p for route in by_kind(docs, "HTTPRoute") for p, _ in route_paths(route)]
    assert len(paths) == 15
    for path, status, error in asyncio.run(answers([*paths, "/serve", "/v2/modelz/iris"])):
        if path in ("/serve", "/v2/modelz/iris"):  # the check can fail
            assert error.startswith("no route") or "use /serve/<endpoint>" in error, (path, error)
            continue
        endpoint, version = path_key(path)
        assert status == 404 and "not found" in error and not error.startswith("no route"), (path, error)
        assert (f"{endpoint}/{version}" if version else endpoint) in error, (path, error)


def test_wiring_catches_routes_to_the_wrong_pods() -> None:
    docs = k8s.render(parse_file(EXAMPLE))
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    services = by_kind(docs, "Service")
    (route,) = by_kind(docs, "HTTPRoute")
    check_route_wiring(route, services, deployments)

    swapped = copy.deepcopy(route)  # /serve/iris/a sent to b's pods, which load iris/b only
    swapped["spec"]["rules"][1]["backendRefs"][0]["name"] = "modelyard-prod-iris-b"
    with pytest.raises(AssertionError, match="load iris/b, not iris/a"):
        check_route_wiring(swapped, services, deployments)
    missing = copy.deepcopy(route)
    missing["spec"]["rules"][0]["backendRefs"][0]["name"] = "modelyard-prod"
    with pytest.raises(AssertionError, match="modelyard-prod is no rendered Service"):
        check_route_wiring(missing, services, deployments)
    wide = copy.deepcopy(services)  # a Service over the whole modelyard service spans both
    for svc in wide:
        svc["spec"]["selector"].pop("modelyard.io/predictor", None)
    with pytest.raises(AssertionError, match="spans 2 Deployments"):
        check_route_wiring(route, wide, deployments)
    wrong_path = copy.deepcopy(route)
    wrong_path["spec"]["rules"][1]["matches"][0]["path"]["value"] = "/predict/iris/a"
    with pytest.raises(AssertionError, match="no path the inference app serves"):
        check_route_wiring(wrong_path, services, deployments)


def test_wiring_catches_a_token_the_control_plane_does_not_know() -> None:
    docs = k8s.render(parse_file(EXAMPLE))
    check_wiring(docs)
    optional = copy.deepcopy(docs)  # the original bug: an optional reference to a Secret never rendered
    dep = next(d for d in by_kind(optional, "Deployment") if d["metadata"]["name"] == "modelyard-prod-iris-a")
    env_of(dep)["MODELYARD_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] = True
    with pytest.raises(AssertionError, match="without its token a replica is refused"):
        check_wiring(optional)
    other = copy.deepcopy(docs)
    dep = next(d for d in by_kind(other, "Deployment") if d["metadata"]["name"] == "modelyard-prod-iris-b")
    env_of(dep)["MODELYARD_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] = "other-key"
    with pytest.raises(AssertionError, match="a token the control plane never learns"):
        check_wiring(other)
    unrendered = [d for d in copy.deepcopy(docs) if d["metadata"]["name"] != "modelyard-replica-token"]
    with pytest.raises(AssertionError, match="modelyard-replica-token, which is not rendered"):
        check_wiring(unrendered)
    tokenless = copy.deepcopy(docs)
    dep = next(d for d in by_kind(tokenless, "Deployment") if d["metadata"]["name"].endswith("-queue"))
    containers(dep)[0]["env"] = [e for e in containers(dep)[0]["env"] if e["name"] != "MODELYARD_TOKEN"]
    with pytest.raises(AssertionError, match="presents no token"):
        check_wiring(tokenless)
