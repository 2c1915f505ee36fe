"""TCPStore servers that listen only on the address they are given.

torch's TCPStore server binds every interface whatever host it is given (`ss -ltnp` shows `*:port` for a
store created on 127.0.0.1), which would expose the trainer's rendezvous beyond loopback. A server built
here listens on a socket bound to `host` first and handed to torch (`master_listen_fd`), so a store on
127.0.0.1 is reachable from this machine only. The port is the socket's own: no race for a free port.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist


def listen_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket listening on `host:port` (0: a port of its own), for `store_server`."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    sock.listen()
    return sock


def store_server(
    listener: socket.socket, world_size: int, timeout: timedelta, *, wait_for_workers: bool = True
) -> dist.TCPStore:
    """The TCPStore server (rank 0's side) on `listener`, which it takes over."""
    host, port = listener.getsockname()[:2]
    return dist.TCPStore(
        host,
        port,
        world_size,
        is_master=True,
        timeout=timeout,
        wait_for_workers=wait_for_workers,
        master_listen_fd=listener.detach(),
    )
