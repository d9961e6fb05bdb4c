"""Database errors as the hub lets them be logged and stored: without the values of the row they refused.

`hide_parameters` keeps a failed statement's parameters out of its error,
but PostgreSQL's own DETAIL quotes the refused row ("Failing row contains
(..., jane@example.com, ...)", "Key (type, value)=(email, jane@example.com)
already exists"): into uvicorn's traceback and the inbox's and quarantine's
errors, where ops read them.
"""

from __future__ import annotations

from sqlalchemy.engine import ExceptionContext


def hide_row_values(error: BaseException) -> None:
    """Drop a driver error's DETAIL (PostgreSQL's `diag`), in place; the rest of its message stays."""
    diagnostic = getattr(error, "diag", None)
    if diagnostic is not None and diagnostic.message_detail and diagnostic.message_primary:
        error.args = (f"{diagnostic.message_primary} (its detail is not shown: it may quote the row's values)",)


def hide_row_values_of(context: ExceptionContext) -> None:
    """The engine's `handle_error` hook: `hide_row_values` of the driver's error, and of the SQLAlchemy error
    already made from its text."""
    error = context.original_exception
    told = str(error)
    hide_row_values(error)
    wrapped = context.sqlalchemy_exception
    if str(error) != told and wrapped is not None and wrapped.args and isinstance(wrapped.args[0], str):
        wrapped.args = (wrapped.args[0].replace(told, str(error)), *wrapped.args[1:])
