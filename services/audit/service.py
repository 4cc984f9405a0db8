"""The audit as the platform runs it: the sequencer as a server beside the agents (one holds
the chain at a time), its commands and its API operations. Its topics are the platform's (every
part writes entries): see facestream.io.kafka.audit_topics."""

from __future__ import annotations

from collections.abc import Sequence

from facestream.audit import ENTRIES
from facestream.config import Settings
from facestream.io.acls import Access
from facestream.runtime.service import Service
from facestream.services.audit.cli import add_parsers
from facestream.services.audit.routes import routes
from facestream.services.audit.sequencer import Sequencer


def _server(settings: Settings, catalogue: Sequence[Service]) -> Sequencer:
    return Sequencer(settings)


def _groups(settings: Settings) -> dict[str, list[str]]:
    return {f"{settings.app_id}-audit": [settings.topic(ENTRIES)]}


def _access(settings: Settings) -> Access:
    chain = ("audit", "audit.checkpoints")
    return Access(
        reads=chain,
        writes=(*chain, "dlq"),
        transactional_ids=(f"{settings.app_id}-audit-sequencer",),
    )


SERVICE = Service("audit", "", server=_server, groups=_groups, commands=add_parsers, routes=routes, access=_access)
