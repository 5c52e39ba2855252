"""The control plane answers what its OpenAPI document says, checked by schemathesis.

Every operation of ``/openapi.json`` is fuzzed (the coverage phase's boundary and invalid
values, then random ones) with every built-in check enabled, what the CLI's ``--checks all``
runs: no 5xx, documented status codes, content types, headers and bodies, invalid data
refused, valid data accepted, authentication enforced, 405 with ``Allow``... three times:
with an admin token, a reader token and no token, over HTTP against uvicorn. Random examples
per operation are bounded and derandomized, so the run is repeatable and takes about a minute.

schemathesis' lazy ``from_fixture`` loader does not run under pytest 9, so the document is
read at import from an app built in a temporary folder; the module fixture serves that app.

Some request bodies have rules JSON Schema cannot state (an upload's ``sha256`` must be the
hash of the bytes sent; a canary needs one weight per target; ``model_id`` and a
``model_query`` exclude each other; file names are single path components of at most 200
UTF-8 bytes; auto-deploy rule names must be Python regular expressions; a model ``url`` must
be one the control plane may fetch; a replica's status report lists at most the service's
endpoint versions + 16). For those operations alone, schema-valid data may also
be refused with the 400 or 422 naming the rule (:data:`BODY_RULES`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from tests.servers import run_uvicorn_in_thread

from modelyard.control.api import create_control_app
from modelyard.settings import Settings

MAX_EXAMPLES = 8
"""Random examples per operation and token (the coverage phase's cases come on top)."""

BODY_RULES: dict[tuple[str, str], list[str]] = {
    ("POST", "/api/artifacts"): ["400"],
    ("POST", "/api/models"): ["400", "422"],
    ("POST", "/api/services/{service}/endpoints"): ["400"],
    ("PATCH", "/api/services/{service}/endpoints/{key}"): ["400"],
    ("POST", "/api/services/{service}/canaries"): ["400", "422"],
    ("POST", "/api/services/{service}/metrics"): ["422"],
    ("POST", "/api/services/{service}/auto-deploy"): ["400", "422"],
    ("PATCH", "/api/services/{service}/auto-deploy/{endpoint}"): ["400", "422"],
    ("PUT", "/api/services/{service}/replicas/{replica_id}"): ["400"],
}
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]
"""schemathesis' default for valid data, less 5xx: a server error is never an acceptable answer."""


def _config() -> schemathesis.Config:
    operations: list[dict[str, Any]] = [
        {
            "include-name": f"{method} {path}",
            "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED + statuses}},
        }
        for (method, path), statuses in BODY_RULES.items()
    ]
    return schemathesis.Config.from_dict(
        {
            "generation": {"deterministic": True},
            "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
            "operations": operations,
        }
    )


_home = tempfile.TemporaryDirectory(prefix="modelyard-conformance-")
_app = create_control_app(Settings(home=Path(_home.name), _env_file=None))  # type: ignore[call-arg]
# names no generated value is likely to hit, so a fuzzed DELETE /api/tokens/{name} keeps them
_TOKENS = {
    "admin": _app.state.plane.create_token("conformance-admin-7f3a9c", "admin").token,
    "reader": _app.state.plane.create_token("conformance-reader-7f3a9c", "reader").token,
}
schema = schemathesis.openapi.from_dict(_app.openapi(), config=_config())


@pytest.fixture(scope="module")
def control_url() -> Iterator[str]:
    try:
        with run_uvicorn_in_thread(_app) as url:
            yield url
    finally:
        _app.state.db.dispose()


@pytest.mark.slow
@schema.parametrize()
@pytest.mark.parametrize("who", ["admin", "reader", "anonymous"])
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_control_plane_answers_what_its_openapi_says(
    case: schemathesis.Case, who: str, control_url: str
) -> None:
    headers = {"Authorization": f"Bearer {_TOKENS[who]}"} if who in _TOKENS else {}
    case.call_and_validate(base_url=control_url, headers=headers)
