"""Uploads and downloads through the CLI: progress bars on stderr, ``model download``, hash checks.

Off a terminal rich prints a bar's final state once (``name ━━━━ 2.1/2.1 MB ...``), which is what
these tests read from stderr; stdout keeps only what scripts capture (an id, a path).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from modelyard.client import Client
from tests.cli.cli_harness import CliHarness, cli_env
from tests.servers import RunningControlPlane

BIG = 2 * 1024 * 1024 + 12345  # over the 1 MiB threshold for code, and big enough to show "2.1 MB"


def bar(stderr: str, label: str) -> re.Match[str] | None:
    """The final line of the bar named ``label``: its done/total sizes must agree."""
    return re.search(re.escape(label) + r"\s.*?(\d+\.\d)/(\1) (MB|kB)", stderr)


def upload(run_cli: CliHarness, path: Path) -> tuple[str, str]:
    result = run_cli(
        "model", "upload", "--name", "big", "--project", "p", "--framework", "sklearn",
        "--path", str(path),
    )  # fmt: skip
    return result.stdout.strip().splitlines()[-1], result.stderr


def test_model_upload_and_download_show_bars_and_round_trip(
    run_cli: CliHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(BIG)
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    model_id, stderr = upload(run_cli, source)
    assert bar(stderr, "uploading weights.bin"), stderr
    assert "2.1/2.1 MB" in stderr

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_cli("model", "download", model_id, "--out", str(out_dir))
    written = out_dir / "weights.bin"
    assert result.stdout.strip().splitlines()[-1] == str(written)  # the path alone, for scripts
    assert written.read_bytes() == data
    assert bar(result.stderr, "downloading weights.bin"), result.stderr
    assert "2.1/2.1 MB" in result.stderr and "saved to" in result.stderr

    # default: the model's file name in the current folder; never overwritten silently
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    here = run_cli("model", "download", model_id)
    assert here.stdout.strip().splitlines()[-1] == "weights.bin"
    assert (cwd / "weights.bin").read_bytes() == data
    (cwd / "weights.bin").write_bytes(b"mine")
    refused = run_cli("model", "download", model_id, ok=False)
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert (cwd / "weights.bin").read_bytes() == b"mine"
    run_cli("model", "download", model_id, "--force")
    assert (cwd / "weights.bin").read_bytes() == data
    # --out naming a file
    renamed = run_cli("model", "download", model_id, "--out", str(tmp_path / "sub" / "copy.bin"))
    assert renamed.stdout.strip().splitlines()[-1] == str(tmp_path / "sub" / "copy.bin")
    assert (tmp_path / "sub" / "copy.bin").read_bytes() == data


def test_download_errors_are_clear(
    run_cli: CliHarness, control_plane: RunningControlPlane, model_file: Path, tmp_path: Path
) -> None:
    missing = run_cli("model", "download", "no-such-model", "--out", str(tmp_path), ok=False)
    assert "no-such-model" in missing.stderr
    model_id, _ = upload(run_cli, model_file)
    # the control plane's stored copy is damaged: the download is refused, nothing is written
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    stored = control_plane.home / "artifacts" / "blobs" / sha[:2] / sha
    stored.write_bytes(b"damaged")
    corrupt = run_cli("model", "download", model_id, "--out", str(tmp_path / "x.pkl"), ok=None)
    assert corrupt.exit_code == 1 and "Traceback" not in corrupt.output
    last = corrupt.stderr.strip().splitlines()[-1]  # after the bar's final state
    assert last.startswith("error: ") and "corrupted" in last and sha in last
    assert not (tmp_path / "x.pkl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".download-")]
    # downloads need a token: a home without one gets the usual clear error
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    anonymous = CliHarness(cli_env(control_plane.url, elsewhere))
    refused = anonymous("model", "download", model_id, "--out", str(tmp_path / "y.pkl"), ok=False)
    assert "MODELYARD_TOKEN" in refused.stderr


BIG_CODE = """
DATA = {data!r}


class Preprocess:
    def preprocess(self, body, state, collect_custom_statistics_fn=None):
        return [[body["x0"], body["x1"]]]
"""


def test_preprocess_uploads_show_a_bar_when_big(
    run_cli: CliHarness, client: Client, model_file: Path, tmp_path: Path
) -> None:
    model_id, _ = upload(run_cli, model_file)
    small = tmp_path / "small.py"
    small.write_text(BIG_CODE.format(data="x"))
    added = run_cli(
        "endpoint", "add", "--endpoint", "iris", "--version", "1", "--engine", "sklearn",
        "--model-id", model_id, "--preprocess", str(small),
    )  # fmt: skip
    assert "uploading" not in added.stderr and "━" not in added.stderr  # a few bytes: no bar

    big = tmp_path / "big.py"
    big.write_text(BIG_CODE.format(data=os.urandom(BIG // 2).hex()))  # about 2.1 MB of source
    updated = run_cli("endpoint", "update", "--endpoint", "iris", "--version", "1", "--preprocess", str(big))
    assert bar(updated.stderr, "uploading big.py"), updated.stderr
    assert client.get_endpoint("default", "iris", "1")["preprocess"]["filename"] == "big.py"

    package = tmp_path / "code"
    package.mkdir()
    (package / "__init__.py").write_text(BIG_CODE.format(data="pkg"))
    (package / "table.bin").write_bytes(os.urandom(BIG))  # random: the .tar.gz stays as big
    readded = run_cli(
        "endpoint", "add", "--endpoint", "iris", "--version", "1", "--engine", "sklearn",
        "--model-id", model_id, "--preprocess", str(package),
    )  # fmt: skip
    assert bar(readded.stderr, "uploading code/ (packed)"), readded.stderr
    preprocess = client.get_endpoint("default", "iris", "1")["preprocess"]
    assert preprocess["filename"] == "code.tar.gz" and preprocess["kind"] == "folder"
