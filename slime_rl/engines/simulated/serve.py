"""Serve many simulated engines from one process: one uvicorn server per port, all on one event loop.

Owns the sockets, the servers and shutdown. Each engine gets the native engine's app (native/app.py)
over its own `SimulatedEngine`; the ports are bound here before serving (port 0: the OS picks a free one, no
race), and the URLs are printed as one JSON line and written to `urls_file` once every engine accepts
connections. SIGTERM or SIGINT stops all of them: pending requests end with finish reason abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from slime_rl.engines.native.app import build_app
from slime_rl.engines.simulated.engine import SimulatedEngine, SimulatedEngineArgs
from slime_rl.engines.simulated.lengths import ResponseLengths

logger = logging.getLogger(__name__)
_TICK_S = 1.0  # uvicorn's housekeeping period (its default, 0.1 s, costs CPU when hundreds of servers idle)


class _SharedLoopServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host and wakes once a second instead of ten times."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header when counter % 10 == 0
            await asyncio.sleep(_TICK_S)


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(
    args: SimulatedEngineArgs,
    *,
    host: str,
    num_engines: int,
    first_port: int = 0,
    ports: list[int] | None = None,
    urls_file: str | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve `num_engines` engines on `ports` (one each), else on ports `first_port`.. (0: free ports), until
    SIGTERM/SIGINT or cancellation."""
    if ports is not None and len(ports) != num_engines:
        raise ValueError(f"{num_engines} engines need {num_engines} ports, got {len(ports)}")
    lengths = (
        ResponseLengths.from_trace_file(args.length_trace_path, median=args.length_median, sigma=args.length_sigma)
        if args.length_trace_path
        else None
    )  # read once, shared: engines draw replayed lengths in turn whichever engine a request lands on
    if ports is None:
        ports = [first_port + i if first_port else 0 for i in range(num_engines)]
    sockets = [bind(host, port) for port in ports]
    engines = [SimulatedEngine(args, lengths) for _ in range(num_engines)]
    servers = []
    for engine in engines:
        engine.start()
        config = uvicorn.Config(
            build_app(engine),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=2,
        )
        servers.append(_SharedLoopServer(config))
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    tasks = [loop.create_task(server.serve(sockets=[sock])) for server, sock in zip(servers, sockets, strict=True)]
    try:
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):
                raise RuntimeError("a simulated engine's server failed to start; see the log above")
            await asyncio.sleep(0.05)
        urls = [f"http://{host}:{sock.getsockname()[1]}" for sock in sockets]
        if urls_file:
            tmp = Path(f"{urls_file}.tmp{os.getpid()}")
            tmp.write_text(json.dumps({"pid": os.getpid(), "urls": urls}))
            tmp.replace(urls_file)  # readers never see a half-written file
        if on_ready:
            on_ready(urls)
        logger.info("%d simulated engines serving on %s ... %s", num_engines, urls[0], urls[-1])
        await stop_event.wait()
    finally:
        for engine in engines:
            await engine.stop()  # pending requests answer with finish reason abort before the servers close
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
