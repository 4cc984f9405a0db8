"""Starting the small aiohttp servers facestream runs (operations, crop links, test receivers)."""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port; returns its runner and the port (the OS's choice for port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = cast(asyncio.Server | None, site._server)
    if server is not None and server.sockets:
        port = int(server.sockets[0].getsockname()[1])
    return runner, port
