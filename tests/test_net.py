"""SSRF policy: which destination addresses are allowed."""

from __future__ import annotations

import ipaddress
import re

import pytest

from facestream.errors import UnsafeDestination
from facestream.io.net import AddressPolicy


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",  # noqa: S104 (an address under test, not a bind)
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254 (cloud metadata)
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo: the client inside is obfuscated
        "::7f00:1",  # IPv4-compatible (deprecated) 127.0.0.1
        "224.0.0.1",
        "255.255.255.255",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeDestination):
        AddressPolicy().check("receiver.example", ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "2606:4700::6810:84e5", "2002:5db8:d70e::1", "64:ff9b::5db8:d70e"],  # 6to4/NAT64 of public
)
def test_public_addresses_pass(address: str) -> None:
    AddressPolicy().check("receiver.example", ipaddress.ip_address(address))


def test_allow_list_by_network_and_by_host() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "cases.internal"])
    policy.check("localhost", ipaddress.ip_address("127.0.0.5"))
    policy.check("cases.internal", ipaddress.ip_address("10.0.0.7"))
    with pytest.raises(UnsafeDestination):
        policy.check("other.internal", ipaddress.ip_address("10.0.0.7"))


def test_allow_list_by_host_and_port() -> None:
    """An entry with a port allows that port only: allowing a receiver's endpoint does not open
    every other port on its host."""
    policy = AddressPolicy(["127.0.0.1:8443", "hooks.internal:443", "[::1]:9000"], "webhook_allow_private")
    policy.check("127.0.0.1", ipaddress.ip_address("127.0.0.1"), 8443)
    policy.check("hooks.internal", ipaddress.ip_address("10.1.1.1"), 443)
    policy.check("::1", ipaddress.ip_address("::1"), 9000)
    for host, ip, port in [("127.0.0.1", "127.0.0.1", 6379), ("hooks.internal", "10.1.1.1", 22), ("::1", "::1", 22)]:
        with pytest.raises(UnsafeDestination, match="not in webhook_allow_private"):
            policy.check(host, ipaddress.ip_address(ip), port)


@pytest.mark.parametrize("entry", ["not a host!", "127.0.0.1:http", "host:0", "[::1]:70000"])
def test_bad_allow_list_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        AddressPolicy([entry])
