"""The API as a worker runs it: the token store, the outcomes, a producer and uvicorn, on the
worker's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn

from facestream import contracts
from facestream.api import Routes
from facestream.config import Settings
from facestream.io.kafka import close, producer
from facestream.ops.logs import get_logger
from facestream.runtime.tasks import cancel
from facestream.services.api.app import create_api
from facestream.services.api.outcomes import Outcomes
from facestream.services.api.tokens import TokenStore

log = get_logger(__name__)


class _Embedded(uvicorn.Server):
    # The worker owns the process's signals (faust stops every service on SIGTERM); uvicorn must
    # not take them over.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    def __init__(self, settings: Settings, routes: Sequence[Routes] = ()) -> None:
        self.settings = settings
        self.routes = list(routes)
        self.tokens = TokenStore(settings)
        self.outcomes = Outcomes(settings)
        self.producer = producer(settings)
        self.port: int | None = None
        self._server: _Embedded | None = None
        self._task: asyncio.Task[None] | None = None

    async def publish(self, event: dict[str, Any]) -> tuple[int, int]:
        sent = await self.producer.send_and_wait(
            self.settings.topic("images"),
            contracts.dumps(event),
            key=event["image_id"].encode(),
            headers=[("trace-id", event["trace_id"].encode())],
        )
        return sent.partition, sent.offset

    async def start(self) -> None:
        await self.tokens.start()
        await self.outcomes.start()
        await self.producer.start()
        for part in self.routes:
            for start in part.starts:
                await start()
        app = create_api(self.settings, self.tokens, self.publish, self.outcomes, [r.router for r in self.routes])
        sock = socket.create_server((self.settings.api_host, max(0, self.settings.api_port)))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False)
        self._server = _Embedded(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():  # noqa: ASYNC110 (uvicorn sets a flag)
            await asyncio.sleep(0.05)
        if self._task.done():
            self._task.result()  # raises what stopped it
        log.info("api_listening", host=self.settings.api_host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True  # finishes the requests in flight, then returns
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 10)
        await cancel(self._task)
        for part in self.routes:
            for stop in part.stops:
                with contextlib.suppress(Exception):
                    await stop()
        await self.outcomes.stop()
        await self.tokens.stop()
        await close(self.producer)
