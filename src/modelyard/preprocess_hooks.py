"""How a user's ``Preprocess`` hooks are called: clearml-serving's lenient contract.

Hooks may declare fewer parameters than ``(data, state, collect)`` (:func:`positional_count`,
:func:`adapt`), ``load``/``unload`` may be ``async def`` even where no loop runs
(:func:`run_blocking`), ``self.model_endpoint`` shows the endpoint under clearml-serving's
names too (:class:`ModelEndpoint`), and an exception becomes a 422 naming the hook and the
user's own line (:func:`wrap_user_error`).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.config import EndpointConfig, TensorSpec
from modelyard.errors import Unavailable, Unprocessable, UserCodeError
from modelyard.preprocess_errors import UserErrors, describe


@dataclass
class ModelEndpoint:
    """What ``self.model_endpoint`` shows user code; clearml-serving's names are aliases."""

    endpoint: str
    version: str
    engine: str
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    auxiliary_cfg: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    model_name: str | None = None

    @classmethod
    def from_config(cls, config: EndpointConfig) -> ModelEndpoint:
        return cls(
            endpoint=config.endpoint,
            version=config.version,
            engine=config.engine,
            inputs=list(config.inputs),
            outputs=list(config.outputs),
            auxiliary_cfg=copy.deepcopy(config.auxiliary),
            options=copy.deepcopy(config.options),
            model_id=config.model.id if config.model else None,
            model_name=config.model.name if config.model else None,
        )

    # clearml-serving's names for the same things
    @property
    def serving_url(self) -> str:
        return self.endpoint

    @property
    def engine_type(self) -> str:
        return self.engine

    @property
    def input_name(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def input_type(self) -> list[str | None]:
        return [t.dtype for t in self.inputs]

    @property
    def input_size(self) -> list[list[int] | None]:
        return [t.shape for t in self.inputs]

    @property
    def output_name(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def output_type(self) -> list[str | None]:
        return [t.dtype for t in self.outputs]

    @property
    def output_size(self) -> list[list[int] | None]:
        return [t.shape for t in self.outputs]


def wrap_user_error(exc: BaseException, hook_name: str, errors: UserErrors | None = None) -> Unprocessable:
    """The error a request gets when a user hook raised: ``preprocess raised ValueError: ...``.

    With the version's :class:`~modelyard.preprocess_errors.UserErrors` (``UserCode.errors``)
    the message also names the user's own file and line, and the error is logged and kept
    for ``/status``; see :mod:`modelyard.preprocess_errors`.
    """
    if errors is not None:
        return errors.wrap(exc, hook_name)
    err = Unprocessable(describe(exc, hook_name))
    err.__cause__ = exc
    return err


def positional_count(fn: Callable[..., Any], hook: str, where: str) -> int:
    """How many of ``(data, state, collect)`` the bound hook takes (clearml is lenient here too)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 3
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    limit = {"load": 1, "unload": 0}.get(hook, 3)
    if len(required) > limit:
        raise UserCodeError(
            f"preprocess code {where}: Preprocess.{hook} takes {len(required)} required "
            f"arguments, at most {limit} are passed"
        )
    return min(len(positional), limit)


def adapt(fn: Callable[..., Any], count: int, is_async: bool) -> Callable[..., Any]:
    """A callable taking ``(data, state, collect)`` that forwards the first ``count`` arguments."""
    if count == 3:
        return fn  # the full contract: no wrapper on the request path
    if is_async:

        async def call_async(*args: Any) -> Any:
            return await fn(*args[:count])

        return call_async

    def call(*args: Any) -> Any:
        return fn(*args[:count])

    return call


def run_blocking(result: Any) -> Any:
    """Resolve a coroutine from an async ``load``/``unload`` in a thread that may have no loop."""
    if not inspect.isawaitable(result):
        return result

    async def wait() -> Any:
        return await result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(wait())
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=runner, name="modelyard-usercode")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def missing_send(*args: Any, **kwargs: Any) -> Any:
    raise Unavailable("send_request is not available here (no data plane attached)")
