"""Loading a user's ``Preprocess`` class, with clearml-serving's contract.

A user ships a ``.py`` file (or a folder package with ``__init__.py``, sent as
a ``.tar.gz``) that defines a class named ``Preprocess``. Every method is
optional: ``load(local_file_name)``, ``preprocess(body, state, collect)``,
``process(data, state, collect)``, ``postprocess(data, state, collect)``,
``unload()``; any of them may be ``async def``; hooks may declare fewer
parameters (``preprocess(self, body)``) and are called with only as many.

Each :meth:`UserCode.load` imports the code under a module name of its own, so
two versions of one endpoint, or a hot reload beside the old copy, never share
module globals, class attributes or ``sys.modules`` entries; :meth:`UserCode.unload`
removes them again. Nothing here knows of HTTP: ``send_request`` is injected.
How each hook is called lives in :mod:`modelyard.preprocess_hooks`, unpacking a code
folder in :mod:`modelyard.preprocess_archive`.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.machinery
import importlib.util
import inspect
import itertools
import re
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from modelyard.config import EndpointConfig
from modelyard.errors import ModelyardError, UserCodeError
from modelyard.preprocess_archive import ArchiveLimits, find_root, is_archive, safe_extract
from modelyard.preprocess_errors import UserErrors, code_locator
from modelyard.preprocess_hooks import (
    ModelEndpoint,
    adapt,
    missing_send,
    positional_count,
    run_blocking,
    wrap_user_error,
)

__all__ = ["HOOKS", "ModelEndpoint", "UserCode", "safe_extract", "wrap_user_error"]

HOOKS = ("load", "preprocess", "process", "postprocess", "unload")
_counter = itertools.count(1)
_import_lock = threading.Lock()
"""Guards the brief ``sys.path`` change while a folder package imports its siblings."""


class _NoCacheLoader(importlib.machinery.SourceFileLoader):
    """Never reads or writes ``.pyc``: a hot-reloaded file of equal size and mtime is not stale."""

    def path_stats(self, path: str) -> Any:
        raise OSError("bytecode cache disabled")


def _mentions(source: Path, word: str) -> bool:
    """Whether any Python file of the user's code contains ``word`` (a file or a package folder)."""
    files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
    for file in files:
        try:
            if word in file.read_text(errors="replace"):
                return True
        except OSError:
            return True  # cannot tell: assume it does
    return False


class UserCode:
    """One loaded copy of an endpoint's ``Preprocess`` class; see the module docstring."""

    def __init__(self, config: EndpointConfig, source: Path, display: str) -> None:
        self.config = config
        self.source = source
        """The ``.py`` file or package folder that was imported."""
        self.display = display
        self.module_name = ""
        self.module: ModuleType | None = None
        self.instance: Any = None
        self.model: Any = None
        self.preprocess: Callable[..., Any] | None = None
        self.process: Callable[..., Any] | None = None
        self.postprocess: Callable[..., Any] | None = None
        self._hooks: dict[str, Callable[..., Any]] = {}
        self._async: dict[str, bool] = {}
        self._counts: dict[str, int] = {}
        self._tmpdir: Path | None = None
        self._model_loaded = False
        self._unloaded = False
        self.calls_endpoints = False
        """True when the code mentions ``send_request`` (a pipeline): its hooks then wait on
        the event loop, so the data plane never runs them on it."""
        self.errors = UserErrors(config.key, code_locator(source, display))
        """What the hooks of this copy raised: answers naming the user's line, the log, the last."""

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: Path,
        config: EndpointConfig,
        send_request: Callable[..., Any] | None = None,
        async_send_request: Callable[..., Any] | None = None,
        limits: ArchiveLimits | None = None,
    ) -> UserCode:
        """Import ``path`` (``.py``, package folder, or its ``.tar.gz``/tar/zip) and build ``Preprocess()``.

        An archive is unpacked within ``limits`` (default :class:`ArchiveLimits`). Raises
        :class:`UserCodeError` naming the file, line and error.
        """
        path = Path(path)
        shown = config.preprocess.filename if config.preprocess else path.name
        tmpdir: Path | None = None
        if not path.exists():
            raise UserCodeError(f"preprocess code {shown!r} not found at {path}")
        source = path
        if path.is_file() and (
            path.suffix != ".py"
            and ((config.preprocess is not None and config.preprocess.kind == "folder") or is_archive(path))
        ):
            tmpdir = Path(tempfile.mkdtemp(prefix="modelyard-usercode-"))
            try:
                safe_extract(path, tmpdir, limits)
                source = find_root(tmpdir)
            except BaseException:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise
        uc = cls(config, source, shown)
        uc._tmpdir = tmpdir
        uc.calls_endpoints = _mentions(source, "send_request")
        try:
            uc._import()
            uc._instantiate(send_request, async_send_request)
        except BaseException:
            uc._cleanup()
            raise
        return uc

    def _module_base(self) -> str:
        key = re.sub(r"\W", "_", self.config.key)
        return f"_modelyard_user_{key}_{next(_counter)}"

    def _where(self, exc: BaseException | None = None) -> str:
        """``'preprocess.py', line 7`` for the deepest frame of ``exc`` inside the user's code."""
        name, line = self.display, None
        if isinstance(exc, SyntaxError) and exc.filename:
            name, line = self._shown_name(exc.filename), exc.lineno
        elif exc is not None:
            for frame in reversed(traceback.extract_tb(exc.__traceback__)):
                if self._owns(frame.filename):
                    name, line = self._shown_name(frame.filename), frame.lineno
                    break
        return f"{name!r}" + (f", line {line}" if line else "")

    def _owns(self, filename: str) -> bool:
        try:
            p = Path(filename).resolve()
            src = self.source.resolve()
        except OSError:
            return False
        return p == src or (src.is_dir() and src in p.parents)

    def _shown_name(self, filename: str) -> str:
        src = self.source
        if src.is_dir() and self._owns(filename):
            rel = Path(filename).resolve().relative_to(src.resolve())
            return f"{self.display}/{rel.as_posix()}"
        return self.display

    def _import(self) -> None:
        self.module_name = self._module_base()
        if self.source.is_dir():
            init = self.source / "__init__.py"
            if not init.is_file():
                raise UserCodeError(f"preprocess folder {self.display!r} has no __init__.py")
            spec = importlib.util.spec_from_file_location(
                self.module_name,
                init,
                loader=_NoCacheLoader(self.module_name, str(init)),
                submodule_search_locations=[str(self.source)],
            )
        else:
            spec = importlib.util.spec_from_file_location(
                self.module_name,
                self.source,
                loader=_NoCacheLoader(self.module_name, str(self.source)),
            )
        if spec is None or spec.loader is None:  # pragma: no cover - loader is given
            raise UserCodeError(f"preprocess code {self.display!r} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.module_name] = module
        try:
            if self.source.is_dir():
                self._exec_package(module, spec.loader)
            else:
                spec.loader.exec_module(module)
        except ModelyardError:
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise UserCodeError(f"preprocess code {self._where(exc)}: {type(exc).__name__}: {exc}") from None
        self.module = module

    def _exec_package(self, module: ModuleType, loader: Any) -> None:
        """Run a package with its folder briefly on ``sys.path`` so ``import sibling`` works.

        Siblings imported that way are then taken out of ``sys.modules`` (the user module
        keeps its references) so another version of the same package imports its own copies.
        """
        folder = str(self.source)
        with _import_lock:
            before = set(sys.modules)
            sys.path.insert(0, folder)
            try:
                loader.exec_module(module)
            finally:
                try:
                    sys.path.remove(folder)
                except ValueError:
                    pass
                for name in set(sys.modules) - before:
                    mod_file = getattr(sys.modules[name], "__file__", None)
                    if not name.startswith(self.module_name) and mod_file and self._owns(mod_file):
                        del sys.modules[name]

    def _instantiate(
        self,
        send_request: Callable[..., Any] | None,
        async_send_request: Callable[..., Any] | None,
    ) -> None:
        assert self.module is not None
        klass = getattr(self.module, "Preprocess", None)
        if klass is None or not callable(klass):
            raise UserCodeError(f"preprocess code {self.display!r} defines no class named 'Preprocess'")
        sync_send = send_request or missing_send
        async_send = async_send_request or missing_send
        # clearml-serving's custom_async engine swaps send_request for the awaitable one.
        primary = async_send if self.config.engine == "custom_async" else sync_send
        attrs: dict[str, Any] = {
            "model_endpoint": ModelEndpoint.from_config(self.config),
            "auxiliary_cfg": copy.deepcopy(self.config.auxiliary),
        }
        owned = isinstance(klass, type) and str(klass.__module__).startswith(self.module_name)
        if owned:  # visible from __init__ already; the class is private to this load
            for k, v in attrs.items():
                setattr(klass, k, v)
            klass.send_request = staticmethod(primary)
            klass.async_send_request = staticmethod(async_send)
        try:
            instance = klass()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise UserCodeError(
                f"preprocess code {self._where(exc)}: Preprocess() raised {type(exc).__name__}: {exc}"
            ) from None
        try:
            for k, v in attrs.items():
                setattr(instance, k, v)
            instance.send_request = primary
            instance.async_send_request = async_send
        except (AttributeError, TypeError) as exc:
            raise UserCodeError(
                f"preprocess code {self.display!r}: cannot set attributes on Preprocess: {exc}"
            ) from None
        self.instance = instance
        for hook in HOOKS:
            fn = getattr(instance, hook, None)
            if fn is None or not callable(fn):
                continue
            is_async = inspect.iscoroutinefunction(fn)
            count = positional_count(fn, hook, repr(self.display))
            self._hooks[hook] = adapt(fn, count, is_async)
            self._async[hook] = is_async
            self._counts[hook] = count
        self.preprocess = self._hooks.get("preprocess")
        self.process = self._hooks.get("process")
        self.postprocess = self._hooks.get("postprocess")

    # ---------------------------------------------------------------- hooks
    @property
    def has_preprocess(self) -> bool:
        return "preprocess" in self._hooks

    @property
    def has_process(self) -> bool:
        return "process" in self._hooks

    @property
    def has_postprocess(self) -> bool:
        return "postprocess" in self._hooks

    @property
    def has_load(self) -> bool:
        return "load" in self._hooks

    def is_async(self, hook: str) -> bool:
        """True when the user declared ``hook`` with ``async def``."""
        return self._async.get(hook, False)

    async def _run(self, hook: str, data: Any, state: dict[str, Any], collect: Any) -> Any:
        fn = self._hooks[hook]
        if self._async[hook]:
            return await fn(data, state, collect)
        result = await asyncio.to_thread(fn, data, state, collect)
        if inspect.isawaitable(result):  # a sync def that returned a coroutine
            result = await result
        return result

    async def run_preprocess(self, body: Any, state: dict[str, Any], collect: Any = None) -> Any:
        """``Preprocess.preprocess`` (awaited, or in a thread when sync); the body if absent."""
        if not self.has_preprocess:
            return body
        return await self._run("preprocess", body, state, collect)

    async def run_process(self, data: Any, state: dict[str, Any], collect: Any = None) -> Any:
        """``Preprocess.process``; raises :class:`UserCodeError` when the class has none."""
        if not self.has_process:
            raise UserCodeError(f"preprocess code {self.display!r} defines no process() method")
        return await self._run("process", data, state, collect)

    async def run_postprocess(self, data: Any, state: dict[str, Any], collect: Any = None) -> Any:
        """``Preprocess.postprocess``; the data itself if absent."""
        if not self.has_postprocess:
            return data
        return await self._run("postprocess", data, state, collect)

    def load_model(self, local_file_name: str | Path | None) -> Any:
        """Call ``Preprocess.load(local_file_name)`` once (engines call it from their ``load``).

        The return value is the model for the engine (``None``: the engine loads the file
        itself). It is also kept as ``self.model`` and, when the instance has no ``_model``
        of its own yet, as ``instance._model``. Errors raise :class:`UserCodeError`.
        """
        if self._model_loaded or not self.has_load:
            return self.model
        arg = str(local_file_name) if local_file_name is not None else None
        try:
            result = run_blocking(self._hooks["load"](arg))
        except ModelyardError:
            raise
        except Exception as exc:
            raise UserCodeError(
                f"preprocess code {self._where(exc)}: Preprocess.load raised {type(exc).__name__}: {exc}"
            ) from None
        self.model = result
        self._model_loaded = True
        if result is not None and getattr(self.instance, "_model", None) is None:
            try:
                self.instance._model = result
            except (AttributeError, TypeError):
                pass
        return result

    def unload(self) -> None:
        """Call ``Preprocess.unload`` (errors are swallowed), then forget the module and files."""
        if self._unloaded:
            return
        self._unloaded = True
        try:
            if "unload" in self._hooks:
                run_blocking(self._hooks["unload"]())
        except Exception:  # a failing unload must not keep the old version alive
            pass
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.module_name:
            prefix = self.module_name + "."
            for name in [n for n in sys.modules if n == self.module_name or n.startswith(prefix)]:
                sys.modules.pop(name, None)
        self.instance = None
        self.model = None
        self.preprocess = self.process = self.postprocess = None
        self._hooks.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
