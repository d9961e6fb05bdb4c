"""Structured logging with personal data masked before anything is written."""

from __future__ import annotations

import logging
from typing import Any

import structlog

from hub.pii import mask_value

NOISY_LIBRARY_LOGGERS = (
    "twilio", "httpx", "httpcore", "urllib3", "uvicorn.access", "alembic",
    "simple_salesforce", "google.auth", "firebase_admin",
)


def _mask_pii(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {key: mask_value(value) for key, value in event_dict.items()}


def configure_logging(level: str = "INFO", json_output: bool = False) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s")
    # Client libraries log whole requests at INFO (twilio: headers and form fields,
    # i.e. phone numbers); they speak only when something is wrong.
    for noisy in NOISY_LIBRARY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _mask_pii,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
