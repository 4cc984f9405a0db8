"""Running services as a faust worker (all four in one process, or any subset)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import faust

from facestream.config import Settings
from facestream.io.kafka import TopicSpec, ensure_topics
from facestream.ops.logs import configure, library_logging
from facestream.runtime.app import consumer_groups, create_app, leader_topic
from facestream.runtime.compute import model_executor
from facestream.runtime.service import Service, own_topics


def run(settings: Settings, services: Sequence[Service], catalogue: Sequence[Service], loglevel: str = "INFO") -> None:
    """Run `services` (out of `catalogue`, all there are) until stopped (SIGINT/SIGTERM)."""
    configure(loglevel, service="+".join(s.name for s in services))
    app_id = next(iter(consumer_groups(settings, services, catalogue)))
    leader = TopicSpec(leader_topic(app_id), 1)
    asyncio.run(ensure_topics(settings, [*own_topics(settings, catalogue), leader]))
    executor = model_executor(settings, services)
    app = create_app(settings, services, catalogue, executor)
    # faust creates only the last level of its data directory.
    os.makedirs(settings.data_dir / "faust", exist_ok=True)
    worker = faust.Worker(
        app, loglevel="WARNING", quiet=True, redirect_stdouts=False, logging_config=library_logging("WARNING")
    )
    # faust's terminal spinner sets the root logger to DEBUG (to spin on every record), which
    # makes every library debug call format a record: a measurable cost on the hot path.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
