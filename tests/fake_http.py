"""A scripted HTTP server on 127.0.0.1 for client tests: `async with serve(handler) as url: ...`.

`handler(request: httpx.Request) -> httpx.Response` (sync or async) answers every request; httpx's types are
only the value types a test writes its answers in. A handler that raises `httpx.ConnectError` makes the server
drop the connection without an answer, as an engine does when it dies under a request.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from aiohttp import web

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Serve `handler` on a free port of 127.0.0.1 until the block ends; yields the base URL."""

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        as_httpx = httpx.Request(request.method, str(request.url), content=await request.read())
        try:
            response = handler(as_httpx)
            if inspect.isawaitable(response):
                response = await response
        except httpx.ConnectError:
            assert request.transport is not None
            request.transport.close()  # no answer: the client sees the connection closed
            return web.Response()
        headers = {"Content-Type": response.headers.get("content-type", "application/json")}
        return web.Response(status=response.status_code, body=response.content, headers=headers)

    runner = web.ServerRunner(web.Server(answer), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
