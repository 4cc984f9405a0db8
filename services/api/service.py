"""The API as the platform runs it: no stream of its own, a server beside the agents."""

from __future__ import annotations

from collections.abc import Sequence

from facestream.config import Settings
from facestream.io.acls import Access
from facestream.io.kafka import TopicSpec
from facestream.runtime.service import Service
from facestream.services.api.cli import add_parsers
from facestream.services.api.server import ApiServer
from facestream.services.api.tokens import topic_spec


def _topics(settings: Settings) -> list[TopicSpec]:
    return [topic_spec(settings)]


def _server(settings: Settings, catalogue: Sequence[Service]) -> ApiServer:
    # Every service's operations, wherever its stage runs: they work on its topics, not its state.
    return ApiServer(settings, [s.routes(settings) for s in catalogue if s.routes is not None])


def _access(settings: Settings) -> Access:
    # The API serves every service's operations (gallery, subscriptions, deliveries, reviews,
    # audit): it reads what they list and writes the requests they make.
    reads = (
        "matches",
        "dlq",
        "crops",
        "api.tokens",
        "gallery",
        "gallery.keys",
        "gallery.receipts",
        "gallery.replicas",
        "subscriptions",
        "deliveries.log",
        "deliveries.subjects",
        "reviews",
        "audit",
        "audit.checkpoints",
    )
    writes = ("images", "api.tokens", "subscriptions", "gallery.requests", "reviews", "deliveries", "audit.entries")
    return Access(reads=reads, writes=writes)


SERVICE = Service("api", "", server=_server, topics=_topics, commands=add_parsers, access=_access)
