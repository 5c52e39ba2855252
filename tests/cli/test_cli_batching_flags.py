"""``--max-batch-size/--max-batch-delay-ms/--max-queue`` on ``endpoint add/update`` become options."""

from __future__ import annotations

from pathlib import Path

from modelyard.client import Client
from tests.cli.cli_harness import CliHarness


def test_batching_flags_map_into_options(run_cli: CliHarness, client: Client, model_file: Path) -> None:
    model = (
        run_cli(
            "model",
            "upload",
            "--name",
            "m",
            "--project",
            "p",
            "--framework",
            "onnx",
            "--path",
            str(model_file),
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    run_cli(
        "endpoint",
        "add",
        "--endpoint",
        "b",
        "--version",
        "1",
        "--engine",
        "onnx",
        "--model-id",
        model,
        "--max-batch-size",
        "32",
        "--max-batch-delay-ms",
        "2.5",
        "--option",
        "device=cpu",
    )
    assert client.get_endpoint("default", "b/1")["options"] == {
        "device": "cpu",
        "max_batch_size": 32,
        "max_batch_delay_ms": 2.5,
    }
    run_cli("endpoint", "update", "--endpoint", "b", "--version", "1", "--max-queue", "64")
    assert client.get_endpoint("default", "b/1")["options"] == {
        "device": "cpu",
        "max_batch_size": 32,
        "max_batch_delay_ms": 2.5,
        "max_queue": 64,
    }
    run_cli(
        "endpoint",
        "update",
        "--endpoint",
        "b",
        "--version",
        "1",
        "--max-batch-size",
        "8",
        "--option",
        "device=",
    )
    assert client.get_endpoint("default", "b/1")["options"] == {
        "max_batch_size": 8,
        "max_batch_delay_ms": 2.5,
        "max_queue": 64,
    }
