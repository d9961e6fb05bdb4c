"""The Retry-After of the answer a provider library's refusal was made of.

twilio's and simple-salesforce's exceptions keep an answer's status and body,
not its headers, so the wait a 429 or a 503 asks for would be lost. The
transports note each answer's headers (`note`) for the send running in this
thread or asyncio task (a transport serves many sends at once); `kept` ties
the last answer's Retry-After to a refusal raised in its block, and `of` reads
it back in `classify`, which may run elsewhere (the engine's loop).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from weakref import WeakKeyDictionary

# The Retry-After of each answer received inside `kept`, per thread or asyncio task; None outside one.
_answered: ContextVar[list[str | None] | None] = ContextVar("provider_retry_after_answered", default=None)
# Each refusal's Retry-After, while the refusal lives.
_KEPT: WeakKeyDictionary[BaseException, str] = WeakKeyDictionary()


def note(headers: Mapping[str, str] | None) -> None:
    """An answer's headers, as a transport received them."""
    answered = _answered.get()
    if answered is not None:
        answered.append(headers.get("Retry-After") if headers else None)


@contextmanager
def kept(*refusals: type[BaseException]) -> Iterator[None]:
    """Keep the Retry-After of the answer behind a refusal of these types raised in the block; the refusal goes
    on unchanged."""
    answered: list[str | None] = []
    token = _answered.set(answered)
    try:
        yield
    except refusals as exc:
        if answered and answered[-1]:
            _KEPT[exc] = answered[-1]
        raise
    finally:
        _answered.reset(token)


def of(refusal: BaseException) -> str | None:
    """The Retry-After `kept` noted for this refusal, if its answer had one."""
    return _KEPT.get(refusal)
