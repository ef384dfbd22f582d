"""Callback URL policy and the pinned transport: refusals happen before any connection.

No test here opens a socket: resolvers are stubs and the transport under
:class:`PinnedTransport` is an ``httpx.MockTransport`` that records what would be sent.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from app.callbacks import (
    AddressPolicy,
    CallbackURLError,
    address_refusal,
    check_callback_url,
    redact_urls,
)
from app.webhooks import PinnedTransport

STRICT = AddressPolicy()
DEV = AddressPolicy(allow_loopback=True)
PRIVATE = AddressPolicy(allow_loopback=True, allow_private=True)


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver called for {host}")


def _dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise OSError("NXDOMAIN")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


ALWAYS_REFUSED = [
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "169.254.0.1",
    "100.64.0.1",  # CGNAT
    "100.100.100.200",  # Alibaba metadata (in CGNAT)
    "192.0.0.192",  # Oracle Cloud metadata
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
    "::",
    "fe80::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
    "2002:0808:0808::1",  # 6to4 around a public address: refused too
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "::a9fe:a9fe",  # IPv4-compatible
    "ff02::1",
]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_metadata_link_local_cgnat_and_tunnels_are_refused_whatever_the_settings(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), PRIVATE) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"])
def test_loopback_only_when_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_refusal(ip, STRICT) is not None
    assert address_refusal(ip, AddressPolicy(allow_private=True)) is not None  # private ≠ loopback
    assert address_refusal(ip, DEV) is None


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "172.16.3.4", "192.168.1.10", "fd12:3456::1", "198.18.0.1", "64:ff9b::a00:5"]
)
def test_other_non_global_addresses_only_with_allow_private(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_refusal(ip, DEV) is not None
    assert address_refusal(ip, PRIVATE) is None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), STRICT) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("https:///nohost", "no host"),
        ("https://" + "a" * 64 + ".example/hook", "(?i)label"),
        ("https://" + ".".join(["a" * 60] * 5) + "/hook", "(?i)253|too long"),
        ("https://hooks.example/" + "x" * 2048, "2048"),
        ("https://bad_host!.example/", "domain name"),
        ("https://hooks.example:99999/", "parse"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.64.1.1/", "CGNAT"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://api.localhost/hook", "loopback"),
        ("http://127.0.0.1/hook", "loopback"),
        ("http://10.1.2.3/hook", "not public"),
    ],
)
def test_bad_callback_urls_are_refused_without_dns(url: str, why: str) -> None:
    with pytest.raises(CallbackURLError, match=why):
        check_callback_url(url, STRICT, _no_dns)


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    dns = _dns(
        {
            "hooks.example": ["93.184.216.34"],
            "mixed.example": ["93.184.216.34", "169.254.169.254"],  # one bad address refuses the name
            "metadata.example": ["169.254.169.254"],
            "decimal.example": ["127.0.0.1"],
        }
    )
    target = check_callback_url("https://user:pw@hooks.example/hook?x=1", STRICT, dns)
    assert (target.scheme, target.host, target.port, target.addresses) == (
        "https",
        "hooks.example",
        443,
        ("93.184.216.34",),
    )
    for name in ("mixed", "metadata", "decimal"):
        with pytest.raises(CallbackURLError):
            check_callback_url(f"https://{name}.example/", STRICT, dns)
    with pytest.raises(CallbackURLError, match="does not resolve"):
        check_callback_url("https://nowhere.example/", STRICT, dns)
    # an IDN is checked and resolved in its ASCII form
    idn = _dns({"xn--bcher-kva.example": ["93.184.216.34"]})
    assert check_callback_url("https://bücher.example/h", STRICT, idn).host == "xn--bcher-kva.example"


def _recording() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    return httpx.MockTransport(handler), seen


def test_the_transport_connects_to_the_checked_address_with_the_name_as_host_and_sni() -> None:
    inner, seen = _recording()
    dns = _dns({"hooks.example": ["93.184.216.34"]})
    with httpx.Client(transport=PinnedTransport(STRICT, dns, inner)) as c:
        r = c.post("https://hooks.example:8443/hook?sig=1", content=b"{}")
    assert r.status_code == 204
    (req,) = seen
    assert req.url.host == "93.184.216.34" and req.url.port == 8443 and req.url.path == "/hook"
    assert req.headers["host"] == "hooks.example:8443"
    assert req.extensions["sni_hostname"] == "hooks.example"  # TLS: SNI and certificate name
    assert dns.calls == ["hooks.example"]  # type: ignore[attr-defined]  # resolved once


def test_dns_rebinding_is_refused_before_any_connection() -> None:
    """The name resolves to a public address when the job is created, to an internal one later."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["169.254.169.254"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    check_callback_url("https://rebind.example/hook", STRICT, rebinding)  # at POST: fine
    inner, seen = _recording()
    with httpx.Client(transport=PinnedTransport(STRICT, rebinding, inner)) as c:
        for _ in range(2):
            with pytest.raises(CallbackURLError):
                c.post("https://rebind.example/hook", content=b"{}")
    assert seen == [] and len(calls) == 3  # one resolution per delivery, nothing sent


def test_urls_are_redacted_in_log_text() -> None:
    text = 'HTTP Request: POST https://bob:hunter2@hooks.example/cb?token=abc#frag "HTTP/1.1 200 OK"'
    out = redact_urls(text)
    assert "hunter2" not in out and "token" not in out and "bob" not in out
    assert out == 'HTTP Request: POST https://***@hooks.example/cb?… "HTTP/1.1 200 OK"'
    assert redact_urls("no url here") == "no url here"
    assert redact_urls("redis://:pw@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
