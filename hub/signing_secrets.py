"""The secrets a signature may be made with while one is rotated: the current one and the one it replaces."""

from __future__ import annotations

from pydantic import SecretStr


def in_use(current: SecretStr | None, previous: SecretStr | None) -> list[str]:
    """The current secret and, during a rotation, the one before; an empty one is none.

    Emptying the variable that held the previous secret is how an operator
    ends a rotation: kept as "", it was a key anyone could sign with.
    """
    return [secret.get_secret_value() for secret in (current, previous) if secret is not None and secret.get_secret_value()]
