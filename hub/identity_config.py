"""The identity rules ops edit in ``mappings/identity.yaml``.

Which identifier types exist (built-in and custom), how each is normalized,
how many of each one person may have, and which type wins when a link must be
refused. The defaults follow Segment Unify: one `user_id` per profile, a few
emails, many anonymous ids, and identifiers ranked so that a login (`user_id`)
outweighs a shared device or a cookie.
"""

from __future__ import annotations

from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.config_files import load_model

Normalizer = Literal["trim", "lowercase", "email", "phone"]

# Built-in types always normalize the same way; a custom type picks `trim` or `lowercase`.
BUILT_IN_NORMALIZERS: dict[str, Normalizer] = {
    "user_id": "trim",
    "anonymous_id": "trim",
    "email": "email",
    "phone": "phone",
    "device_id": "trim",
    "crm_id": "trim",
    "push_token": "trim",
}
# With "anonymous" and "guest", what apps send as the userId of a signed-out user (Segment recommends blocking
# "anonymous"); a value of zeroes and dashes only is refused whatever this list says (`hub.identifiers`).
DEFAULT_JUNK_VALUES = (
    "", "null", "none", "nil", "undefined", "nan", "0", "-1", "n/a", "unknown", "anonymous", "guest",
    "test@test.com", "test@example.com", "noreply@example.com", "email@example.com",
)


class IdentifierType(BaseModel):
    """One identifier type; its place in `identifier_types` is its priority (first = highest)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")
    limit: int = Field(ge=1, description="Most identifiers of this type one profile may hold.")
    normalize: Normalizer | None = Field(
        None, description="Custom types only: `trim` (default) or `lowercase`. Built-in types are fixed."
    )
    follows_last_login: bool = Field(
        False, description="A device's identifier (a push token): when another person signs in on the device, so "
        "that a limit keeps the two profiles apart, it moves to them instead of staying with the first, as Braze "
        "moves a shared tablet's token; the first person's messages then no longer reach that device.",
    )
    evict_oldest: bool = Field(
        False, description="A new identifier over the limit takes the place of the profile's oldest of this type "
        "(recorded as detached) instead of being refused: push tokens come new with every reinstall or phone, and "
        "the newest is the device the person holds. Links between profiles still keep to the limit.",
    )

    @model_validator(mode="after")
    def _built_ins_keep_their_normalizer(self) -> IdentifierType:
        fixed = BUILT_IN_NORMALIZERS.get(self.type)
        if fixed is not None and self.normalize not in (None, fixed):
            raise ValueError(f"{self.type} is built in and always normalized as {fixed!r}")
        if fixed is None and self.normalize in ("email", "phone"):
            raise ValueError(f"custom type {self.type} may use `trim` or `lowercase`, not {self.normalize!r}")
        return self

    @property
    def normalizer(self) -> Normalizer:
        return BUILT_IN_NORMALIZERS.get(self.type) or self.normalize or "trim"


class IdentityConfig(BaseModel):
    """The whole of ``mappings/identity.yaml`` (its JSON Schema is in mappings/schema/)."""

    model_config = ConfigDict(extra="forbid")

    identifier_types: list[IdentifierType] = Field(
        min_length=1, description="Every identifier type, highest priority first, each with its per-profile limit."
    )
    junk_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_JUNK_VALUES),
        description="Values refused for every type (compared case-insensitively after trimming). A value made only "
        "of zeroes and dashes (00000000-0000-0000-0000-000000000000, the id of a device with ad tracking limited) is "
        "always refused as well.",
    )
    block_forgotten_identifiers: bool = Field(
        True,
        description="After a profile is forgotten, keep hashes of its identifiers so they never create a profile again.",
    )

    @model_validator(mode="after")
    def _types_are_unique(self) -> IdentityConfig:
        repeated = [type_ for type_, n in Counter(item.type for item in self.identifier_types).items() if n > 1]
        if repeated:
            raise ValueError(f"identifier types listed more than once: {', '.join(repeated)}")
        return self

    @cached_property
    def types(self) -> dict[str, IdentifierType]:
        return {item.type: item for item in self.identifier_types}

    @cached_property
    def junk(self) -> frozenset[str]:
        return frozenset(value.strip().lower() for value in self.junk_values)

    @cached_property
    def priority(self) -> dict[str, int]:
        """Type -> rank, 0 the highest; unlisted types rank after every listed one."""
        return {item.type: rank for rank, item in enumerate(self.identifier_types)}

    def undeclared(self, type_: str) -> str | None:
        """Why a lookup by `type_` can find nobody, or None if the type is declared: a mapping may produce only
        declared types (`hub.mappings_folder`), so any other is a typo, which "no profile" hid."""
        if type_ in self.types:
            return None
        return f"{type_!r} is not an identifier type declared in {IDENTITY_FILE}; use one of: {', '.join(self.types)}"

    def rank(self, type_: str) -> int:
        return self.priority.get(type_, len(self.identifier_types))

    def limit(self, type_: str) -> int | None:
        """The per-profile limit of a type; None (unlimited) for a type the file does not list."""
        declared = self.types.get(type_)
        return declared.limit if declared else None

    def follows_last_login(self, type_: str) -> bool:
        declared = self.types.get(type_)
        return declared is not None and declared.follows_last_login

    def evicts_oldest(self, type_: str) -> bool:
        declared = self.types.get(type_)
        return declared is not None and declared.evict_oldest


IDENTITY_FILE = "identity.yaml"

DEFAULT_IDENTITY = IdentityConfig(
    identifier_types=[
        IdentifierType(type="user_id", limit=1),
        IdentifierType(type="crm_id", limit=1),
        IdentifierType(type="email", limit=5),
        IdentifierType(type="phone", limit=5),
        IdentifierType(type="device_id", limit=10),
        IdentifierType(type="push_token", limit=20, follows_last_login=True, evict_oldest=True),
        IdentifierType(type="anonymous_id", limit=100),
    ]
)


def load_identity_config(path: Path) -> IdentityConfig:
    return load_model(path, IdentityConfig)


def identity_config_in(folder: Path) -> IdentityConfig:
    """The folder's identity.yaml; a mappings folder made before the file existed gets the shipped defaults."""
    path = folder / IDENTITY_FILE
    return load_identity_config(path) if path.exists() else DEFAULT_IDENTITY
