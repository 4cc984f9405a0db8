"""Outbound HTTP with SSRF protection, as an httpx transport.

Every URL we fetch (claim-check images) or post to (webhooks) goes through `GuardedTransport`:
it resolves the host itself, refuses loopback, private, link-local, multicast, reserved and
cloud-metadata addresses unless the allow-list names the host or a network containing the
address, and then connects to the address it checked (so DNS rebinding between check and
connect is impossible). Redirects are never followed by our clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable

import httpx

from facestream.errors import UnsafeDestination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries (IPv4-mapped, 6to4, NAT64 well-known
    prefix): such a destination is judged by the address it reaches, not by its IPv6 form."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_allowed(item: str) -> tuple[str | ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]:
    """One allow-list entry: a host name, an IP address or a CIDR network, each optionally with
    `:PORT` (`[v6]:PORT` for IPv6 addresses). Raises ValueError for anything else."""
    text, port = item.strip(), None
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", text)
    if bracketed:
        text, port = bracketed.group(1), int(bracketed.group(2)) if bracketed.group(2) else None
    elif text.count(":") == 1:  # host:port or v4:port (a bare IPv6 address has several colons)
        text, _, digits = text.partition(":")
        if not digits.isdigit():
            raise ValueError(f"{item!r}: the port must be a number")
        port = int(digits)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{item!r}: port out of range")
    try:
        return ipaddress.ip_network(text, strict=False), port
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text):
            raise ValueError(
                f"{item!r} is neither a host name nor an IP network (CIDR), with an optional :PORT"
            ) from None
        return text.lower().rstrip("."), port


class AddressPolicy:
    """Which destination addresses are allowed: public ones, and the loopback or private ones the
    allow-list (the setting named `setting`) names, by host name or network, and port if given."""

    def __init__(self, allow: Iterable[str] = (), setting: str = "the allow-list") -> None:
        self.setting = setting
        self.hosts: dict[str, set[int | None]] = {}
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        for item in allow:
            target, port = parse_allowed(item)
            if isinstance(target, str):
                self.hosts.setdefault(target, set()).add(port)
            else:
                self.networks.append((target, port))

    @staticmethod
    def is_public(ip: IPAddress) -> bool:
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
        elif isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
            return False  # the client address inside is obfuscated: never judge it public
        return not (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or not ip.is_global
        )

    def check(self, host: str, ip: IPAddress, port: int | None = None) -> None:
        """Raise `UnsafeDestination` unless `ip` (what `host` resolved to) may be reached on `port`."""
        if self.is_public(ip):
            return
        ports = self.hosts.get(host.lower().rstrip("."), set())
        if None in ports or port in ports:
            return
        if any(ip in net and allowed in (None, port) for net, allowed in self.networks):
            return
        where = f"{host}:{port}" if port is not None else host
        raise UnsafeDestination(f"{where} resolves to non-public address {ip}; not in {self.setting}")


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks the resolved address of every request against `policy`, then connects to it."""

    def __init__(self, policy: AddressPolicy, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = await resolve(host, port)
        for ip in addresses:
            self.policy.check(host, ip, port)
        ip = addresses[0]
        pinned = str(ip) if ip.version == 4 else f"[{ip}]"
        # Connect to the checked address; keep Host header and TLS SNI/verification on the name.
        request.url = request.url.copy_with(host=pinned)
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded_client(
    allow: Iterable[str], timeout: float, inner: httpx.AsyncBaseTransport | None = None, setting: str = "the allow-list"
) -> httpx.AsyncClient:
    """An httpx client that never follows redirects and enforces the SSRF policy (`allow`: the
    entries of the setting named `setting`)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(AddressPolicy(allow, setting), inner),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
