"""SSRF policy: which destination addresses are allowed."""

from __future__ import annotations

import ipaddress

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
        "224.0.0.1",
        "255.255.255.255",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeDestination):
        AddressPolicy().check("receiver.example", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::6810:84e5"])
def test_public_addresses_pass(address: str) -> None:
    AddressPolicy().check("receiver.example", ipaddress.ip_address(address))


def test_allow_list_by_network_and_by_host() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "cases.internal"])
    policy.check("localhost", ipaddress.ip_address("127.0.0.5"))
    policy.check("cases.internal", ipaddress.ip_address("10.0.0.7"))
    with pytest.raises(UnsafeDestination):
        policy.check("other.internal", ipaddress.ip_address("10.0.0.7"))
