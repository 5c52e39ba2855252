"""The built-in dashboard in Debian's Chromium (Playwright): endpoints shown, live chart moves.

The server runs the bundled examples (what ``modelyard serve --examples`` deploys), a canary
with a shadow, an auto-deploy rule and an endpoint that fails to load. Also checks the
overview JSON the page polls. Saves a screenshot to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.client import Client
from modelyard.demo import deploy_examples, examples_dir
from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.monitoring.tools import Load, ensure_debian_package
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import Api, train_sklearn, wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.slow, pytest.mark.browser]


EXAMPLE = "test_model_sklearn/1"
"""The example endpoint the test sends traffic to."""


class Server:
    def __init__(self, url: str, api: Api, examples: list[str]) -> None:
        self.url, self.api, self.examples = url, api, examples


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    settings = settings.model_copy(update={"sync_wait_s": 5, "stats_interval_s": 0.5})
    root = examples_dir()
    assert root is not None, "run from a checkout: examples/ is missing"
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        api = Api(url, settings.token_file().read_text().strip())
        api.http.post(
            "/api/services/default/metrics",
            json={
                "endpoint": "test_model_sklearn/*",
                "log_freq": 0.5,
                "variables": [{"name": "x0", "kind": "value"}],
            },
        ).raise_for_status()
        results = deploy_examples(Client(url=url, settings=settings), "default", root)  # serve --examples
        assert not [r for r in results if r.error], [(r.name, r.error) for r in results if r.error]
        samples = [sample for result in results for sample in result.samples]
        for key, sample in samples:
            wait_for(
                lambda k=key, b=sample: httpx.post(f"{url}/serve/{k}", json=b).status_code == 200, timeout=60
            )
        for version in ("1", "2"):
            path = tmp_path / f"iris-{version}.pkl"
            train_sklearn(path, seed=int(version))
            api.model(path, "iris", project="demo")
        rule = {
            "endpoint": "iris_auto",
            "engine": "sklearn",
            "name": "iris.*",
            "project": "demo",
            "max_versions": 2,
        }
        api.http.post("/api/services/default/auto-deploy", json=rule).raise_for_status()
        canary = {
            "endpoint": "iris_ab",
            "weights": [0.1, 0.9],
            "prefix": "iris_auto",
            "shadow": ["test_model_sklearn/1"],
        }
        api.http.post("/api/services/default/canaries", json=canary).raise_for_status()
        broken = tmp_path / "broken.pkl"
        broken.write_bytes(b"not a pickle")
        api.endpoint(endpoint="broken", version="1", engine="sklearn", model_id=api.model(broken, "broken"))
        yield Server(url, api, [key for key, _ in samples])


def test_overview_json_lists_examples_canaries_and_auto_deploy_rules(server: Server) -> None:
    overview = server.api.http.get("/ui/api/overview").json()
    keys = {e["key"] for e in overview["endpoints"]}
    assert set(server.examples) | {"iris_auto/1", "iris_auto/2", "broken/1"} <= keys
    assert len(server.examples) >= 6, (
        server.examples
    )  # sklearn, xgboost, lightgbm, custom, ensemble, pipeline
    [rule] = overview["auto_deploy"]
    assert (rule["endpoint"], rule["name"], rule["project"], rule["max_versions"]) == (
        "iris_auto",
        "iris.*",
        "demo",
        2,
    )
    assert [d["key"] for d in rule["deployed"]] == ["iris_auto/1", "iris_auto/2"]
    [canary] = overview["canaries"]
    assert (canary["endpoint"], canary["prefix"], canary["shadow"]) == ("iris_ab", "iris_auto", [EXAMPLE])


def test_dashboard_shows_endpoints_and_live_chart_moves(server: Server) -> None:
    from playwright.sync_api import sync_playwright

    url = server.url
    chromium = ensure_debian_package("chromium", "chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/ui")
            selector = f'.card[data-key="{EXAMPLE}"]'
            page.wait_for_selector(selector)
            for key in [*server.examples, "iris_auto/1", "iris_auto/2", "broken/1"]:
                assert page.locator(f'.card[data-key="{key}"]').count() == 1, key
            for key in [*server.examples, "iris_auto/2"]:
                page.wait_for_function(
                    f"document.querySelector('.card[data-key=\"{key}\"] .badge').textContent === 'ready'"
                )
            page.wait_for_function(
                "document.querySelector('.card[data-key=\"broken/1\"] .badge').textContent === 'failed'"
            )
            card = page.locator(selector)
            assert "sklearn" in card.locator(".meta").inner_text()
            assert page.locator('.card[data-key="broken/1"] .reason').inner_text()
            assert "iris" in page.locator("#models").inner_text()
            assert "test_model_sklearn/*" in page.locator("#rules").inner_text()
            auto = page.locator("#auto")
            assert page.locator("#auto-section").is_visible()
            for text in ("iris_auto", "iris.*", "demo", "iris_auto/1, iris_auto/2"):
                assert text in auto.inner_text(), (text, auto.inner_text())
            canaries = page.locator("#canaries").inner_text()
            assert "iris_ab" in canaries and "iris_auto/*" in canaries and EXAMPLE in canaries, canaries
            idle_rate = float(card.locator(".rate").inner_text())
            rate_js = f"parseFloat(document.querySelector('{selector} .rate').textContent)"

            def request(i: int) -> tuple[str, dict[str, Any]]:
                return f"/serve/{EXAMPLE}", {"x0": i % 4, "x1": 1}

            with Load(url, request, threads=3, pause_s=0.002):
                page.wait_for_function(f"{rate_js} > 5", timeout=20_000)
                page.wait_for_function(f"document.querySelector('{selector} .p99').textContent.endsWith('s')")
                page.wait_for_function(
                    f"parseInt(document.querySelector('{selector}').dataset.points) >= 6",
                    timeout=20_000,
                )
                busy_rate = float(card.locator(".rate").inner_text())
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert busy_rate > idle_rate
            # the chart has pixels drawn in the rate colour (blue)
            drawn = page.evaluate(
                """(selector) => {
                    const c = document.querySelector(selector + ' canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let blue = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 180 && d[i] < 100) blue++;
                    return blue;
                }""",
                selector,
            )
            assert drawn > 20
            assert not errors, errors
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
