"""Structured JSON logs. Bind `image_id` and `trace_id` with `bind_event()` (contextvars), so
every line a stage writes while handling an event carries them. Never log embeddings, image
bytes or consent details: log ids, counts, reasons and timings only.

The libraries' own loggers (faust, aiokafka) go through the same JSON rendering, one object per
line, and a line they repeat (a broker away for a minute makes aiokafka log every reconnection
attempt) is written once per `REPEAT_WINDOW_S`, with the count of the ones left out.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
import time
from typing import Any

import structlog
from structlog.typing import Processor

REPEAT_WINDOW_S = 30.0
_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class Repeats(logging.Filter):
    """Lets the first of a run of like lines (same logger, level and message template) through,
    holds back the rest for `window_s`, then lets the next one through saying how many were held."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, int, str], tuple[float | None, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            since, held = self._seen.get(key, (None, 0))
            if since is not None and now - since < self.window_s:
                self._seen[key] = (since, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:  # bounded: forget the oldest runs
                for old in sorted(self._seen, key=lambda k: self._seen[k][0] or 0.0)[:5_000]:
                    del self._seen[old]
        if held:
            record.repeats_held = held
        return True


def _add_repeats(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    held = getattr(event.get("_record"), "repeats_held", None)
    if held:
        event["repeats_held"] = held
    return event


def library_logging(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the standard library's loggers: JSON lines on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": [*_SHARED, structlog.stdlib.add_logger_name, _add_repeats],
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
            }
        },
        "filters": {"repeats": {"()": Repeats}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["repeats"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(level: str = "INFO", service: str = "facestream") -> None:
    logging.config.dictConfig(library_logging(level))
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def bind_event(**ids: Any) -> None:
    structlog.contextvars.bind_contextvars(**ids)


def unbind_event(*names: str) -> None:
    structlog.contextvars.unbind_contextvars(*names)
