"""The secrets a signature may be made with while one is rotated: the current one and the one it replaces."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, SecretStr


def in_use(current: SecretStr | None, previous: SecretStr | None) -> list[str]:
    """The current secret and, during a rotation, the one before; an empty (or blank) one is none.

    Emptying the variable that held the previous secret is how an operator
    ends a rotation: kept as "" (or " "), it was a key anyone could sign with.
    """
    return [secret.get_secret_value() for secret in (current, previous) if secret is not None and secret.get_secret_value().strip()]


def _not_blank(secret: SecretStr) -> SecretStr:
    """Refused at load, naming the field: an empty current secret left the source unable to verify anything
    (every request a 401, or for a write key, a crash), a fault seen only once traffic came."""
    if not secret.get_secret_value().strip():
        raise ValueError("is empty: set it to the secret or key the sender signs or authenticates with")
    return secret


# A source's current secret or credential: never empty (a previous one may be, see `in_use`).
CurrentSecret = Annotated[SecretStr, AfterValidator(_not_blank)]
