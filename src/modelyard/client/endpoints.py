"""The SDK's endpoint calls, with the read-modify-write cycle that concurrent writers need::

client.add_endpoint("default", "iris", version="1", engine="sklearn", model_id=model_id)
client.merge_endpoint("default", "iris", "1", options={"max_batch_size": 32})
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from modelyard import errors
from modelyard.client.repository import RepositoryCalls
from modelyard.client.transport import revision_of
from modelyard.config import TensorSpec, endpoint_key

MODIFY_ATTEMPTS = 8
"""Read-modify-write attempts (:meth:`Client.modify_endpoint`) before a RevisionConflict is raised."""

EndpointChange = Callable[[dict[str, Any]], Mapping[str, Any] | None]
"""``change(current_endpoint) -> fields for update_endpoint`` (or None/{} for nothing to do)."""


def tensor_dicts(specs: Iterable[TensorSpec | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for spec in specs or ():
        if isinstance(spec, TensorSpec):
            out.append(spec.model_dump(mode="json", exclude_none=True))
        else:
            out.append(TensorSpec(**spec).model_dump(mode="json", exclude_none=True))
    return out


class EndpointCalls(RepositoryCalls):
    """Add, change, read and remove endpoint versions (``If-Match`` revisions when asked)."""

    def add_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = "",
        engine: str = "",
        model_id: str | None = None,
        model_query: Mapping[str, Any] | None = None,
        preprocess: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        inputs: Iterable[TensorSpec | Mapping[str, Any]] = (),
        outputs: Iterable[TensorSpec | Mapping[str, Any]] = (),
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        *,
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) an endpoint version.

        ``preprocess`` is a path to a ``.py`` file or a package folder (uploaded first) or an
        artifact reference. ``model_query`` (``name``, ``project``, ``tags``, ``published``)
        picks the newest matching model instead of ``model_id``. ``if_revision``: only if the
        service is still at that revision (:class:`~modelyard.errors.RevisionConflict` else).
        """
        body: dict[str, Any] = {
            "endpoint": endpoint,
            "version": version or "",
            **self._endpoint_fields(
                engine=engine,
                model_id=model_id,
                model_query=model_query,
                preprocess=preprocess,
                inputs=inputs,
                outputs=outputs,
                options=options or {},
                auxiliary=auxiliary or {},
            ),
        }
        answer, _ = self._api_response(
            "POST", f"/services/{service}/endpoints", json=body, if_revision=if_revision
        )
        return answer

    def update_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        *,
        engine: str | None = None,
        model_id: str | None = None,
        model_query: Mapping[str, Any] | None = None,
        preprocess: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        inputs: Iterable[TensorSpec | Mapping[str, Any]] | None = None,
        outputs: Iterable[TensorSpec | Mapping[str, Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        if_revision: int | None = None,
    ) -> dict[str, Any]:
        """Replace only the given fields of an endpoint version (``endpoint`` may be ``iris/1``).

        ``if_revision``: only if the service is still at that revision (else
        :class:`~modelyard.errors.RevisionConflict`); :meth:`modify_endpoint` reads, changes and
        writes with it, retrying.
        """
        body = self._endpoint_fields(
            engine=engine,
            model_id=model_id,
            model_query=model_query,
            preprocess=preprocess,
            inputs=inputs,
            outputs=outputs,
            options=options,
            auxiliary=auxiliary,
        )
        key = endpoint_key(endpoint, version)
        answer, _ = self._api_response(
            "PATCH", f"/services/{service}/endpoints/{key}", json=body, if_revision=if_revision
        )
        return answer

    def _endpoint_fields(
        self,
        *,
        engine: str | None,
        model_id: str | None,
        model_query: Mapping[str, Any] | None,
        preprocess: str | os.PathLike[str] | Mapping[str, Any] | None,
        inputs: Iterable[TensorSpec | Mapping[str, Any]] | None,
        outputs: Iterable[TensorSpec | Mapping[str, Any]] | None,
        options: Mapping[str, Any] | None,
        auxiliary: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The API body of the given endpoint fields (``None``: not sent); code is uploaded first."""
        body: dict[str, Any] = {}
        if engine is not None:
            body["engine"] = engine
        if model_id is not None:
            body["model_id"] = model_id
        if model_query is not None:
            body["model_query"] = dict(model_query)
        ref = self._preprocess_ref(preprocess)
        if ref is not None:
            body["preprocess"] = ref
        if inputs is not None:
            body["inputs"] = tensor_dicts(inputs)
        if outputs is not None:
            body["outputs"] = tensor_dicts(outputs)
        if options is not None:
            body["options"] = dict(options)
        if auxiliary is not None:
            body["auxiliary"] = dict(auxiliary)
        return body

    def modify_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        change: EndpointChange | None = None,
        *,
        attempts: int = MODIFY_ATTEMPTS,
    ) -> dict[str, Any]:
        """Read an endpoint, compute fields from it, write them only over what was read.

        ``change(current)`` returns keyword arguments for :meth:`update_endpoint` (``options``,
        ``inputs``...), computed from the current endpoint; the write carries the revision that
        was read (``If-Match``), and if another change to the service came in between, the
        whole cycle runs again (up to ``attempts`` times, with a short random pause), so
        concurrent writers never undo each other's changes. Returns the updated endpoint.
        """
        if change is None:
            raise ValueError("modify_endpoint needs a change function")
        for attempt in range(1, attempts + 1):
            current, revision = self.get_endpoint_at(service, endpoint, version)
            fields = change(current)
            if not fields:
                return current
            try:
                return self.update_endpoint(service, endpoint, version, **dict(fields), if_revision=revision)
            except errors.RevisionConflict:
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0, 0.02 * attempt))
        raise AssertionError("unreachable")

    def merge_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        auxiliary: Mapping[str, Any] | None = None,
        attempts: int = MODIFY_ATTEMPTS,
    ) -> dict[str, Any]:
        """Merge keys into an endpoint's ``options``/``auxiliary`` (a ``None`` value removes the key).

        Safe against concurrent writers (:meth:`modify_endpoint`).
        """

        def merged(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(current or {})
            for key, value in changes.items():
                if value is None:
                    out.pop(key, None)
                else:
                    out[key] = value
            return out

        def change(current: dict[str, Any]) -> dict[str, Any]:
            fields: dict[str, Any] = {}
            if options:
                fields["options"] = merged(current.get("options"), options)
            if auxiliary:
                fields["auxiliary"] = merged(current.get("auxiliary"), auxiliary)
            return fields

        return self.modify_endpoint(service, endpoint, version, change, attempts=attempts)

    def list_endpoints(self, service: str) -> list[dict[str, Any]]:
        return self._api("GET", f"/services/{service}/endpoints")

    def list_endpoints_at(self, service: str) -> tuple[list[dict[str, Any]], int]:
        """The service's endpoints and the revision they were read at (for ``if_revision``)."""
        answer, response = self._api_response("GET", f"/services/{service}/endpoints")
        return answer, revision_of(response)

    def get_endpoint(self, service: str, endpoint: str, version: str | None = None) -> dict[str, Any]:
        key = endpoint_key(endpoint, version)
        return self._api("GET", f"/services/{service}/endpoints/{key}")

    def get_endpoint_at(
        self, service: str, endpoint: str, version: str | None = None
    ) -> tuple[dict[str, Any], int]:
        """The endpoint and the service revision it was read at (for ``if_revision``)."""
        key = endpoint_key(endpoint, version)
        answer, response = self._api_response("GET", f"/services/{service}/endpoints/{key}")
        return answer, revision_of(response)

    def remove_endpoint(
        self,
        service: str,
        endpoint: str,
        version: str | None = None,
        *,
        if_revision: int | None = None,
    ) -> None:
        self._api_response(
            "DELETE",
            f"/services/{service}/endpoints/{endpoint_key(endpoint, version)}",
            if_revision=if_revision,
        )
