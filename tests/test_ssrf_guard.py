"""The SSRF guard's verdicts on addresses: IPv6 forms that reach an IPv4 address are judged as that address.

Sends through the guard, and its allowlist in the simple cases, are tested in `test_webhook_destination.py`.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from connectors.destinations import ssrf
from connectors.destinations.ssrf import AddressRefused, SsrfGuard

# IPv6 addresses that reach a non-public IPv4 one, which Python's `is_global` calls global (all but the mapped one).
CARRYING_PRIVATE_IPV4 = {
    "nat64-metadata": "64:ff9b::a9fe:a9fe",  # 169.254.169.254 through DNS64/NAT64 (RFC 6052)
    "nat64-10.0.0.5": "64:ff9b::a00:5",
    "nat64-loopback": "64:ff9b::7f00:1",
    "6to4-metadata": "2002:a9fe:a9fe::1",  # 6to4 (RFC 3056) to 169.254.169.254
    "6to4-10.0.0.5": "2002:a00:5::1",
    "ipv4-compatible-10.0.0.5": "::10.0.0.5",  # RFC 4291 2.5.5.1 (deprecated)
    "ipv4-mapped-loopback": "::ffff:127.0.0.1",
}
NEVER_PUBLIC = {
    "nat64-local-use": "64:ff9b:1::a00:5",  # RFC 8215: where the IPv4 address sits depends on the operator's prefix
    "site-local": "fec0::1",  # RFC 3879, deprecated private addressing
}


def answering_aaaa(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    """Every host name resolves to the IPv6 `address` (no real DNS): what an attacker's AAAA record says."""
    monkeypatch.setattr(
        ssrf.socket, "getaddrinfo",
        lambda host, port, *_, **__: [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))],
    )


@pytest.mark.parametrize("address", [*CARRYING_PRIVATE_IPV4.values(), *NEVER_PUBLIC.values()],
                         ids=[*CARRYING_PRIVATE_IPV4, *NEVER_PUBLIC])
def test_an_ipv6_address_reaching_a_private_network_is_refused(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an IPv6-only subnet with DNS64/NAT64, an AAAA record 64:ff9b::a00:5 reaches 10.0.0.5; `is_global` took it
    for a public address. Refused as a URL's host and as a name's DNS answer (nothing is connected to here)."""
    answering_aaaa(monkeypatch, address)
    with pytest.raises(AddressRefused, match="not a public address"):
        SsrfGuard().pin("https://hooks.attacker.example/in")
    with pytest.raises(AddressRefused):
        SsrfGuard().pin(f"http://[{address}]/latest/meta-data")


@pytest.mark.parametrize("address", ["64:ff9b::5db8:d822", "2002:5db8:d822::1", "::ffff:93.184.216.34", "2606:2800:220:1::1"])
def test_an_ipv6_address_reaching_a_public_ipv4_one_is_permitted(address: str) -> None:
    """NAT64 is how an IPv6-only hub reaches an IPv4-only receiver: judged by the IPv4 address, it is public."""
    assert SsrfGuard().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("allowed", "address", "permitted"),
    [
        (["10.0.0.0/8"], "64:ff9b::a00:5", True),  # the IPv4 network it reaches is allowlisted
        (["10.0.0.0/8"], "2002:a00:5::1", True),
        (["10.0.0.0/8"], "64:ff9b::7f00:1", False),  # 127.0.0.1 is not in it
        (["64:ff9b::/96"], "64:ff9b::a00:5", True),  # the IPv6 address is allowlisted itself
        (["64:ff9b:1::/48"], "64:ff9b:1::a00:5", True),  # local-use NAT64: only by allowlisting it
        (["fec0::/10"], "fec0::1", True),
        (["::1"], "::1", True),
        ([], "::1", False),
    ],
    ids=["10/8-nat64", "10/8-6to4", "10/8-nat64-loopback", "nat64-prefix", "nat64-local-use", "site-local", "::1", "none"],
)
def test_the_allowlist_admits_an_embedding_address_or_the_ipv4_it_reaches(allowed: list[str], address: str, permitted: bool) -> None:
    assert SsrfGuard(allowed).permits(ipaddress.ip_address(address)) is permitted


@pytest.mark.parametrize(
    ("url", "host", "sni"),
    [
        ("http://[::1]:8080/in", "[::1]:8080", None),
        ("http://[::1]/in", "[::1]", None),
        ("https://[::1]:443/in", "[::1]", "::1"),  # the scheme's default port is left out
        ("https://xn--bcher-kva.example:8443/in", "xn--bcher-kva.example:8443", "xn--bcher-kva.example"),
        ("https://bücher.example/in", "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_the_host_header_and_sni_name_the_receiver_as_the_wire_wants(
    url: str, host: str, sni: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host = uri-host [":" port] (RFC 9110 7.2): an IPv6 address in brackets, an IDN in its ASCII form, which is
    what virtual hosts and certificates are named by."""
    answering_aaaa(monkeypatch, "::1")
    pinned = SsrfGuard(["::1"]).pin(url)
    assert pinned.headers == {"Host": host} and pinned.extensions.get("sni_hostname") == sni
    assert pinned.url.host == "::1"
