"""New preprocess code through the CLI is live within 1 s; only that endpoint reloads; old code unloads.

The user code writes an event file (``load``/``start``/``finish``/``unload`` with its tag and a
``time.monotonic()`` stamp; the server runs in this process, so the clock is shared) and
answers with ``id(self)``: a reload shows as a second ``load`` line and a new instance id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.server import create_all_in_one_app
from modelyard.settings import Settings
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import run_uvicorn_in_thread
from tests.serving.helpers import train_sklearn, wait_for

pytestmark = pytest.mark.slow

CODE = """
import time

EVENTS = {events!r}
TAG = {tag!r}


def note(what):
    with open(EVENTS, "a") as f:
        f.write(f"{{what}} {{TAG}} {{time.monotonic()}}\\n")


class Preprocess:
    def load(self, local_file_name):
        note("load")
        return None  # the sklearn engine loads the file itself

    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        if body.get("sleep"):
            state["slow"] = True
            note("start")
            time.sleep(body["sleep"])
        return [[body["x0"], body["x1"]]]

    def postprocess(self, data, state, collect_custom_statistics_fn=None):
        if state.get("slow"):
            note("finish")
        return {{"y": data.tolist(), "code": TAG, "instance": id(self)}}

    def unload(self):
        note("unload")
"""

LIVE_WITHIN_S = 1.0


@dataclass
class Setup:
    url: str
    cli: CliHarness
    tmp: Path
    events: Path
    model_id: str

    def code(self, tag: str) -> Path:
        path = self.tmp / f"{tag}.py"
        path.write_text(CODE.format(events=str(self.events), tag=tag))
        return path

    def add(self, endpoint: str, tag: str) -> None:
        self.cli(
            "endpoint", "add", "--endpoint", endpoint, "--version", "1", "--engine", "sklearn",
            "--model-id", self.model_id, "--preprocess", str(self.code(tag)),
        )  # fmt: skip

    def ask(self, endpoint: str, **extra: Any) -> dict[str, Any] | None:
        try:
            response = httpx.post(
                f"{self.url}/serve/{endpoint}/1", json={"x0": 1, "x1": 2, **extra}, timeout=30
            )
        except httpx.HTTPError:
            return None
        return dict(response.json()) if response.status_code == 200 else None

    def code_of(self, endpoint: str) -> str | None:
        answer = self.ask(endpoint)
        return str(answer["code"]) if answer else None

    def lines(self, event: str | None = None, tag: str | None = None) -> list[tuple[str, str, float]]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            what, who, stamp = line.split()
            if (event is None or what == event) and (tag is None or who == tag):
                out.append((what, who, float(stamp)))
        return out


@pytest.fixture
def setup(settings: Settings, tmp_path: Path) -> Iterator[Setup]:
    settings = settings.model_copy(update={"sync_wait_s": 5})
    with run_uvicorn_in_thread(create_all_in_one_app(settings)) as url:
        cli = CliHarness(cli_env(url, settings.resolved_home()))
        train_sklearn(tmp_path / "model.pkl")
        upload = cli(
            "model", "upload", "--name", "iris", "--project", "demo", "--framework", "sklearn",
            "--path", str(tmp_path / "model.pkl"),
        )  # fmt: skip
        s = Setup(url, cli, tmp_path, tmp_path / "events.log", upload.stdout.strip().splitlines()[-1])
        s.add("a", "a1")
        s.add("b", "b1")
        wait_for(lambda: s.code_of("a") == "a1" and s.code_of("b") == "b1")
        yield s


class SlowRequest:
    """A request in flight on ``endpoint`` (sleeping ``seconds`` in preprocess) while we change it."""

    def __init__(self, setup: Setup, endpoint: str, tag: str, seconds: float = 2.0) -> None:
        self.answer: dict[str, Any] | None = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "answer", setup.ask(endpoint, sleep=seconds))
        )
        self.thread.start()
        wait_for(lambda: setup.lines("start", tag))

    def result(self) -> dict[str, Any]:
        self.thread.join(30)
        assert self.answer is not None
        return self.answer


def swap_and_time(setup: Setup, endpoint: str, new_tag: str, change: Any) -> float:
    """Run the CLI ``change``; seconds from its return until ``endpoint`` answers with ``new_tag``."""
    change()
    returned = time.monotonic()
    wait_for(lambda: setup.code_of(endpoint) == new_tag, timeout=5, interval=0.01)
    return time.monotonic() - returned


def check_old_code_unloaded_once_after_in_flight(setup: Setup, old: str, in_flight: SlowRequest) -> None:
    assert in_flight.result()["code"] == old  # the request in flight finished on the old code
    [(_, _, unloaded)] = wait_for(lambda: setup.lines("unload", old), timeout=5)
    [(_, _, finished)] = setup.lines("finish", old)
    assert unloaded >= finished, "the old code was unloaded before its request in flight finished"
    time.sleep(0.3)
    assert len(setup.lines("unload", old)) == 1  # once, not per worker thread or per retry


def check_b_untouched(setup: Setup, b_before: dict[str, Any]) -> None:
    assert len(setup.lines("load", "b1")) == 1
    assert setup.lines("unload", "b1") == []
    assert setup.ask("b") == b_before  # the very same Preprocess instance answers


def test_endpoint_update_preprocess_is_live_within_a_second(setup: Setup) -> None:
    b_before = setup.ask("b")
    assert b_before is not None
    in_flight = SlowRequest(setup, "a", "a1")
    new = setup.code("a2")
    latency = swap_and_time(
        setup,
        "a",
        "a2",
        lambda: setup.cli(
            "endpoint", "update", "--endpoint", "a", "--version", "1", "--preprocess", str(new)
        ),
    )
    assert latency < LIVE_WITHIN_S, f"new code answered {latency:.3f} s after the command returned"
    assert in_flight.thread.is_alive()  # new code answers while the old one still runs a request
    check_old_code_unloaded_once_after_in_flight(setup, "a1", in_flight)
    assert len(setup.lines("load", "a2")) == 1
    check_b_untouched(setup, b_before)
    shown = setup.cli("endpoint", "show", "--endpoint", "a/1").stdout
    assert '"filename": "a2.py"' in shown and setup.model_id in shown  # the rest stayed as it was


def test_endpoint_add_over_the_same_version_is_live_within_a_second(setup: Setup) -> None:
    b_before = setup.ask("b")
    assert b_before is not None
    in_flight = SlowRequest(setup, "a", "a1")
    latency = swap_and_time(setup, "a", "a3", lambda: setup.add("a", "a3"))
    assert latency < LIVE_WITHIN_S, f"new code answered {latency:.3f} s after the command returned"
    check_old_code_unloaded_once_after_in_flight(setup, "a1", in_flight)
    check_b_untouched(setup, b_before)
    # and once more: each swap unloads exactly the code it replaced
    latency = swap_and_time(setup, "a", "a4", lambda: setup.add("a", "a4"))
    assert latency < LIVE_WITHIN_S
    wait_for(lambda: setup.lines("unload", "a3"), timeout=5)
    assert [line[1] for line in setup.lines("unload")] == ["a1", "a3"]
    check_b_untouched(setup, b_before)


def test_endpoint_remove_unloads_after_requests_in_flight(setup: Setup) -> None:
    b_before = setup.ask("b")
    assert b_before is not None
    in_flight = SlowRequest(setup, "a", "a1")
    setup.cli("endpoint", "remove", "--endpoint", "a", "--version", "1")
    wait_for(lambda: httpx.post(f"{setup.url}/serve/a/1", json={}).status_code == 404, timeout=5)
    check_old_code_unloaded_once_after_in_flight(setup, "a1", in_flight)
    check_b_untouched(setup, b_before)
