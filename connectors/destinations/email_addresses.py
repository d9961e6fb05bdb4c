"""Email addresses as SMTP carries them: exactly one mailbox, its domain as an IDNA A-label.

The hub's email identifiers and its From setting become envelope addresses
and header fields here; RFC 5321 (addresses), RFC 5891 (A-labels).
"""

from __future__ import annotations

import re
import unicodedata
from email.headerregistry import Address

from hub.identifiers import is_email_address

# "Display Name <local@domain>"; everything before the angle brackets is the name, commas included.
_NAMED_SENDER = re.compile(r"(?P<name>.*?)\s*<(?P<address>[^<>]*)>\s*")


def a_label(domain: str) -> str:
    """`domain` with each internationalised label as its IDNA A-label, which plain SMTP and DNS carry.

    The A-label is "xn--" + Punycode of the label (RFC 5891 4.4). Not the standard library's "idna" codec:
    that is IDNA 2003, which maps characters away (``straße`` to ``strasse``: another domain, maybe another
    owner); Punycode of the label as written maps nothing, so a domain that was never valid fails at the
    relay instead of reaching someone else. ASCII labels are left as they are.

    Raises:
        ValueError: a label is empty or longer than DNS allows (63 octets).
    """
    labels = []
    for label in domain.split("."):
        if not label.isascii():
            label = "xn--" + unicodedata.normalize("NFC", label.lower()).encode("punycode").decode("ascii")
        if not 0 < len(label) <= 63:
            raise ValueError(f"domain label {label[:20]!r}... is not 1 to 63 characters long")
        labels.append(label)
    return ".".join(labels)


def one_address(addr_spec: str, display_name: str = "") -> Address:
    """The mailbox `addr_spec` names (exactly one ``local@domain``), its domain as an A-label.

    Raises:
        ValueError: `addr_spec` is not exactly one bare address.
    """
    if not is_email_address(addr_spec):
        raise ValueError("is not one email address (local@domain, no display name, comma or line break)")
    local, _, domain = addr_spec.rpartition("@")
    return Address(display_name=display_name, username=local, domain=a_label(domain))


def sender_address(value: str) -> Address:
    """The one mailbox a From setting names: ``news@shop.example`` or ``Display Name <news@shop.example>``.

    The display name is everything before the angle brackets, so ``Acme, Inc. <news@acme.example>`` is one
    mailbox, where a header parser reads two ("Acme" and "Inc. <news@acme.example>"); `Address` quotes the
    name when the header is written. A name already in double quotes is taken without them.

    Raises:
        ValueError: not one mailbox, or a line break in it.
    """
    if not value.isprintable():
        raise ValueError("must be one line of printable characters")
    named = _NAMED_SENDER.fullmatch(value.strip())
    name, addr_spec = (named["name"], named["address"].strip()) if named else ("", value.strip())
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return one_address(addr_spec, name)
