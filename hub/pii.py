"""Masking of personal data before it reaches logs or the delivery log.

The delivery log is read by ops people and exported to tickets; it must show
enough to recognise a recipient ("+1******4567") and never the whole value.
A device's push token is worse than personal data: whoever holds it can
message the device. Nothing about a token's look says it is one, so it is
masked by what the delivery's route says its recipient is (`mask_recipient`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import phonenumbers

from hub.identifiers import PHONE_EXTENSION, composed, folded, normalize_identifier, phone_value
from hub.model import Identifier

# An address as ingest takes one (`hub.identifiers`): any RFC 5322 atext character before the @ (mary.o'brien@,
# jane&john@), letters of any script (zoë@example.com, ana@bücher.de), and a domain with no dot (bo@localhost; a
# provider quoting back a refused "ana.silva@gmail"). The lookbehind starts a mask only where the local part does,
# so none is left to read in front of it; a full stop that ends a sentence is no part of the domain. A URL's
# "//" is no part of its user name (https://tok@host -> https://t***@host), and a mask ("***@") is not masked again.
_LEADING = r"\w.!#$%&'+=?^`{|}~\-"  # what may start a local part: atext but "/" and "*"
_ATEXT = rf"[{_LEADING}*/]"
_EMAIL = re.compile(rf"(?<![{_LEADING}*])([{_LEADING}]){_ATEXT}*@([\w-]+(?:\.[\w-]+)*)")
# An extension after a phone number, written as people and phonenumbers write one: "+14155550100;ext=12" (RFC
# 3966, as the phone identifier holds it), "(415) 555-0100 ext. 12", "x12", "#12".
_EXTENSION = r"(?:;ext=|\s*(?:ext\.?|extension|x|#)\s*)(\d{1,7})"
_WRITTEN_EXTENSION = re.compile(rf"{_EXTENSION}\s*$", re.IGNORECASE)
# A value that may be a phone written by hand: digits and what people put between them, nothing else. Checked
# before any parsing, as every string of a touchpoint is looked at.
_PHONE_LOOK = re.compile(rf"\+?[\d ().\-]{{7,24}}(?:{_EXTENSION})?", re.IGNORECASE)
_E164 = re.compile(rf"\+\d{{7,15}}(?:{re.escape(PHONE_EXTENSION)}\d+)?")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
# Where a whole address starts and ends in text: not inside a longer local part (jimbo@ and jane+bo@ hold bo@),
# nor before more of a domain (bo@example.com.au); a full stop that ends a sentence ends it. A phone is not the
# number of an extension behind it (+14155550100;ext=12 is someone else's).
_NOT_AFTER_ADDRESS = r"(?<![\w.%+-])"
_NOT_BEFORE_ADDRESS = rf"(?![\w-]|\.[\w-]|{re.escape(PHONE_EXTENSION)})"
# International numbers (+ and digits) and North American national ones, "(415)555-0123" too; a bare run of
# digits in text is not masked, or every timestamp and id would be (`mask_traits` masks one that is a whole value).
_PHONE = re.compile(
    rf"(?:\+\d[\d \-().]{{6,}}\d|\(?\b\d{{3}}\)?[ .-]\d{{3}}[ .-]\d{{4}}\b|\(\d{{3}}\)\s?\d{{3}}[ .-]\d{{4}}\b)(?:{_EXTENSION})?",
    re.IGNORECASE,
)
# Identifier types whose values are credentials rather than addresses (routes.yaml `target`).
TOKEN_TYPES = frozenset({"push_token"})


def mask_phone(value: str) -> str:
    """Keep the country prefix and the last 4 digits: '+14155550123' -> '+1******0123'. An extension shows
    none of its digits ('+14155550123;ext=12' -> '+1******0123;ext=**'): counted in with the number's, its
    digits were shown as the number's last four."""
    extension = _WRITTEN_EXTENSION.search(value)
    if extension is None:
        return _mask_number(value)
    return f"{_mask_number(value[:extension.start()])}{PHONE_EXTENSION}{'*' * len(extension[1])}"


def _mask_number(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    if len(digits) <= 4:
        return "*" * len(digits)
    head = ("+" if value.strip().startswith("+") else "") + digits[:1]
    return head + "*" * (len(digits) - 5) + digits[-4:]


def mask_email(address: str) -> str:
    """One address, 'jane.doe@example.com' -> 'j***@example.com'. The domain is what follows the last "@": one
    in a local part ("a@b"@example.com) is the person's, not the domain's."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def mask_text(text: str) -> str:
    """Mask every email address and phone number found in free text (NFC first: an address typed decomposed,
    `jose\u0301@x.io`, has a combining mark no pattern of a local part takes, and was shown whole)."""
    text = composed(text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), _EMAIL.sub(lambda m: mask_email(m.group(0)), text))


def mask_value(value: Any) -> Any:
    """Recursively mask strings inside dicts and lists (for request/response summaries)."""
    return _each_string(value, mask_text)


def _each_string(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` made to every string inside its dicts and lists, at any depth."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _each_string(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_each_string(item, change) for item in value]
    return value


def mask_token(token: str) -> str:
    """Enough of a device token to recognise it in the delivery log (its first 10 characters), too little to
    message the device with. One of 10 characters or fewer is no real token (FCM's run past 100) and is shown
    whole, so the log names the malformed value a provider refused."""
    return token[:10] + "…" if len(token) > 10 else token


def mask_recipient(target: str, identifier: Identifier | None) -> str:
    """A delivery's recipient as the delivery log shows it; `identifier` is what its channel's route says the
    target is (`Router.recipient`), None for a profile id or a channel no longer routed."""
    if identifier is not None and identifier.type in TOKEN_TYPES:
        return mask_token(target)
    if identifier is not None and identifier.type == "email":
        return mask_email(target)
    return mask_text(target)


# Identifier types whose values are a way to reach a person, found as they are in fields and traits (an email
# as typed, any case). Other ids (a user id "42") may equal ordinary values (an age), so are not looked for.
ADDRESS_TYPES = frozenset({"email", "phone", *TOKEN_TYPES})


def mask_traits(traits: Any, identifiers: Iterable[Identifier], region: str) -> Any:
    """A profile's traits as `mask_value` masks them, and also each value that is one of the profile's
    `identifiers` (a push token cut short as `mask_token` does) or a phone number (as ingest reads one in
    `region`, or as one of the profile's phones written another way): a phone sent as bare digits
    ("4155550124") or in national form ("07700 900123") matches no pattern of `mask_text`, and a token has no
    look at all, so the profile's own phone identifier was masked while the trait it came from was shown whole."""
    kinds = {folded(ident.value): ident.type for ident in identifiers if ident.type in ADDRESS_TYPES}
    phones = _erased_phones(set(kinds))

    def mask(text: str) -> str:
        kind = kinds.get(folded(text.strip()))
        if kind in TOKEN_TYPES:
            return mask_token(text)
        if kind == "phone" or _one_of_phones(text.strip(), phones) or _is_phone(text.strip(), region):
            return mask_phone(text)
        return mask_text(text)

    return _each_string(traits, mask)


def _is_phone(text: str, region: str) -> bool:
    """Whether `text` (stripped), alone, is a phone number as ingest reads one (`hub.identifiers`) in `region`."""
    return bool(_PHONE_LOOK.fullmatch(text)) and _as_e164(text, region) is not None


def address_values(identifiers: Iterable[Identifier]) -> set[str]:
    """What `without_values` and `holds_values` take out for these identifiers: the values of those that are
    addresses, lowercase. A phone among them (E.164) is also found written any other way ("(415) 555-0100")."""
    return {folded(ident.value) for ident in identifiers if ident.type in ADDRESS_TYPES}



def without_values(value: Any, erased: set[str]) -> Any:
    """`value` with every string equal to one of `erased` (lowercase; in any case), or that is one of its phones
    written another way, left out at any depth: a forgotten person's email or phone out of the fields and traits
    of events that carried them."""
    return _without(value, erased, _erased_phones(erased))


def holds_values(text: str, erased: set[str]) -> bool:
    """Whether free text (a raw body) holds one of `erased` (in any case), or one of its phones written any way
    (`holding`, for one text)."""
    return holding(erased)(text)


def holding(erased: set[str]) -> Callable[[str], bool]:
    """Whether a free text (a raw body) holds one of `erased`, or one of its phones written any way: made once
    for many texts (a quarantine read through).

    A body is not parsed for its fields: it may be form-encoded, truncated or
    no JSON at all. A value counts only as a whole address: bo@example.com is
    not in jimbo@example.com. JSON's \\u escapes are read first, as SDKs
    escape non-ASCII (zo\\u00eb@...). Digits alone would match numbers glued
    across fields (`[415, 5550100]`), so a body whose digits hold a phone's
    national number is then read by phonenumbers' own matcher, which finds
    numbers in text as written and is too slow to run on every body.
    """
    whole = re.compile("|".join(f"{_NOT_AFTER_ADDRESS}{re.escape(value)}{_NOT_BEFORE_ADDRESS}" for value in sorted(erased))) if erased else None
    phones = _erased_phones(erased)

    def holds(text: str) -> bool:
        if "\\u" in text:
            text = _JSON_ESCAPE.sub(lambda escape: chr(int(escape[1], 16)), text)
        if whole is not None and whole.search(folded(text)):
            return True
        digits = re.sub(r"\D", "", text) if phones else ""
        candidates = {e164: region for e164, (region, national) in phones.items() if national in digits}
        return any(
            phone_value(match.number) in candidates
            for region in set(candidates.values())
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE)
        )

    return holds


def _erased_phones(erased: set[str]) -> dict[str, tuple[str, str]]:
    """Each erased phone (E.164, an extension after it as the identifier holds one) with the region its national
    format is read in and its national number.

    The region is the phone's own country's, not the hub's default region:
    written without a country code, a number can only be this one when read in
    its own country, and forgetting runs where that setting is not to hand.
    """
    phones: dict[str, tuple[str, str]] = {}
    for value in erased:
        if not _E164.fullmatch(value):
            continue
        try:
            number = phonenumbers.parse(value)
        except phonenumbers.NumberParseException:  # no country code ("+0..."): only its exact value is known
            continue
        phones[value] = (
            phonenumbers.region_code_for_country_code(number.country_code),
            phonenumbers.national_significant_number(number),
        )
    return phones


def _without(value: Any, erased: set[str], phones: dict[str, tuple[str, str]]) -> Any:
    if isinstance(value, dict):
        return {
            key: _without(item, erased, phones) for key, item in value.items() if not _is_erased(item, erased, phones)
        }
    if isinstance(value, list):
        return [_without(item, erased, phones) for item in value if not _is_erased(item, erased, phones)]
    return value


def _is_erased(value: Any, erased: set[str], phones: dict[str, tuple[str, str]]) -> bool:
    if not isinstance(value, str):
        return False
    text = folded(value.strip())
    return text in erased or _one_of_phones(text, phones)


def _one_of_phones(text: str, phones: dict[str, tuple[str, str]]) -> bool:
    """Whether `text` (stripped) is one of `phones` (`_erased_phones`) written any way."""
    if not phones or not _PHONE_LOOK.fullmatch(text):
        return False
    digits = re.sub(r"\D", "", text)
    return any(national in digits and _as_e164(text, region) == e164 for e164, (region, national) in phones.items())


def _as_e164(text: str, region: str) -> str | None:
    """`text` read as a phone the way ingest reads one (`hub.identifiers`), in `region`."""
    identifier = normalize_identifier("phone", text, region)
    return identifier.value if identifier else None
