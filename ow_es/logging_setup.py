"""One log format for a process: ow-es's own loggers, the driver's and the web server's.

``text``: ``2024-05-01T12:00:00.123Z INFO ow_es.worker: run finished workflow=charge
run_id=... status=completed duration_ms=12`` (the record's extra fields as ``key=value``
pairs after the message). ``json``: one object per line with ``time``, ``level``, ``logger``,
``message``, the extra fields and, for an exception, ``exception``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
# ow-es at the chosen level; the driver's and the web server's chatty INFO lines (a pool logs
# every connection it hands out) only at debug.
OWN_LOGGERS = ("ow_es",)
LIBRARY_LOGGERS = ("psycopg", "uvicorn")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``, in the order given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pair_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value ...``, then a traceback, if any."""

    def __init__(self, scrub: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.scrub = scrub or (lambda text: text)

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{k}={_pair_value(v)}" for k, v in extra_fields(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return self.scrub(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, scrub: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.scrub = scrub or (lambda text: text)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self.scrub(json.dumps(entry, default=str, ensure_ascii=False))


def formatter(fmt: str, scrub: Callable[[str], str] | None = None) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return JsonFormatter(scrub) if fmt == "json" else TextFormatter(scrub)


def configure(
    level: str,
    fmt: str = "text",
    *,
    scrub: Callable[[str], str] | None = None,
    stream: IO[str] | None = None,
) -> Callable[[], None]:
    """Send ow-es's, psycopg's and uvicorn's records to ``stream`` (stderr) through one
    formatter; the root logger too, when nothing else handles it (the app's own logs). Returns
    a function that puts the loggers back as they were."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt, scrub))
    chosen = logging.getLevelName(level.upper())
    if not isinstance(chosen, int):
        raise ValueError(f"log level: unknown level {level!r}")
    quiet = chosen if chosen <= logging.DEBUG else max(chosen, logging.WARNING)
    levels = {name: chosen for name in OWN_LOGGERS} | {name: quiet for name in LIBRARY_LOGGERS}
    saved = []
    for name, wanted in levels.items():
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.handlers[:], logger.propagate))
        logger.setLevel(wanted)
        logger.handlers = [handler]
        logger.propagate = False
    root = logging.getLogger()
    adopted_root = not root.handlers
    if adopted_root:
        root.addHandler(handler)

    def restore() -> None:
        for logger, old_level, old_handlers, old_propagate in saved:
            logger.setLevel(old_level)
            logger.handlers = old_handlers
            logger.propagate = old_propagate
        if adopted_root:
            root.removeHandler(handler)
        handler.flush()

    return restore
