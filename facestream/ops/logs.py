"""Structured JSON logs. Bind `image_id` and `trace_id` with `bind_event()` (contextvars), so
every line a stage writes while handling an event carries them. Never log embeddings, image
bytes or consent details: log ids, counts, reasons and timings only."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "INFO", service: str = "facestream") -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
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
