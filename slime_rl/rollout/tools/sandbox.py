"""Run one tool command in a confined child process and turn every outcome into a `ToolResult`.

Owns the per-call lifecycle: a fresh temporary working directory (removed afterwards), a minimal
environment, the wall-clock limit (the whole process group is killed by PID), the output cap (at most
`max_output_bytes` are ever read, then the group is killed) and the classification of failures.
The kernel mechanisms (network block, rlimits) live in `isolation.py`.

No network, as measured here (Linux 6.18, root in a Docker container, Python 3.11): both mechanisms of
`isolation.py` work. In the user+network namespace a connect to a server on the host's 127.0.0.1 fails with
ENETUNREACH, but a root-owned filesystem Unix socket was still reachable; the seccomp filter closes that gap
(socket() fails with EPERM). The sandbox applies every mechanism the kernel allows, probed once per
`Sandbox` at first use (`isolation()`). Where neither works it refuses to run tools (error kind
`isolation_unavailable`; `check_isolation()` raises `ConfigError` for startup) unless
`tools.require_network_isolation=false`, which runs them with the host's network.

How failures are told apart: timeout and output cap are decided here; SIGXCPU counts as a timeout; a
nonzero exit is `memory` when stderr shows MemoryError (Python) or ENOMEM, `network` when it shows a blocked
socket, else `crash`. The labels are best effort; the limits themselves are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slime_rl.config.tools import ToolsConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.tools.base import ToolResult
from slime_rl.rollout.tools.isolation import Confinement

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 65536
_STDERR_TAIL_CHARS = 800  # of a failed tool's stderr, shown to the policy
_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc")
# ENETUNREACH inside the namespace, a failed name lookup, or the seccomp filter's EPERM from socket().
_NETWORK_SIGNS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known")


@dataclass(frozen=True, slots=True)
class IsolationSupport:
    """Which network-blocking mechanisms this kernel allowed, measured by starting a child with each."""

    has_network_namespace: bool
    has_seccomp: bool

    @property
    def is_isolated(self) -> bool:
        return self.has_network_namespace or self.has_seccomp

    def describe(self) -> str:
        if not self.is_isolated:
            return "neither a user+network namespace nor a seccomp filter could be set up"
        parts = ["user+network namespace"] * self.has_network_namespace + ["seccomp socket filter"] * self.has_seccomp
        return " and ".join(parts)


class Sandbox:
    """Runs commands under the limits of one `ToolsConfig`. Safe to share between concurrent calls."""

    def __init__(self, cfg: ToolsConfig) -> None:
        self._cfg = cfg
        self._support: IsolationSupport | None = None
        self._probe_lock = asyncio.Lock()

    async def isolation(self) -> IsolationSupport:
        """Probe the mechanisms once (a trivial child each), then answer from the cached result."""
        async with self._probe_lock:
            if self._support is None:
                self._support = IsolationSupport(
                    has_network_namespace=await self._starts(use_network_namespace=True, use_seccomp=False),
                    has_seccomp=await self._starts(use_network_namespace=False, use_seccomp=True),
                )
                logger.info("tool sandbox network block: %s", self._support.describe())
            return self._support

    async def check_isolation(self) -> IsolationSupport:
        """Raise `ConfigError` at startup when tools would run without a network block but must not."""
        support = await self.isolation()
        if self._cfg.require_network_isolation and not support.is_isolated:
            raise ConfigError(_isolation_message(support))
        return support

    async def run(self, argv: Sequence[str], *, files: Mapping[str, str] | None = None) -> ToolResult:
        """Run `argv` in a fresh temporary directory holding `files` (name -> text); never raises."""
        start = time.monotonic()
        support = await self.isolation()
        if not support.is_isolated and self._cfg.require_network_isolation:
            return ToolResult.failure("isolation_unavailable", _isolation_message(support))
        workdir = Path(tempfile.mkdtemp(prefix="slime-rl-tool-"))
        try:
            for name, text in (files or {}).items():
                (workdir / name).write_text(text)
            confinement = self._confinement(support.has_network_namespace, support.has_seccomp)
            result = await self._run_in(argv, workdir, confinement)
        finally:
            _remove_tree(workdir)
        result.seconds = time.monotonic() - start
        return result

    def _confinement(self, use_network_namespace: bool, use_seccomp: bool) -> Confinement:
        cfg = self._cfg
        return Confinement(
            memory_bytes=cfg.memory_mb << 20,
            cpu_s=math.ceil(cfg.timeout_s) + 1,
            file_bytes=cfg.max_file_mb << 20,
            use_network_namespace=use_network_namespace,
            use_seccomp=use_seccomp,
        )

    async def _starts(self, *, use_network_namespace: bool, use_seccomp: bool) -> bool:
        try:
            confinement = self._confinement(use_network_namespace, use_seccomp)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", "", preexec_fn=confinement, env=_minimal_env("/")
            )
        except (OSError, subprocess.SubprocessError) as err:
            logger.info("tool sandbox: the kernel refused %s (%s)", _mechanism(use_network_namespace), err)
            return False
        return await proc.wait() == 0

    async def _run_in(self, argv: Sequence[str], workdir: Path, confinement: Confinement) -> ToolResult:
        cfg = self._cfg
        # Our own pipes, read with add_reader: asyncio's pipe transports would make `proc.wait()` wait for
        # EOF on streams we stopped reading at the output cap, which never comes.
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        capture = _Capture(out_read, err_read, limit_bytes=cfg.max_output_bytes)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                cwd=workdir,
                env=_minimal_env(str(workdir)),
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=confinement,
            )
        except (OSError, subprocess.SubprocessError) as err:
            capture.close()
            return ToolResult.failure("crash", f"the tool could not be started: {err}")
        finally:
            os.close(out_write)
            os.close(err_write)
        failure: ToolResult | None = None
        try:
            async with asyncio.timeout(cfg.timeout_s):
                await capture.finished
                if not capture.is_over_limit:
                    await proc.wait()
        except TimeoutError:
            failure = ToolResult.failure("timeout", f"no result within {cfg.timeout_s:g} s; the tool was killed")
        finally:
            _kill_group(proc.pid)
            capture.close()
            await proc.wait()
        stdout = capture.text(out_read)
        if failure is None and capture.is_over_limit:
            failure = ToolResult.failure(
                "output_limit", f"wrote more than {cfg.max_output_bytes} bytes of output; the tool was killed"
            )
        if failure is not None:
            failure.output = stdout
            return failure
        return _classify(proc.returncode, stdout, capture.text(err_read), cfg)


class _Capture:
    """Reads a child's pipes on the event loop until EOF on all of them or until `limit_bytes` in total."""

    def __init__(self, *fds: int, limit_bytes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._buffers = {fd: bytearray() for fd in fds}
        self._open = set(fds)
        self._remaining = limit_bytes
        self.is_over_limit = False
        self.finished: asyncio.Future[None] = self._loop.create_future()
        for fd in fds:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._read, fd)

    def text(self, fd: int) -> str:
        return self._buffers[fd].decode(errors="replace")

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, min(_CHUNK_BYTES, self._remaining + 1))
        except BlockingIOError:
            return
        if len(chunk) > self._remaining:  # never keeps more than the limit, whatever the tool writes
            self._buffers[fd] += chunk[: self._remaining]
            self.is_over_limit = True
            self._finish()
            return
        self._buffers[fd] += chunk
        self._remaining -= len(chunk)
        if not chunk:
            self._loop.remove_reader(fd)
            self._open.discard(fd)
            if not self._open:
                self._finish()

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def close(self) -> None:
        for fd in self._buffers:
            self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)


def _classify(returncode: int | None, stdout: str, stderr: str, cfg: ToolsConfig) -> ToolResult:
    if returncode == 0:
        return ToolResult(is_ok=True, output=stdout)
    tail = stderr[-_STDERR_TAIL_CHARS:].strip()
    if returncode is not None and returncode < 0:
        if -returncode == signal.SIGXCPU:
            return ToolResult.failure("timeout", f"used more than {math.ceil(cfg.timeout_s)} s of CPU", output=stdout)
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return ToolResult.failure("crash", f"killed by {name}. {tail}".strip(), output=stdout)
    if any(sign in tail for sign in _MEMORY_SIGNS):
        return ToolResult.failure("memory", f"out of memory (limit {cfg.memory_mb} MiB). {tail}", output=stdout)
    if any(sign in tail for sign in _NETWORK_SIGNS) or ("socket" in tail and "Operation not permitted" in tail):
        return ToolResult.failure("network", f"network access is blocked in the sandbox. {tail}", output=stdout)
    return ToolResult.failure("crash", f"exit code {returncode}. {tail}".strip(), output=stdout)


def _kill_group(pgid: int) -> None:
    # The leader's PID is the group's id (start_new_session); seccomp stops members from leaving the group.
    # After a clean exit the group is normally empty (ESRCH); a PID is reused only after the counter wraps.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _minimal_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as err:
        logger.warning("could not remove the tool's temporary directory %s: %s", path, err)


def _mechanism(use_network_namespace: bool) -> str:
    return "unshare(CLONE_NEWUSER | CLONE_NEWNET)" if use_network_namespace else "a seccomp filter"


def _isolation_message(support: IsolationSupport) -> str:
    return (
        f"the tool sandbox cannot block the network here: {support.describe()} (user namespaces disabled, "
        "or seccomp refused); set tools.require_network_isolation=false to run tools with network access"
    )
