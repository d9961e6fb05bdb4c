"""Refuse to send webhooks into our own network (SSRF), unless ops allow it explicitly.

A webhook URL is configuration someone typed, and a host name can resolve to
anything: 169.254.169.254 (cloud metadata), 127.0.0.1 (the hub's own admin
API), a database on 10.x. The guard resolves the host, refuses the
non-public addresses that are not allowlisted, and the send then connects
to the address it vetted (not to the name again), so a DNS answer that
changes between the check and the connect (rebinding) cannot slip past.

A vetted address is reused for `PIN_TTL_SECONDS`, as a resolver's cache
would keep it, and then the host is resolved and checked again: a send
only ever connects to an address the guard checked, and an answer that
turns private is refused from the first send after the entry expires.
Refusals and failed lookups are not kept, so a fixed record counts at
once. A URL whose host is an IP address has nothing to rebind: its target
is vetted once and kept.

A host name may resolve to several permitted addresses (a receiver behind
two load balancers, IPv6 and IPv4): the target keeps them all, in the
resolver's order, so a send whose first address refuses the connection
tries the next, as a client connecting by name would. Only permitted ones
are kept: a private address in the answer is never tried unless allowlisted.

An IPv6 address that carries an IPv4 one (IPv4-mapped and -compatible,
NAT64's 64:ff9b::/96, 6to4's 2002::/16) reaches that IPv4 address, so it is
judged as that address: on an IPv6-only network with DNS64, an AAAA record
64:ff9b::a00:5 is 10.0.0.5. Python counts these (and deprecated site-local
fec0::/10) as global.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# How long a host name's vetted address is reused before it is resolved and checked again. Short: a
# receiver that moves is followed within seconds, and a record turned private is refused as soon.
PIN_TTL_SECONDS = 5.0
# IPv6 ranges whose last 32 bits are the IPv4 address a packet goes to: NAT64's well-known prefix (RFC 6052),
# and IPv4-compatible addresses (RFC 4291 2.5.5.1, deprecated; :: and ::1 are not among them).
_LAST_32_BITS_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
_NOT_IPV4_COMPATIBLE = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))
# Never public, whatever Python says: the local-use NAT64 prefix (RFC 8215), where the IPv4 address sits
# wherever the operator's prefix length puts it (RFC 6052 2.2), so it cannot be read out and judged; and
# site-local (RFC 3879), private addressing by another name.
_NEVER_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))


class AddressRefused(Exception):
    """The URL's host resolves only to addresses the guard may not connect to."""


@dataclass(frozen=True)
class PinnedTarget:
    """Where to connect for a vetted URL: the request URL on the address, plus Host and SNI for the name; `others`
    are the request URL on the host's other permitted addresses, to try in turn when `url` refuses the connection."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, str]
    others: tuple[httpx.URL, ...] = ()

    @property
    def urls(self) -> tuple[httpx.URL, ...]:
        """Every vetted address's request URL, in the order to try them."""
        return (self.url, *self.others)


def parse_networks(entries: Iterable[str]) -> list[IPNetwork]:
    """The allowlist's entries as networks (an address is a network of one); blank entries are skipped.

    Raises:
        ValueError: naming the first entry that is no IP address or network.
    """
    networks = []
    for entry in filter(str.strip, entries):
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8, ::1)") from None
    return networks


class SsrfGuard:
    """Vets URLs against an allowlist of networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``).

    Public unicast addresses are always allowed; private, loopback,
    link-local, multicast, reserved and unspecified ones only when an
    allowlisted network contains them. An IPv6 address embedding an IPv4 one
    is allowed when it is allowlisted itself, or when the IPv4 address is.
    """

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed = parse_networks(allowed_networks)
        self._vetted: dict[str, tuple[float, PinnedTarget]] = {}  # url -> (monotonic expiry, target); inf for an address

    def vetted(self, url: str) -> PinnedTarget | None:
        """The target `pin` vetted for `url` while it is fresh, without asking DNS; None when it must pin again."""
        entry = self._vetted.get(url)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def permits(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed):
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return self.permits(embedded)
        if any(address in network for network in _NEVER_PUBLIC):
            return False
        return address.is_global and not address.is_multicast

    def pin(self, url: str) -> PinnedTarget:
        """The request target for `url` on its permitted addresses: the vetted one while fresh, else resolved now.

        Raises:
            AddressRefused: every address of the host is non-public and not allowlisted.
            OSError: the host name does not resolve (socket.gaierror).
        """
        return self.vetted(url) or self._pin_now(url)

    def _pin_now(self, url: str) -> PinnedTarget:
        parsed = _parse(url)
        host = _host(parsed)
        literal = _is_address(host)
        addresses = _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        permitted = [address for address in addresses if self.permits(address)]
        if not permitted:
            shown = ", ".join(sorted({str(address) for address in addresses}))
            raise AddressRefused(
                f"{host} resolves to {shown}: not a public address; allowlist it in HUB_WEBHOOK_ALLOWED_NETWORKS if intended"
            )
        headers = {"Host": _host_header(host, parsed.port)}
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        first, *others = (_on_address(parsed, str(address)) for address in dict.fromkeys(permitted))
        target = PinnedTarget(first, headers, extensions, tuple(others))
        expires = float("inf") if literal else time.monotonic() + PIN_TTL_SECONDS
        self._vetted[url] = (expires, target)
        return target


# Parsing a URL costs more CPU than a send's signing; a destination pins the same URL on every send,
# and only the resolution may change (kept for `PIN_TTL_SECONDS` at most, by the guard that vetted it).
@functools.lru_cache(maxsize=1024)
def _parse(url: str) -> httpx.URL:
    return httpx.URL(url)


@functools.lru_cache(maxsize=1024)
def _on_address(url: httpx.URL, address: str) -> httpx.URL:
    return url.copy_with(host=address)


def _host_header(host: str, port: int | None) -> str:
    """Host = uri-host [":" port] (RFC 9110 7.2): an IPv6 address in brackets; `port` None when the scheme's default."""
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 `address` reaches, when it carries one."""
    if address.version == 4:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _LAST_32_BITS_IPV4) and address not in _NOT_IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def check_url(url: str) -> None:
    """Refuse a URL no send could go to, when it is configured: the guard parses it with httpx, and aiohttp (the
    engine's client, through yarl) refuses a port past 65535 at every send. Unchecked, httpx's InvalidURL from a
    destination's constructor stopped the hub at start with a traceback naming no setting.

    Raises:
        ValueError: the reason, and what to write instead.
    """
    try:
        parsed = _parse(url)
        _host(parsed)
    except httpx.InvalidURL as exc:
        raise ValueError(
            f"{exc}; write it as scheme://host[:port]/path, an IPv6 address in brackets, e.g. https://chat.example.com/hooks"
        ) from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"port {parsed.port} is out of range; use 1 to 65535")


def needs_lookup(url: str) -> bool:
    """Whether pinning `url` asks DNS (a host name), which blocks; an IP address is pinned at once."""
    return not _is_address(_host(_parse(url)))


def _host(parsed: httpx.URL) -> str:
    """The URL's host as DNS, Host and SNI want it: an IDN as its ASCII (punycode) name."""
    return parsed.raw_host.decode("ascii")


def _is_address(host: str) -> bool:
    try:
        _ip(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _ip(text: str) -> IPAddress:
    """`ipaddress.ip_address`, parsed once per text: a URL's host and its resolver's answers repeat send after send."""
    return ipaddress.ip_address(text)


def _resolve(host: str, port: int) -> list[IPAddress]:
    if _is_address(host):
        return [_ip(host)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [_ip(info[4][0].split("%")[0]) for info in infos]
