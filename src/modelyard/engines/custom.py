"""custom / custom_async: the user's ``Preprocess.process`` is the model.

No model file is required. When the endpoint has one, ``Preprocess.load(local_file_name)``
receives it and what it returns becomes :attr:`Engine.model` (and the user
instance's ``_model`` when it has none), as in clearml-serving. ``process`` may be
sync (run in a worker thread) or ``async def`` (awaited on the event loop) for
either engine name; ``custom_async`` exists for clearml compatibility.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelyard.engines._common import user_model
from modelyard.engines.base import CollectFn, Engine
from modelyard.errors import ModelLoadError, ModelyardError
from modelyard.preprocess import wrap_user_error
from modelyard.preprocess_errors import UserErrors


class CustomEngine(Engine):
    name: ClassVar[str] = "custom"
    needs_model: ClassVar[bool] = False

    def load(self) -> None:
        uc = self.user_code
        if uc is None or not uc.has_process:
            raise ModelLoadError(
                f"engine {self.name!r} needs preprocess code whose Preprocess class "
                "defines process(data, state, collect_custom_statistics_fn)"
            )
        self.model = user_model(self)

    def runs_sync(self) -> bool:
        """A sync ``process`` may run in the same worker-thread hop as sync pre/postprocess."""
        uc = self.user_code
        return uc is not None and uc.has_process and not uc.is_async("process")

    async def predict(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        assert self.user_code is not None, "load() first"
        try:
            return await self.user_code.run_process(data, state, collect)
        except ModelyardError:
            raise
        except Exception as exc:
            raise wrap_user_error(exc, "process", self._errors()) from exc

    def _errors(self) -> UserErrors | None:
        return self.user_code.errors if self.user_code is not None else None

    def predict_sync(self, data: Any, state: dict[str, Any], collect: CollectFn) -> Any:
        """For callers without an event loop; an ``async def process`` needs :meth:`predict`."""
        uc = self.user_code
        assert uc is not None and uc.process is not None, "load() first"
        if uc.is_async("process"):
            raise RuntimeError("Preprocess.process is async: call predict() instead")
        try:
            return uc.process(data, state, collect)
        except ModelyardError:
            raise
        except Exception as exc:
            raise wrap_user_error(exc, "process", self._errors()) from exc


class CustomAsyncEngine(CustomEngine):
    name: ClassVar[str] = "custom_async"
