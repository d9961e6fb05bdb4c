"""Structured logging with personal data masked before anything is written."""

from __future__ import annotations

import logging
from typing import Any

import structlog

from hub.pii import mask_value
from hub.secret_urls import shown_path

NOISY_LIBRARY_LOGGERS = (
    "twilio", "httpx", "httpcore", "urllib3", "uvicorn.access", "alembic",
    "simple_salesforce", "google.auth", "firebase_admin",
)


def _mask_pii(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {key: mask_value(value) for key, value in event_dict.items()}


class QueryValuesHidden(logging.Filter):
    """Hides the query values of the paths uvicorn's access log writes.

    `touchhub serve` logs each request's path with its query, and an unsubscribe
    link's `?token=` is a credential: whoever reads the log could opt its person
    out. uvicorn's own logging set-up keeps a logger's filters, so this one
    outlives it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5 and isinstance(record.args[2], str):
            client, method, path, version, status = record.args
            record.args = (client, method, shown_path(path), version, status)
        return True


def configure_logging(level: str = "INFO", json_output: bool = False) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s")
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, QueryValuesHidden) for existing in access.filters):
        access.addFilter(QueryValuesHidden())
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
