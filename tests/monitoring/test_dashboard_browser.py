"""The built-in dashboard in Debian's Chromium (Playwright): endpoints shown, live chart moves.

Saves a screenshot to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.monitoring.tools import Load, ensure_debian_package
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import PREPROCESS_XY, Api, train_sklearn, wait_for

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


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Api]]:
    settings = settings.model_copy(update={"sync_wait_s": 5, "stats_interval_s": 0.5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        api = Api(url, settings.token_file().read_text().strip())
        api.http.post(
            "/api/services/default/metrics",
            json={"endpoint": "iris/*", "log_freq": 0.5, "variables": [{"name": "x0", "kind": "value"}]},
        ).raise_for_status()
        for name, version in (("iris", "1"), ("iris", "2"), ("sentiment", "1")):
            path = tmp_path / f"{name}-{version}.pkl"
            train_sklearn(path)
            api.endpoint(
                endpoint=name,
                version=version,
                engine="sklearn",
                model_id=api.model(path, name, project="demo"),
                preprocess=api.code(PREPROCESS_XY),
            )
        broken = tmp_path / "broken.pkl"
        broken.write_bytes(b"not a pickle")
        api.endpoint(endpoint="broken", version="1", engine="sklearn", model_id=api.model(broken, "broken"))
        for key in ("iris/1", "iris/2", "sentiment/1"):
            wait_for(lambda k=key: httpx.post(f"{url}/serve/{k}", json={"x0": 1, "x1": 2}).status_code == 200)
        yield url, api


def test_dashboard_shows_endpoints_and_live_chart_moves(server: tuple[str, Api]) -> None:
    from playwright.sync_api import sync_playwright

    url, _ = server
    chromium = ensure_debian_package("chromium", "chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/ui")
            page.wait_for_selector('.card[data-key="iris/1"]')
            for key in ("iris/1", "iris/2", "sentiment/1", "broken/1"):
                assert page.locator(f'.card[data-key="{key}"]').count() == 1, key
            card = page.locator('.card[data-key="iris/1"]')
            page.wait_for_function(
                "document.querySelector('.card[data-key=\"iris/1\"] .badge').textContent === 'ready'"
            )
            page.wait_for_function(
                "document.querySelector('.card[data-key=\"broken/1\"] .badge').textContent === 'failed'"
            )
            assert "sklearn" in card.locator(".meta").inner_text()
            assert page.locator('.card[data-key="broken/1"] .reason').inner_text()
            assert "iris" in page.locator("#models").inner_text()
            assert "iris/*" in page.locator("#rules").inner_text()
            idle_rate = float(card.locator(".rate").inner_text())

            def request(i: int) -> tuple[str, dict[str, Any]]:
                return ("/serve/iris/1" if i % 3 else "/serve/iris/2"), {"x0": i % 4, "x1": 1}

            with Load(url, request, threads=3, pause_s=0.002):
                page.wait_for_function(
                    "parseFloat(document.querySelector('.card[data-key=\"iris/1\"] .rate').textContent) > 5",
                    timeout=20_000,
                )
                page.wait_for_function(
                    "document.querySelector('.card[data-key=\"iris/1\"] .p99').textContent.endsWith('s')"
                )
                page.wait_for_function(
                    "parseInt(document.querySelector('.card[data-key=\"iris/1\"]').dataset.points) >= 6",
                    timeout=20_000,
                )
                busy_rate = float(card.locator(".rate").inner_text())
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert busy_rate > idle_rate
            # the chart has pixels drawn in the rate colour (blue)
            drawn = page.evaluate(
                """() => {
                    const c = document.querySelector('.card[data-key="iris/1"] canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let blue = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 180 && d[i] < 100) blue++;
                    return blue;
                }"""
            )
            assert drawn > 20
            assert not errors, errors
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
