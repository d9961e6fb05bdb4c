"""Normalizing identifier values, so one person's email or phone always looks the same.

Junk values that SDKs and forms produce ("null", "undefined", "0", test
addresses) are refused here: linking on them would merge strangers. The list
and each type's normalizer come from `mappings/identity.yaml`.
"""

from __future__ import annotations

from typing import Any

import phonenumbers

from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.model import Identifier

KNOWN_TYPES = tuple(item.type for item in DEFAULT_IDENTITY.identifier_types)


def normalize_identifier(
    type_: str, raw: Any, default_region: str, config: IdentityConfig = DEFAULT_IDENTITY
) -> Identifier | None:
    """The normalized identifier, or None when the value is missing, junk or malformed."""
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    value = str(raw).strip()
    if value.lower() in config.junk:
        return None
    declared = config.types.get(type_)
    normalizer = declared.normalizer if declared else "trim"
    if normalizer == "email":
        value = value.lower()
        if "@" not in value.strip("@"):
            return None
    elif normalizer == "phone":
        value = _e164(value, default_region)
        if value is None:
            return None
    elif normalizer == "lowercase":
        value = value.lower()
    return Identifier(type_, value)


def _e164(value: str, default_region: str) -> str | None:
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
