"""Which label values a request may add to the metrics (and to the statistics a replica pushes).

A label value taken from a request would let any caller grow ``/metrics``, the process's
memory, the Prometheus multiprocess files and the statistics pushed to the control plane by
one series per random path (20,000 requests to ``/serve/iris/<random>`` grew ``/metrics``
from 21 KB to 13 MB). So a request is labelled only with names the service has: an endpoint
version of the data plane's table, an endpoint of it (``/serve/iris``, no version), or a
canary; everything else is counted under one fixed label, :data:`UNKNOWN_ENDPOINT` with an
empty version. The name cannot clash with a real endpoint: names start with a letter or
digit (:data:`modelyard.config.NAME_RE`).

The same rule holds for the control plane's API counters: their ``method`` label takes one
of :data:`HTTP_METHODS` or ``other`` (the route is already the matched template).
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

UNKNOWN_ENDPOINT = "_unknown"
"""The ``endpoint`` label (with ``version=""``) of every request that names no endpoint version
the service has: 404s for random paths, and errors before routing for such names."""

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def request_labels(
    endpoint: str,
    version: str | None,
    versions: Mapping[str, Sequence[str]],
    canaries: Container[str] = (),
) -> tuple[str, str]:
    """``(endpoint, version)`` labels for a request to ``endpoint[/version]``.

    ``versions``: the declared versions per endpoint (``EndpointTable.versions``; ``""`` is
    the unversioned endpoint); ``canaries``: the service's canary names (reached without a
    version). Anything not declared maps to ``(UNKNOWN_ENDPOINT, "")``.
    """
    version = version or ""
    declared = versions.get(endpoint)
    if declared is not None and (not version or version in declared):
        return endpoint, version
    if not version and endpoint in canaries:
        return endpoint, ""
    return UNKNOWN_ENDPOINT, ""


def method_label(method: str) -> str:
    """The ``method`` label of an HTTP call: the standard methods by name, any other as ``other``."""
    return method if method in HTTP_METHODS else OTHER_METHOD
