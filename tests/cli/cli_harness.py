"""Running ``modelyard ...`` in-process with typer's CliRunner, env pointing at a test server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner, Result

from modelyard.cli.main import app


@dataclass
class CliHarness:
    """Runs ``modelyard ...`` in-process with MODELYARD_URL/HOME pointing at the test server."""

    env: dict[str, str | None]
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(self, *args: str, ok: bool | None = True, **env: str | None) -> Result:
        result = self.runner.invoke(app, list(args), env={**self.env, **env})
        if ok is True:
            assert result.exit_code == 0, (
                f"modelyard {' '.join(args)} exited {result.exit_code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
            )
        elif ok is False:
            assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
            assert "Traceback" not in result.output
            assert result.stderr.startswith("error: "), result.stderr
        return result


def cli_env(url: str, home: Path) -> dict[str, str | None]:
    return {
        "MODELYARD_URL": url,
        "MODELYARD_HOME": str(home),
        "MODELYARD_TOKEN": None,
        "MODELYARD_SERVICE": None,
        "COLUMNS": "200",
    }
