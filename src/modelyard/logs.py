"""Logging of the servers and workers: quiet by default, readable text or one JSON object a line.

One :func:`logging_config` (a :func:`logging.config.dictConfig` dict) is applied by the
command itself and handed to uvicorn as its ``log_config``, so every worker process uvicorn
starts logs the same way (uvicorn applies it in each of them), its own lines included.

Quiet by default, because a first start should print what a person needs to read and no
more: libraries that log a line per step or per call (Alembic's migration steps, httpx's and
httpcore's requests) stay at warning unless the level is ``debug``, and uvicorn's access log
is off unless asked for (``--access-log``).
"""

from __future__ import annotations

import json
import logging
import logging.config
import traceback
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY_LOGGERS = ("alembic", "httpx", "httpcore")
"""Loggers that say something at info level for every migration step or HTTP call."""

_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
"""The arguments of a uvicorn access-log record, in order."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``.

    ``exception`` holds the formatted traceback when there is one; uvicorn's access-log
    records also carry ``client``, ``method``, ``path``, ``http_version`` and ``status``.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == len(_ACCESS_FIELDS):
            out.update(zip(_ACCESS_FIELDS, args, strict=True))
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str)


def logging_config(settings: Settings) -> dict[str, Any]:
    """The dictConfig of ``settings``: level, format, chatty libraries and the access log."""
    level = settings.log_level.upper()
    chatty = "INFO" if level == "DEBUG" else max(logging.WARNING, logging.getLevelName(level))
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if settings.log_format == "json" else {"format": TEXT_FORMAT}
    )
    loggers: dict[str, Any] = {name: {"level": chatty} for name in CHATTY_LOGGERS}
    # uvicorn's loggers hand their records to the root handler, so they share its format
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        loggers[name] = {"level": level, "handlers": [], "propagate": True}
    loggers["uvicorn.access"] = {
        "level": level if settings.access_log else "WARNING",
        "handlers": [],
        "propagate": True,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"modelyard": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "modelyard",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": loggers,
    }


def setup_logging(settings: Settings) -> dict[str, Any]:
    """Configure this process's logging from ``settings``; returns the dict (for uvicorn)."""
    config = logging_config(settings)
    logging.config.dictConfig(config)
    return config
