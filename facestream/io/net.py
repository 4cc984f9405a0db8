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
import socket
from collections.abc import Iterable

import httpx

from facestream.errors import UnsafeDestination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressPolicy:
    """Which destination addresses are allowed. `allow` holds host names and CIDR networks."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in allow:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.hosts.add(item.lower().rstrip("."))

    @staticmethod
    def is_public(ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or not ip.is_global
        )

    def check(self, host: str, ip: IPAddress) -> None:
        if self.is_public(ip) or host.lower().rstrip(".") in self.hosts:
            return
        if any(ip in net for net in self.networks):
            return
        raise UnsafeDestination(f"{host} resolves to non-public address {ip}; not in allow_private")


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
            self.policy.check(host, ip)
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
    allow: Iterable[str], timeout: float, inner: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An httpx client that never follows redirects and enforces the SSRF policy."""
    return httpx.AsyncClient(
        transport=GuardedTransport(AddressPolicy(allow), inner),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
