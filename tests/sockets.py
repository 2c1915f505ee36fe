"""Listening TCP sockets of a process tree, for tests that check a run exposes nothing beyond loopback."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable

import psutil


def unmapped(ip: str) -> str:
    """`ip` with an IPv4-mapped IPv6 address ('::ffff:127.0.0.1', from a dual-stack socket) as plain IPv4."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return ip


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(unmapped(ip)).is_loopback


def listening_sockets(procs: Iterable[psutil.Process]) -> set[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket of `procs`; processes that exit are skipped."""
    found = set()
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            name = proc.name()
            sockets = proc.net_connections(kind="tcp")
            found |= {(proc.pid, name, c.laddr.ip, c.laddr.port) for c in sockets if c.status == psutil.CONN_LISTEN}
    return found
