"""The API as the platform runs it: no stream of its own, a server beside the agents."""

from __future__ import annotations

from facestream.config import Settings
from facestream.io.kafka import TopicSpec
from facestream.runtime.service import Service
from facestream.services.api.cli import add_parsers
from facestream.services.api.server import ApiServer
from facestream.services.api.tokens import topic_spec


def _topics(settings: Settings) -> list[TopicSpec]:
    return [topic_spec(settings)]


def _server(settings: Settings) -> ApiServer:
    return ApiServer(settings)


SERVICE = Service("api", "", server=_server, topics=_topics, commands=add_parsers)
