"""Which endpoint versions of its service one replica loads (``Settings.endpoints``).

By default a replica serves its whole service. On Kubernetes each predictor of an
``Inference`` spec runs as its own Deployment (its own resources, GPU or not, and its own
autoscaler), and the Gateway splits the traffic between them; a replica of predictor ``a``
must then load ``iris/a`` only, or the GPU predictor's model would also load on the CPU
pods and every HorizontalPodAutoscaler would see the whole service's load.

The filter is applied to the :class:`~modelyard.config.ServiceConfig` before the endpoint
table sees it, so an endpoint version outside it is exactly as unknown as one that does not
exist (``/serve/iris/b`` answers 404). The last-known copy on disk keeps the whole
configuration, so a replica restarted with another filter needs no control plane.

Canaries keep the targets that are left (with their weights), so ``/serve/iris`` on
predictor ``a``'s pod goes to ``iris/a`` whatever split the Gateway applied in front; a canary
left with no target, or with weights that add up to 0, is dropped (the unversioned path then
goes to the highest version this replica serves). Shadows outside the filter are dropped
too (they could only ever be counted as dropped here). Metric rules stay as they are: they
are patterns, and match only what is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from modelyard.config import CanaryConfig, ServiceConfig, split_endpoint_key


def selects(patterns: Sequence[str], key: str) -> bool:
    """Whether an endpoint version ``key`` (``iris/a``, or ``iris`` unversioned) is in the filter.

    Patterns are matched against the whole key, case-sensitively: ``iris/*`` is every version
    of ``iris`` (not the unversioned ``iris``), ``iris`` only the unversioned endpoint. An
    empty filter selects everything.
    """
    return not patterns or any(fnmatchcase(key, pattern) for pattern in patterns)


def filter_config(config: ServiceConfig, patterns: Sequence[str]) -> ServiceConfig:
    """``config`` with only the endpoint versions ``patterns`` select, and canaries to match."""
    if not patterns:
        return config
    endpoints = [e for e in config.endpoints if selects(patterns, e.key)]
    keys = {e.key for e in endpoints}
    names = {e.endpoint for e in endpoints}
    canaries = {c.endpoint: c for c in config.canaries}
    # A target may be another canary, which may itself lose all its targets: repeat until
    # nothing changes (each round drops a canary or stops).
    while True:
        kept = {name: pruned for name, c in canaries.items() if (pruned := _prune(c, keys, names, canaries))}
        if kept.keys() == canaries.keys():
            break
        canaries = {name: canaries[name] for name in kept}
    return config.model_copy(
        update={
            "endpoints": endpoints,
            "canaries": [kept[c.endpoint] for c in config.canaries if c.endpoint in kept],
        }
    )


def _prune(
    canary: CanaryConfig, keys: set[str], names: set[str], canaries: dict[str, CanaryConfig]
) -> CanaryConfig | None:
    """The canary with the targets still served here, or None when nothing is left to route to."""
    shadow = [s for s in canary.shadow if s in keys]
    if canary.prefix is not None:  # newest versions of <prefix>/*, chosen from what is loaded
        if canary.prefix not in names:
            return None
        return canary.model_copy(update={"shadow": shadow})
    pairs = [
        (t, w)
        for t, w in zip(canary.targets, canary.weights, strict=True)
        if _served(t, keys, names, canaries)
    ]
    if not pairs or sum(w for _, w in pairs) <= 0:
        return None
    return canary.model_copy(
        update={"targets": [t for t, _ in pairs], "weights": [w for _, w in pairs], "shadow": shadow}
    )


def _served(target: str, keys: set[str], names: set[str], canaries: dict[str, CanaryConfig]) -> bool:
    endpoint, version = split_endpoint_key(target)
    if version:
        return target in keys
    # ``iris``: another canary of that name, else the endpoint's highest version (as routing does)
    return endpoint in canaries or endpoint in names
