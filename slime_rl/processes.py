"""Child processes that die with their parent, and free loopback ports.

Every server slime-rl starts (Redis, engines, the router) is spawned here: the child gets
PR_SET_PDEATHSIG=SIGKILL so it cannot outlive its parent even when the parent is SIGKILLed, and it is
stopped by PID, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], *, log_path: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` as a child that is killed when this process dies.

    Output is appended to `log_path` (its folder is created) or dropped.
    """
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    try:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
    finally:
        if log_path:
            out.close()


def log_tail(log_path: str | Path | None, num_lines: int = 30) -> str:
    """The last `num_lines` lines of a child's log, for error messages; says so when there is none."""
    if log_path is None:
        return "(no log: the process was started without a log_path)"
    path = Path(log_path)
    if not path.exists():
        return f"(no log at {path})"
    lines = path.read_text(errors="replace").splitlines()[-num_lines:]
    return "\n".join(lines) if lines else f"({path} is empty)"


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate a child by PID, killing it if it does not exit within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout_s)
        proc.kill()
        proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. Callers retry when a server still loses the race for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[psutil.Process]:
    """Process `pid` and all its descendants, parent first; empty if it is gone."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL process `pid` and every descendant, by PID, and wait for them (a run that must not linger)."""
    procs = process_tree(pid)
    for proc in reversed(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=timeout_s)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
