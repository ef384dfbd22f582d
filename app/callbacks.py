"""Callback URLs: what a job's ``callback_url`` may be, and which addresses a webhook may reach.

Checked twice with the same rules (docs/security.md, Webhooks): by the API when a job is
created (422 ``callback_url_invalid``) and by the webhook dispatcher right before it
connects, on the addresses it then connects to (no second resolution, see
:mod:`app.webhooks`).

- **Syntax**: scheme ``http`` or ``https``, at most :data:`MAX_URL_LENGTH` characters, a
  host that encodes to IDNA (labels of at most 63 octets, at most 253 in all).
- **Addresses** (:func:`address_refusal`): link-local, multicast, unspecified, reserved,
  cloud metadata, CGNAT (100.64.0.0/10), 6to4 (2002::/16), Teredo (2001::/32), NAT64 and
  IPv4-mapped addresses around a refused IPv4 address are always refused; loopback only
  with ``webhook_allow_loopback`` (``service4ct serve`` sets it for development); any other
  non-global address (RFC 1918, ULA, …) only with ``webhook_allow_private``.

Torch- and httpx-free: the API imports it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from app.config import Settings

__all__ = [
    "MAX_URL_LENGTH",
    "AddressPolicy",
    "CallbackTarget",
    "CallbackURLError",
    "Resolver",
    "address_refusal",
    "check_callback_url",
    "policy_of",
    "redact_urls",
    "system_resolver",
]

MAX_URL_LENGTH = 2048
_MAX_HOST = 253
_MAX_LABEL = 63

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: host name, port → the IP addresses (text) it resolves to; raises OSError when it does not
Resolver = Callable[[str, int], list[str]]

_NET = ipaddress.ip_network
#: refused whatever the settings: link-local (cloud metadata lives there), CGNAT, tunnels, …
_ALWAYS_REFUSED = tuple(
    _NET(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # CGNAT: Alibaba's metadata 100.100.100.200, provider internals
        "169.254.0.0/16",  # link-local: 169.254.169.254 (AWS, GCP, Azure, OpenStack metadata)
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.192: Oracle Cloud metadata)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "::/96",  # IPv4-compatible (deprecated)
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: tunnels to an arbitrary IPv4 address
        "2002::/16",  # 6to4: idem
        "fd00:ec2::/32",  # AWS metadata over IPv6 (fd00:ec2::254) and its DNS
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
#: NAT64 prefixes: the address is judged by the IPv4 address it embeds (last 32 bits)
_NAT64 = (_NET("64:ff9b::/96"), _NET("64:ff9b:1::/48"))


class CallbackURLError(ValueError):
    """A callback URL or address refused by the policy (the message says why, never the URL)."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-global addresses a callback may reach (the always-refused ranges never)."""

    allow_loopback: bool = False
    allow_private: bool = False


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback: ASCII host, port, and the addresses it resolved to (all allowed)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def policy_of(settings: Settings) -> AddressPolicy:
    """The address policy of the settings (the API and the dispatcher use the same)."""
    return AddressPolicy(
        allow_loopback=settings.webhook_allow_loopback, allow_private=settings.webhook_allow_private
    )


def address_refusal(ip: IPAddress, policy: AddressPolicy) -> str | None:
    """None if a callback may connect to ``ip``, else the reason."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return address_refusal(mapped, policy)
        if any(ip in n for n in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            refusal = address_refusal(embedded, policy)
            return None if refusal is None else f"NAT64 address of a refused IPv4 address ({refusal})"
    if ip.is_loopback:  # before the table: ::1 lies in ::/96
        return None if policy.allow_loopback else f"callback address {ip} is loopback"
    if any(ip.version == n.version and ip in n for n in _ALWAYS_REFUSED):
        return f"callback address {ip} is link-local, metadata, CGNAT, multicast, reserved or a tunnel"
    if not ip.is_global:
        return None if policy.allow_private else f"callback address {ip} is not public"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ascii_host(host: str) -> str:
    """The host in ASCII (IDNA 2008, UTS 46 mapping), lengths checked; CallbackURLError if invalid."""
    host = host.rstrip(".")
    try:
        encoded = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as e:
        raise CallbackURLError(f"callback host is not a valid domain name ({e})") from None
    if len(encoded) > _MAX_HOST:
        raise CallbackURLError(f"callback host is longer than {_MAX_HOST} characters")
    if any(not label or len(label) > _MAX_LABEL for label in encoded.split(".")):
        raise CallbackURLError(f"callback host has an empty label or one longer than {_MAX_LABEL}")
    return encoded


def check_callback_url(
    url: str, policy: AddressPolicy, resolver: Resolver = system_resolver
) -> CallbackTarget:
    """Check ``url`` and the addresses of its host; the target to connect to, or CallbackURLError.

    The host is resolved once, with ``resolver``; every address it gives must be allowed
    (one refused address refuses the URL: a name that mixes public and internal addresses
    is how DNS rebinding is staged).
    """
    if len(url) > MAX_URL_LENGTH:
        raise CallbackURLError(f"callback URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        raw_host = parts.hostname
    except ValueError as e:
        raise CallbackURLError(f"callback URL does not parse ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise CallbackURLError("callback URL scheme must be http or https")
    if not raw_host:
        raise CallbackURLError("callback URL has no host")
    port = port if port is not None else (443 if scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(raw_host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        host, addresses = str(literal), [str(literal)]
    else:
        host = _ascii_host(raw_host)
        if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: never asks DNS
            addresses = ["127.0.0.1"]
        else:
            try:
                addresses = resolver(host, port)
            except (OSError, UnicodeError) as e:
                raise CallbackURLError(f"callback host does not resolve ({type(e).__name__})") from None
    if not addresses:
        raise CallbackURLError("callback host has no address")
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
        except ValueError:
            raise CallbackURLError("callback host resolved to something that is not an address") from None
        refusal = address_refusal(ip, policy)
        if refusal is not None:
            raise CallbackURLError(refusal)
    return CallbackTarget(scheme, host, port, tuple(addresses))


_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@?#]*@)?(?P<rest>[^\s?#]*)(?P<query>\?[^\s#]*)?(?P<frag>#\S*)?"
)


def _redact_match(m: re.Match[str]) -> str:
    userinfo = "***@" if m.group("userinfo") else ""
    query = "?…" if m.group("query") else ""
    return f"{m.group('scheme')}{userinfo}{m.group('rest')}{query}"


def redact_urls(text: str) -> str:
    """``text`` with every URL's user:password, query and fragment removed (what logs may show)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)
