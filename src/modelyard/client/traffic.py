"""The SDK's traffic methods: canary / A-B routing endpoints and auto-deploy rules.

Part of :class:`modelyard.client.Client`::

    client.add_canary("default", "iris_canary", weights=[0.1, 0.9], targets=["iris/2", "iris/1"])
    client.add_auto_deploy("default", "iris_auto", engine="sklearn", name="iris.*", project="demo",
                           published=True, max_versions=2, preprocess="p.py")
    client.add_canary("default", "iris_ab", weights=[0.1, 0.9], prefix="iris_auto")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from modelyard.client.endpoints import tensor_dicts
from modelyard.client.repository import RepositoryCalls
from modelyard.config import TensorSpec


class TrafficCalls(RepositoryCalls):
    """Canary and auto-deploy calls."""

    # -- canaries ----------------------------------------------------------------------------

    def add_canary(
        self,
        service: str,
        endpoint: str,
        weights: Iterable[float],
        targets: Iterable[str] = (),
        *,
        prefix: str | None = None,
        sticky_key: str | None = None,
        shadow: Iterable[str] = (),
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Create or replace a canary: ``/serve/<endpoint>`` splits over ``targets`` by ``weights``.

        ``prefix`` instead of ``targets``: the newest ``len(weights)`` versions of ``prefix/*``
        (first weight to the newest). ``sticky_key``: ``header:X-User-Id`` or ``body:user_id``.
        ``shadow``: endpoint versions that get a copy of each request (answers not returned).
        Returns ``{"canary": {...}, "missing": [...], "resolved": [...]}``.
        """
        body: dict[str, Any] = {
            "endpoint": endpoint,
            "weights": [float(w) for w in weights],
            "targets": list(targets),
            "shadow": list(shadow),
        }
        if prefix is not None:
            body["prefix"] = prefix
        if sticky_key is not None:
            body["sticky_key"] = sticky_key
        answer, _ = self._api_response(
            "POST", f"/services/{service}/canaries", json=body, if_revision=if_revision
        )
        return dict(answer)

    def list_canaries(self, service: str) -> list[dict[str, Any]]:
        return list(self._api("GET", f"/services/{service}/canaries"))

    def get_canary(self, service: str, endpoint: str) -> dict[str, Any]:
        return dict(self._api("GET", f"/services/{service}/canaries/{endpoint}"))

    def remove_canary(self, service: str, endpoint: str, *, if_revision: int | None = None) -> None:
        self._api_response("DELETE", f"/services/{service}/canaries/{endpoint}", if_revision=if_revision)

    # -- auto-deploy -------------------------------------------------------------------------

    def add_auto_deploy(
        self,
        service: str,
        endpoint: str,
        *,
        engine: str,
        name: str,
        project: str | None = None,
        tags: Iterable[str] = (),
        published: bool = False,
        max_versions: int = 1,
        preprocess: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        inputs: Iterable[TensorSpec | Mapping[str, Any]] = (),
        outputs: Iterable[TensorSpec | Mapping[str, Any]] = (),
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Create or replace an auto-deploy rule: matching models become ``<endpoint>/<n>``.

        ``name`` is a regular expression over the whole model name; the newest
        ``max_versions`` matching models are served, older ones removed. ``preprocess`` (a
        ``.py`` file, package folder or artifact reference), ``options``, ``auxiliary`` and the
        declared ``inputs``/``outputs`` (as for :meth:`add_endpoint`) go to each version deployed.
        """
        body: dict[str, Any] = {
            "endpoint": endpoint,
            "engine": engine,
            "name": name,
            "project": project,
            "tags": list(tags),
            "published": published,
            "max_versions": max_versions,
            "options": dict(options or {}),
            "auxiliary": dict(auxiliary or {}),
            "inputs": tensor_dicts(inputs),
            "outputs": tensor_dicts(outputs),
        }
        ref = self._preprocess_ref(preprocess)
        if ref is not None:
            body["preprocess"] = ref
        answer, _ = self._api_response(
            "POST", f"/services/{service}/auto-deploy", json=body, if_revision=if_revision
        )
        return dict(answer)

    def update_auto_deploy(
        self,
        service: str,
        endpoint: str,
        *,
        apply_to_existing: bool = False,
        if_revision: int | None = None,
        **changes: Any,
    ) -> dict[str, Any]:
        """Change some fields of a rule (``preprocess=``, ``max_versions=``, ``tags=``, ``options=``,
        ``inputs=``...).

        New versions use the changed rule; with ``apply_to_existing`` the engine, preprocess,
        options, auxiliary, inputs and outputs of the versions already deployed change too.
        """
        body = dict(changes)
        if "preprocess" in body and body["preprocess"] is not None:
            body["preprocess"] = self._preprocess_ref(body["preprocess"])
        for field in ("inputs", "outputs"):
            if body.get(field) is not None:
                body[field] = tensor_dicts(body[field])
        body["apply_to_existing"] = apply_to_existing
        answer, _ = self._api_response(
            "PATCH", f"/services/{service}/auto-deploy/{endpoint}", json=body, if_revision=if_revision
        )
        return dict(answer)

    def list_auto_deploy(self, service: str) -> list[dict[str, Any]]:
        return list(self._api("GET", f"/services/{service}/auto-deploy"))

    def get_auto_deploy(self, service: str, endpoint: str) -> dict[str, Any]:
        return dict(self._api("GET", f"/services/{service}/auto-deploy/{endpoint}"))

    def remove_auto_deploy(
        self, service: str, endpoint: str, *, keep_endpoints: bool = False, if_revision: int | None = None
    ) -> None:
        """Delete the rule and, unless ``keep_endpoints``, the versions it deployed."""
        params = {"keep_endpoints": "true"} if keep_endpoints else None
        self._api_response(
            "DELETE", f"/services/{service}/auto-deploy/{endpoint}", params=params, if_revision=if_revision
        )
