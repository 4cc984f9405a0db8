"""Least privilege on a secured Kafka cluster: the ACLs each service's principal needs, derived
from what the service declares (`Service.access`) and the consumer groups it runs, and created
on the cluster (StandardAuthorizer) through the admin protocol.

A service's principal gets READ on the topics it consumes and on its groups, WRITE on the topics
it produces to, and nothing else: the detector's principal cannot read matches. Topics are made
by an administrator (`facestream kafka topics`), not by the services.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka.protocol.admin import CreateAclsRequest

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.io.kafka import admin_client, running

# Kafka's protocol codes (org.apache.kafka.common.acl / resource).
RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
OPERATION = {"read": 3, "write": 4, "create": 5, "describe": 8}
PATTERN = {"literal": 3, "prefixed": 4}
ALLOW = 3


@dataclass(frozen=True)
class Access:
    """What a service does on Kafka besides its consumer groups' reads (which the platform knows):
    topics it reads without a group (tables, lookups), topics it writes, names it writes to by
    prefix (topics made at run time), and transactional ids. Short topic names throughout."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    write_prefixes: tuple[str, ...] = ()  # topics made while running (each one also created)
    transactional_ids: tuple[str, ...] = ()  # full ids


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule for a principal, from any host."""

    resource: str
    name: str
    operation: str
    pattern: str = "literal"

    def line(self, principal: str) -> str:
        return f"{principal:24s} {self.operation:9s} {self.resource:16s} {self.pattern:8s} {self.name}"


def acl_set(settings: Settings, access: Iterable[Access], groups: dict[str, list[str]]) -> list[Acl]:
    """The rules for a principal that has each `access` and runs the consumer `groups` (group id:
    the full names of the topics it reads)."""
    rules: set[Acl] = set()
    for group, topics in groups.items():
        rules.add(Acl("group", group, "read"))
        rules.update(Acl("topic", topic, "read") for topic in topics)
    for a in access:
        rules.update(Acl("topic", settings.topic(t), "read") for t in a.reads)
        rules.update(Acl("topic", settings.topic(t), "write") for t in a.writes)
        for prefix in a.write_prefixes:
            for operation in ("write", "create", "describe"):
                rules.add(Acl("topic", settings.topic(prefix), operation, "prefixed"))
        rules.update(Acl("transactional_id", t, "write") for t in a.transactional_ids)
    return sorted(rules)


async def create_acls(settings: Settings, principal: str, rules: Sequence[Acl]) -> int:
    """Create `rules` for `principal` (User:NAME) on the cluster, as the settings' principal (an
    administrator); returns how many. Creating a rule that exists changes nothing."""
    async with running(admin_client(settings)) as admin:
        for rule in rules:
            request = CreateAclsRequest(
                RESOURCE[rule.resource],
                rule.name,
                PATTERN[rule.pattern],
                principal,
                "*",
                OPERATION[rule.operation],
                ALLOW,
            )
            # aiokafka's admin client has no ACL call of its own; its request types are complete.
            response = await admin._send_request(request)
            for code, message in response.creation_responses:
                if code:
                    raise ConfigError(
                        f"the cluster refused the ACL `{rule.line(principal).strip()}`: {message or f'error {code}'} "
                        "(ACLs need brokers with an authorizer, and an administrator's settings to create them)"
                    )
    return len(rules)
