"""Normalizing identifier values, so one person's email or phone always looks the same.

Junk values that SDKs and forms produce ("null", "undefined", "0", test
addresses) are refused here: linking on them would merge strangers.
"""

from __future__ import annotations

from typing import Any

import phonenumbers

from hub.model import Identifier

KNOWN_TYPES = ("user_id", "anonymous_id", "email", "phone", "device_id", "crm_id", "push_token")
JUNK_VALUES = frozenset({"", "null", "none", "nil", "undefined", "nan", "0", "-1", "n/a", "unknown", "test@test.com"})


def normalize_identifier(type_: str, raw: Any, default_region: str) -> Identifier | None:
    """The normalized identifier, or None when the value is missing, junk or malformed."""
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    value = str(raw).strip()
    if value.lower() in JUNK_VALUES:
        return None
    if type_ == "email":
        value = value.lower()
        if "@" not in value.strip("@"):
            return None
    elif type_ == "phone":
        value = _e164(value, default_region)
        if value is None:
            return None
    return Identifier(type_, value)


def _e164(value: str, default_region: str) -> str | None:
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
