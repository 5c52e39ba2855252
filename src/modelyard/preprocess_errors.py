"""When a user's hook raises: an answer that points at the user's own line, the traceback in the
server log without flooding it, and the last error of the endpoint version for ``/status``.

``preprocess raised KeyError: 'x1'`` alone leaves the user guessing which of their lines ran
into it. :func:`describe` adds the innermost frame of the traceback that lies in the user's
own code (``preprocess.py:9, in preprocess``; ``features/io.py:4, in parse`` for a package):
library frames below it (numpy, sklearn) are where the error surfaced, not what to fix.

:class:`UserErrors` (one per loaded version of an endpoint's code) logs the full traceback
once per kind of error (hook, exception type, line) and then at most every ``log_every_s``
seconds with the number of repeats left out, so a client looping on a bad request cannot
flood the log; it keeps the last error with its time and counts, which the replica shows on
``/status`` and reports to the control plane (``modelyard endpoint show``). What it keeps is
bounded: messages are cut to :data:`MESSAGE_CHARS`, kinds to :data:`MAX_KINDS`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelyard.errors import Unprocessable

log = logging.getLogger("modelyard.usercode")

LOG_EVERY_S = 60.0
"""A kind of error that keeps happening is logged again (with its count) at most this often."""
MAX_KINDS = 64
"""Kinds of error remembered per endpoint version (the oldest is forgotten beyond)."""
MESSAGE_CHARS = 500
"""The exception's text is cut to this many characters in answers, status and reports."""


@dataclass(frozen=True)
class CodeLocation:
    """A frame of the user's code, named as the user knows the file."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}, in {self.function}"


Locator = Callable[[BaseException], "CodeLocation | None"]

_COMPREHENSIONS = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"})


def code_locator(source: Path, display: str) -> Locator:
    """Finds the innermost frame of an exception inside ``source`` (a ``.py`` file or a package
    folder, as imported), named after ``display`` (the file name the user uploaded).

    Compares the frames' file names as the import recorded them (no file system calls), so
    it costs next to nothing on a hot path of failing requests.
    """
    path = str(source)
    folder = path.rstrip(os.sep) + os.sep if source.is_dir() else None

    def shown(filename: str) -> str | None:
        if filename == path:
            return display
        if folder is not None and filename.startswith(folder):
            return f"{display}/{Path(filename[len(folder) :]).as_posix()}"
        return None

    def locate(exc: BaseException) -> CodeLocation | None:
        found = None
        for frame in traceback.extract_tb(exc.__traceback__):
            name = shown(frame.filename)
            if name is None:
                continue
            function = frame.name
            if function in _COMPREHENSIONS and found is not None and found.file == name:
                function = found.function  # as Python ≥ 3.12 reports it: the enclosing function
            found = CodeLocation(name, frame.lineno or 0, function)
        return found

    return locate


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text[: MESSAGE_CHARS - 3] + "..." if len(text) > MESSAGE_CHARS else text


def describe(exc: BaseException, hook: str, where: CodeLocation | None = None) -> str:
    """``preprocess raised KeyError: 'x1' (preprocess.py:9, in preprocess)``."""
    text = _text(exc)
    message = f"{hook} raised {type(exc).__name__}" + (f": {text}" if text else "")
    if where is not None:
        message = f"{message} ({where})"
    return message[: MESSAGE_CHARS + 300]  # the location is the user's own path: keep it bounded too


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Kind:
    __slots__ = ("count", "left_out", "logged_at")

    def __init__(self) -> None:
        self.count = 0
        self.logged_at: float | None = None
        self.left_out = 0


class UserErrors:
    """The user-code errors of one endpoint version: answers, rate-limited log, last error.

    Called from worker threads and the event loop alike, hence the lock (only errors take it).
    """

    def __init__(
        self,
        key: str,
        locate: Locator | None = None,
        *,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.locate = locate
        self.log_every_s = log_every_s
        self.clock = clock
        self.notify: Callable[[], None] | None = None
        """Called (from any thread) each time an error is logged, so the replica reports its
        status soon; as rate-limited as the log."""
        self._lock = threading.Lock()
        self._kinds: OrderedDict[tuple[str, str, str, int], _Kind] = OrderedDict()
        self._total = 0
        self._last: dict[str, Any] | None = None

    def wrap(self, exc: BaseException, hook: str) -> Unprocessable:
        """The 422 a request gets for ``exc`` raised in ``hook``; records and maybe logs it."""
        where = self.locate(exc) if self.locate is not None else None
        message = describe(exc, hook, where)
        err = Unprocessable(message)
        err.__cause__ = exc
        self._record(exc, hook, where, message)
        return err

    def _record(self, exc: BaseException, hook: str, where: CodeLocation | None, message: str) -> None:
        key = (hook, type(exc).__qualname__, where.file if where else "", where.line if where else 0)
        now = self.clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = _Kind()
                if len(self._kinds) > MAX_KINDS:
                    self._kinds.popitem(last=False)
            else:
                self._kinds.move_to_end(key)
            kind.count += 1
            self._total += 1
            self._last = {
                "hook": hook,
                "error": message,
                "where": str(where) if where is not None else None,
                "time": _utc(time.time()),
                "count": kind.count,
                "total": self._total,
            }
            due = kind.logged_at is None or now - kind.logged_at >= self.log_every_s
            left_out = kind.left_out
            if due:
                kind.logged_at, kind.left_out = now, 0
            else:
                kind.left_out += 1
        if not due:
            return
        repeats = f" ({left_out} more like it since it was last logged)" if left_out else ""
        log.error(
            "endpoint %s: %s%s",
            self.key,
            message,
            repeats,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if self.notify is not None:
            try:
                self.notify()
            except Exception:  # a report trigger must never fail the request
                log.debug("status report trigger failed", exc_info=True)

    def snapshot(self) -> dict[str, Any] | None:
        """The last error: ``hook``, ``error`` (the answer's message), ``where`` (the user's
        file:line), ``time`` (UTC, ISO 8601), ``count`` (errors of that kind) and ``total`` (all
        user-code errors of this version); ``None`` while there was none."""
        with self._lock:
            return dict(self._last) if self._last is not None else None
