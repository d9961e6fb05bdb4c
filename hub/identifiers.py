"""Normalizing identifier values, so one person's email or phone always looks the same.

Junk values that SDKs and forms produce ("null", "undefined", "0", test
addresses) are refused here: linking on them would merge strangers. The list
and each type's normalizer come from `mappings/identity.yaml`. A value made
only of zeroes and dashes is refused whatever the list says (Segment's
"zeroes and dashes" block): it is the all-zero IDFA / GAID an OS sends for a
device with ad tracking limited, or a broken SDK's anonymousId, shared by
every such device.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import phonenumbers

from hub.identity_config import DEFAULT_IDENTITY, IdentityConfig
from hub.model import Identifier

# Where a phone written without +country is read unless HUB_DEFAULT_PHONE_REGION says otherwise.
DEFAULT_PHONE_REGION = "US"
# What a placeholder id is made of: 00000000-0000-0000-0000-000000000000, "000", "--".
ZEROES_AND_DASHES = "0-"
# The ITU's international prefix: most of the world writes +44 20 7946 0958 as 0044 20 7946 0958.
ITU_INTERNATIONAL_PREFIX = "00"
# How a phone identifier holds an extension (RFC 3966's parameter): +14155550100;ext=12.
PHONE_EXTENSION = ";ext="

KNOWN_TYPES = tuple(item.type for item in DEFAULT_IDENTITY.identifier_types)

# One RFC 5322 dot-atom each side of the "@" (RFC 6532 lets both hold non-ASCII), so nothing that makes a
# header parser see a second address, a display name or a new line: no comma, semicolon, angle bracket, quote,
# parenthesis, backslash, whitespace or control character. Quoted local parts and domain literals, legal but
# all but unused, are refused with them. Dots may stand anywhere in the local part: Japanese carriers issued
# addresses such as taro..yamada@docomo.ne.jp and taro.@docomo.ne.jp, which mail servers deliver.
_LOCAL = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]|[^\x00-\x7f])+"
_LABEL = r"(?:[A-Za-z0-9-]|[^\x00-\x7f])+"
_ADDR_SPEC = re.compile(rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})*")
# RFC 5321 4.5.3.1: 64 octets of local part, 254 of path (256 with the angle brackets).
MAX_LOCAL_OCTETS, MAX_ADDRESS_OCTETS = 64, 254


def normalize_identifier(
    type_: str, raw: Any, default_region: str, config: IdentityConfig = DEFAULT_IDENTITY
) -> Identifier | None:
    """The normalized identifier, or None when the value is missing, junk or malformed."""
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    value = str(raw).strip()
    if value.lower() in config.junk or not value.strip(ZEROES_AND_DASHES):
        return None
    declared = config.types.get(type_)
    normalizer = declared.normalizer if declared else "trim"
    if normalizer == "email":
        value = folded(value)
        if not is_email_address(value):
            return None
    elif normalizer == "phone":
        value = _e164(value, default_region)
        # listed as normalized too: "+14155550000" however it is written, and whatever extension follows it
        if value is None or split_extension(value)[0] in config.junk:
            return None
    elif normalizer == "lowercase":
        value = value.lower()
    return Identifier(type_, value)


def composed(text: str) -> str:
    """`text` in NFC: one spelling of "josé", typed as é or as e + a combining accent (macOS input)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def folded(text: str) -> str:
    """`text` as an email address is compared: composed, lower-cased. One spelling of "josé" is one address to a
    mailbox, and the identifier is stored so; a forgotten person's address typed decomposed in a trait or a body
    (`hub.pii`) was left in place, to come back as the next profile's trait."""
    return composed(text).lower()


def is_email_address(value: str) -> bool:
    """Whether `value` is exactly one bare address (``local@domain``), as an email identifier and an SMTP
    envelope recipient must be.

    Checking for an "@" alone let "ana@example.com, eve@evil.example" through: the email library reads two
    recipients in it, and a display name, angle brackets or a line break smuggle in others.
    """
    if not value.isprintable() or _ADDR_SPEC.fullmatch(value) is None:
        return False
    local = value.rpartition("@")[0]
    return len(local.encode("utf-8")) <= MAX_LOCAL_OCTETS and len(value.encode("utf-8")) <= MAX_ADDRESS_OCTETS


def possible_phone(raw: str, default_region: str) -> Identifier | None:
    """A phone number as the phone identifier holds it, when it is merely possible (of a length its country's
    numbers have): what a person's own word from a number (an SMS STOP) is looked up by, never what ingest takes.

    Ingest takes valid numbers only (`_e164`), but phones stored before it
    did (until 646b223) needed no more than this, and they still receive
    texts: a STOP from one was refused as not valid (a 400), and the opt-out
    was lost. A number no profile holds (in a range newer than the metadata)
    changes nothing.
    """
    value = _e164(raw.strip(), default_region, phonenumbers.is_possible_number)
    return None if value is None else Identifier("phone", value)


def _e164(
    value: str, default_region: str, dialable: Callable[[phonenumbers.PhoneNumber], bool] = phonenumbers.is_valid_number
) -> str | None:
    """The number in E.164, with its extension (`phone_value`), if `dialable` takes it.

    For ingest, only a valid number, one in a range its country assigns: a
    merely possible one (of the right length) lets form fillers through
    ("000-000-0000" is +10000000000, area code 000 exists nowhere) and local
    numbers without an area code ("555-0123"), which would link every
    stranger who typed them.

    A number the default region does not take is read again with a leading
    00 as "+": phonenumbers reads 00 as the international prefix only where
    the region dials it (not in the US, whose exit code is 011), so
    "0044 20 7946 0958" was dropped. No NANP number starts with 0, and the
    retry costs nothing on the common path.
    """
    number = _dialable_number(value, default_region, dialable)
    if number is None and value.startswith(ITU_INTERNATIONAL_PREFIX):
        number = _dialable_number(f"+{value[len(ITU_INTERNATIONAL_PREFIX):]}", default_region, dialable)
    return None if number is None else phone_value(number)


def phone_value(number: phonenumbers.PhoneNumber) -> str:
    """The number as the phone identifier holds it: E.164, then its extension in RFC 3966's form.

    E.164 alone drops the extension phonenumbers reads ("+1 415 555 0100
    ext. 12"), so two people behind one switchboard, each with their own
    extension, shared one identifier and were merged into one profile. A
    number without one is plain E.164, as phones were always stored.
    """
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164}{PHONE_EXTENSION}{number.extension}" if number.extension else e164


def split_extension(phone: str) -> tuple[str, str]:
    """A phone identifier's number (E.164: what a text or a call dials, a switchboard's when there is an
    extension) and its extension ("" for none)."""
    number, _, extension = phone.partition(PHONE_EXTENSION)
    return number, extension


def _dialable_number(
    value: str, default_region: str, dialable: Callable[[phonenumbers.PhoneNumber], bool]
) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    return number if dialable(number) else None
