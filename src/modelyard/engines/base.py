"""The engine interface: how a framework turns a loaded model into predictions.

Lifecycle (one instance per loaded endpoint version)::

    engine = EngineClass(config, model_path, user_code)   # cheap, no I/O
    engine.load()          # in a worker thread: read the model file; raise ModelLoadError
    await engine.predict(data, state, collect)   # many times, concurrently
    engine.unload()        # after the last in-flight request finished

``predict`` is async so that remote engines (Triton) and ``custom_async`` can
await; CPU-bound engines implement :meth:`Engine.predict_sync` and inherit a
``predict`` that runs it off the event loop. ``data`` is whatever the
endpoint's ``Preprocess.preprocess`` returned (or the decoded request body when
there is no preprocess code). Engines know nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modelyard.errors import ModelyardError

if TYPE_CHECKING:
    from modelyard.config import EndpointConfig
    from modelyard.preprocess import UserCode

CollectFn = Callable[[dict[str, Any]], None]
"""clearml-serving's ``collect_custom_statistics_fn``: record custom statistics for this request."""


class Engine:
    """Base class of all engines. Subclasses set :attr:`name` and override ``load``/``predict_sync``."""

    name: ClassVar[str] = ""
    batchable: ClassVar[bool] = False
    """True when ``predict`` accepts a batch dimension, so the dynamic batcher may stack requests."""
    needs_model: ClassVar[bool] = True
    """False for engines that may run without a model file (``custom``)."""

    def __init__(
        self,
        config: EndpointConfig,
        model_path: Path | None,
        user_code: UserCode | None = None,
    ) -> None:
        self.config = config
        self.model_path = model_path
        self.user_code = user_code
        self.model: Any = None

    def load(self) -> None:
        """Load the model file. Runs in a worker thread; raise ``ModelLoadError`` with the reason."""

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        """Compute the prediction for ``data``; CPU-bound engines override this."""
        raise NotImplementedError(f"engine {self.name!r} implements neither predict nor predict_sync")

    async def predict(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        """Compute the prediction without blocking the event loop."""
        return await asyncio.to_thread(self.predict_sync, data, state, collect)

    def runs_sync(self) -> bool:
        """True when :meth:`predict_sync` can serve every call.

        The data plane then runs preprocess, predict and postprocess in ONE hop to the
        worker pool instead of one hop per stage. Engines that override ``predict``
        (remote, async user code) are not sync unless they say so.
        """
        return type(self).predict is Engine.predict

    def unload(self) -> None:
        """Release the model. Called once, after the last in-flight request on this instance."""
        self.model = None

    def metadata(self) -> dict[str, Any]:
        """What the framework knows of the model's inputs/outputs (OIP metadata); empty if nothing."""
        return {}


class EngineNotFound(ModelyardError):
    kind = "not_found"
