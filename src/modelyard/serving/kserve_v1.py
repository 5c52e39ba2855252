"""KServe V1 (``/v1/models/<m>[/versions/<v>]:predict``) over the data plane.

Routed from :class:`modelyard.serving.oip.OipFront`; model name = endpoint name, model version
= endpoint version (none: the same choice as ``/serve/<endpoint>``).

What the endpoint's code sees is KServe's transformer contract: the first hook of the
user's ``Preprocess`` that meets the request (``preprocess``, else a custom engine's
``process``) receives the request body as sent, ``{"instances": [...]}`` (or ``{"inputs":
[...]}``), with ``state["protocol"] == "v1"``, and turns it into what the model takes, as a
KServe transformer's ``preprocess`` does. An endpoint without such a hook hands its engine the
instances as one numpy array (a list when they do not make one: ragged or not numbers).

The answer is ``{"predictions": value}`` where ``value`` is what the endpoint returned (a
dict with one key: that key's value, so ``{"y": [1]}`` answers ``{"predictions": [1]}``); a
dict that has ``predictions`` already is the answer as it is (a KServe transformer's
``postprocess`` returns the whole response).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from modelyard.engines.custom import CustomEngine
from modelyard.errors import BadRequest, NotFound, Unavailable
from modelyard.serving.codec import encode_json
from modelyard.serving.endpoint import LoadedEndpoint
from modelyard.serving.oip import OipResponse

if TYPE_CHECKING:
    from modelyard.serving.oip import OipFront, Receive


def user_code_takes_body(loaded: LoadedEndpoint) -> bool:
    """Whether the endpoint's own code meets the request first (then it gets the V1 body)."""
    user = loaded.user
    if user is None:
        return False
    return user.has_preprocess or (user.has_process and isinstance(loaded.engine, CustomEngine))


def _instances_data(instances: list[Any]) -> Any:
    """The instances as one numeric array when they make one, else the list as sent."""
    try:
        array = np.asarray(instances)
    except ValueError:
        return instances  # ragged
    return array if array.dtype != object and array.dtype.kind in "biuf" else instances


def predictions_body(value: Any) -> bytes:
    """The V1 answer for what the endpoint returned (see the module docstring)."""
    if isinstance(value, dict) and "predictions" in value:
        return encode_json(value)
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return b'{"predictions":' + encode_json(value) + b"}"


def _json(status: int, value: Any) -> OipResponse:
    return OipResponse(status, orjson.dumps(value))


class KserveV1:
    """``/v1/models``, ``/v1/models/<m>[/versions/<v>]`` and its ``:predict``."""

    def __init__(self, front: OipFront) -> None:
        self.front = front
        self.dataplane = front.dataplane
        self.table = front.table

    async def handle(
        self, scope: dict[str, Any], receive: Receive, rest: list[str], method: str
    ) -> OipResponse:
        if rest == ["models"]:
            self.front._allow(method, "GET")
            return _json(200, {"models": sorted(self.table.versions)})
        if len(rest) == 2 and rest[0] == "models":
            name, _, verb = rest[1].partition(":")
            version = None
        elif len(rest) == 4 and rest[0] == "models" and rest[2] == "versions":
            name = rest[1]
            version, _, verb = rest[3].partition(":")
        else:
            raise NotFound(f"no route for {method} {scope['path']}")
        if not name or (version is not None and not version):
            raise NotFound(f"no route for {method} {scope['path']}")
        if not verb:
            self.front._allow(method, "GET")
            try:
                self.table.resolve(name, version)
            except Unavailable:
                return _json(200, {"name": name, "ready": False})
            return _json(200, {"name": name, "ready": True})
        if verb != "predict":
            raise NotFound(f"unknown verb {verb!r}: KServe V1 here supports :predict")
        self.front._allow(method, "POST")
        return await self.predict(scope, receive, name, version)

    async def predict(
        self, scope: dict[str, Any], receive: Receive, name: str, version: str | None
    ) -> OipResponse:
        with self.dataplane.rejections(name, version):  # counted like /serve's refusals
            loaded = self.table.resolve(name, version)  # 404 / 503 before reading the body
            body = await self.front._json_body(scope, receive)
            instances = body.get("instances", body.get("inputs"))
            if not isinstance(instances, list):
                raise BadRequest("a KServe V1 request needs an 'instances' list")
        data = body if user_code_takes_body(loaded) else _instances_data(instances)
        result = await self.dataplane.infer(
            name, version, data, state={"protocol": "v1"}, headers=scope["headers"]
        )
        headers = [(b"x-modelyard-endpoint", result.key.encode())]
        return OipResponse(200, predictions_body(result.value), headers=headers)
