"""Structured logging with personal data masked before anything is written."""

from __future__ import annotations

import logging
import sys
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


def _finishing_processors(json_output: bool) -> list[Any]:
    """The steps every line ends with, structlog's and stdlib logging's alike: one place, so a line from
    uvicorn, SQLAlchemy or twilio is masked and rendered exactly as the hub's own (HUB_LOG_JSON)."""
    return [
        structlog.processors.format_exc_info,
        _mask_pii,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False),
    ]


def _route_stdlib_logging(level: str, formatter: logging.Formatter) -> None:
    """Give stdlib records (uvicorn, SQLAlchemy, client libraries) the hub's formatter on the root handler.

    A later call (a command setting its own level) re-formats the handler it added rather than adding a
    second; a root logger with someone else's handlers (pytest's) is left alone, as basicConfig does.
    """
    ours = [handler for handler in logging.getLogger().handlers
            if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter)]
    for handler in ours:
        handler.setFormatter(formatter)
    if not ours:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        logging.basicConfig(level=level, handlers=[handler])


class _StderrLogger(structlog.PrintLogger):
    """Prints each line to sys.stderr as it is then, as structlog's own logger does with sys.stdout: a stream bound
    when a module's logger was first used (and cached) outlived a stream swapped in since (pytest's capture,
    closed after its test), and every later line of that module failed with "I/O operation on closed file"."""

    def __init__(self, *_names: Any) -> None:
        super().__init__(sys.stderr)

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure_logging(level: str = "INFO", json_output: bool = False) -> None:
    """structlog's lines are rendered by structlog itself (cheap on the hot paths); stdlib logging's through
    a ProcessorFormatter with the same steps, so HUB_LOG_JSON and the masking hold for every line.

    Both write to stderr, the one stream of a process's logs (stdlib's handler and uvicorn's own lines always
    did; structlog's printed to stdout, so `serve`'s log came in two streams that interleave out of order), which
    leaves stdout to what a command outputs: `triggers test --json | jq` read the hub's error lines as JSON.
    """
    level = level.upper()
    starting = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    finishing = _finishing_processors(json_output)
    _route_stdlib_logging(level, structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=starting,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finishing],
    ))
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, QueryValuesHidden) for existing in access.filters):
        access.addFilter(QueryValuesHidden())
    # Client libraries log whole requests at INFO (twilio: headers and form fields,
    # i.e. phone numbers); they speak only when something is wrong.
    for noisy in NOISY_LIBRARY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.configure(
        processors=[*starting, *finishing],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=True,
    )
