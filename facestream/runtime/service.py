"""What a service tells the platform about itself.

The platform (agents, workers, topics, lag, the command line) knows no service by name: each
service describes itself with a `Service`, and `facestream.services` lists the four. A worker
runs the agents of the services it is given; `facestream lag` and the ops endpoint find the
consumer groups and topics to watch from the same descriptions.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from facestream.api import Routes
from facestream.config import Settings
from facestream.io.acls import Access
from facestream.io.kafka import TopicSpec
from facestream.runtime.stage import Stage

ModelLoader = Callable[[], object]


class Server(Protocol):
    """A service's server that runs beside the agents (the API): started with the worker, stopped
    with it."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _nothing(settings: Settings) -> Any:
    return None


def _no_topics(settings: Settings) -> list[TopicSpec]:
    return []


def _no_groups(settings: Settings) -> dict[str, list[str]]:
    return {}


def _no_scheduled(settings: Settings) -> list[str]:
    return []


def _no_access(settings: Settings) -> Access:
    return Access()


def _nothing_to_check(settings: Settings) -> None:
    return None


@dataclass(frozen=True)
class Service:
    """One stage of the pipeline as the platform sees it."""

    name: str
    # The pipeline topic its faust agent consumes (short name: images, faces, embeddings, matches);
    # empty for a service without a stream (the API).
    source: str
    # Builds the stage; model work goes to the executor (the worker's model processes).
    stage: Callable[[Settings, Executor], Stage] | None = None
    # What each model process loads before the first event (a picklable callable), or None when
    # this configuration needs no local model (the embedder on Triton).
    model_loader: Callable[[Settings], ModelLoader | None] = _nothing
    # Topics the service owns besides the pipeline's (created with them).
    topics: Callable[[Settings], list[TopicSpec]] = _no_topics
    # Consumer groups the service runs besides its agent's, with the full names of the topics each
    # reads: their lag is watched too.
    groups: Callable[[Settings], dict[str, list[str]]] = _no_groups
    # Topics of those groups whose records wait for a due time (`due_at`: the webhook retry
    # tiers), full names: records there before their time are scheduled work, not lag.
    scheduled: Callable[[Settings], list[str]] = _no_scheduled
    # Its records are independent of one another (no order among them matters): the agent works
    # on up to `records_in_flight` of them at once, each on its own, instead of a batch at a time.
    independent: bool = False
    # Adds the service's own commands to the `facestream` parser's subcommands.
    commands: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] | None = None
    # Its server, run beside the agents (the API), if it has one; given every service there is.
    server: Callable[[Settings, Sequence[Service]], Server] | None = None
    # Its operations in the HTTP API (facestream.api), served by whichever worker runs the API.
    routes: Callable[[Settings], Routes] | None = None
    # What it reads without a consumer group and writes on Kafka: its principal's ACLs
    # (facestream.io.acls) on a secured cluster.
    access: Callable[[Settings], Access] = _no_access
    # Lines for `facestream status`.
    status: Callable[[Settings], Awaitable[list[str]]] | None = field(default=None)
    # What `facestream config check` checks besides the settings themselves: the files the service
    # would read at start (raises ConfigError), so a wrong path is found before a worker starts.
    check: Callable[[Settings], None] = _nothing_to_check


def runnable(services: Sequence[Service]) -> list[Service]:
    """Those of `services` a worker runs something of (a stage or a server); the others (review)
    only add topics, commands and API operations."""
    return [s for s in services if s.stage is not None or s.server is not None]


def scheduled_topics(settings: Settings, services: Sequence[Service]) -> list[str]:
    """The topics of `services` whose records wait for a due time (full names)."""
    return [topic for service in services for topic in service.scheduled(settings)]


def own_topics(settings: Settings, services: Sequence[Service]) -> list[TopicSpec]:
    """The topics `services` own, besides the pipeline's (created with them)."""
    return [spec for service in services for spec in service.topics(settings)]
