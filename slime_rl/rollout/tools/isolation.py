"""Confinement a sandboxed tool process applies to itself between fork and exec.

Owns the kernel mechanisms, each measured on Linux 6.18 as root inside a Docker container (and each
also available to an unprivileged user where the kernel allows unprivileged user namespaces):
- Network namespace: `unshare(CLONE_NEWUSER | CLONE_NEWNET)` gives the tool an empty network stack whose
  loopback is down: TCP/UDP to 127.0.0.1 or anywhere fails with ENETUNREACH, abstract Unix sockets of
  the host are invisible. The user namespace makes this work without privileges and drops the host
  capabilities the tool had (it runs as the overflow uid, so it cannot bring its loopback up either).
  Python 3.11 has no `os.unshare`, so libc's is called through ctypes.
- seccomp filter: `socket()` and `io_uring_setup()` fail with EPERM, so filesystem Unix sockets (which a
  network namespace does not hide: Ray's and Redis's sockets) are out of reach too; `setsid()` and
  `setpgid()` fail, so no process can leave the tool's process group and escape the group kill.
  `socketpair()` stays allowed (asyncio needs it and it reaches nothing). x86-64 and aarch64 only.
- rlimits: address space (RLIMIT_AS), CPU seconds (a backstop behind the wall-clock kill), file size,
  no core dumps; PR_SET_PDEATHSIG so the tool dies with the process that started it.

It deliberately does not isolate the filesystem: a tool can read what the calling user can read and
write what that user owns. The sandbox gives it a fresh temporary working directory, nothing more.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import struct

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# Classic BPF over `struct seccomp_data` (nr at offset 0, arch at offset 4).
_LOAD_WORD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JUMP_EQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JUMP_GE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RETURN = 0x06  # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_EPERM = 0x00050000 | errno.EPERM
_X32_SYSCALL_BIT = 0x40000000  # x86-64's x32 ABI: same calls under other numbers; deny them all

# machine -> (AUDIT_ARCH_*, numbers of socket, io_uring_setup, setsid, setpgid)
_DENIED_SYSCALLS = {
    "x86_64": (0xC000003E, (41, 425, 112, 109)),
    "aarch64": (0xC00000B7, (198, 425, 157, 154)),
}


def _seccomp_program() -> bytes | None:
    """The filter as packed `struct sock_filter` entries, or None on an architecture without a table."""
    if platform.machine() not in _DENIED_SYSCALLS:
        return None
    arch, numbers = _DENIED_SYSCALLS[platform.machine()]
    # Layout: [0] load arch, [1] arch ok? skip kill, [2] kill, [3] load nr, [4] x32 -> deny,
    # [5 .. 5+n) each denied number -> deny, [5+n] allow, [6+n] deny.
    deny_at = 6 + len(numbers)
    program = [
        (_LOAD_WORD, 0, 0, 4),
        (_JUMP_EQ, 1, 0, arch),
        (_RETURN, 0, 0, _RET_KILL_PROCESS),
        (_LOAD_WORD, 0, 0, 0),
        (_JUMP_GE, deny_at - 5, 0, _X32_SYSCALL_BIT),
    ]
    for i, number in enumerate(numbers):
        program.append((_JUMP_EQ, deny_at - (5 + i) - 1, 0, number))
    program += [(_RETURN, 0, 0, _RET_ALLOW), (_RETURN, 0, 0, _RET_EPERM)]
    return b"".join(struct.pack("HBBI", *entry) for entry in program)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Confinement:
    """Which mechanisms to apply and the limits; calling it (as `preexec_fn`) applies them in the child.

    Everything that may allocate or take a lock (loading libc, building the filter) happens here, before
    the fork: the child of a threaded parent must only make calls.
    """

    def __init__(
        self, *, memory_bytes: int, cpu_s: int, file_bytes: int, use_network_namespace: bool, use_seccomp: bool
    ) -> None:
        self.memory_bytes = memory_bytes  # RLIMIT_AS
        self.cpu_s = cpu_s  # RLIMIT_CPU, seconds
        self.file_bytes = file_bytes  # RLIMIT_FSIZE
        self.use_network_namespace = use_network_namespace
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fprog: _SockFprog | None = None
        if use_seccomp:
            program = _seccomp_program()
            if program is None:
                raise OSError(errno.ENOSYS, f"no seccomp syscall table for {platform.machine()}")
            self._filter = ctypes.create_string_buffer(program, len(program))  # kept alive for the child
            self._fprog = _SockFprog(len(program) // 8, ctypes.cast(self._filter, ctypes.c_void_p))

    def __call__(self) -> None:
        libc = self._libc
        if self.use_network_namespace and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
            _raise_errno("unshare(CLONE_NEWUSER | CLONE_NEWNET)")
        # Set after unshare: a credential change clears the parent-death signal.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if self._fprog is not None:
            if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                _raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")
            if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(self._fprog), 0, 0) != 0:
                _raise_errno("prctl(PR_SET_SECCOMP)")
        # The rlimits come last: until exec the child still has the parent's (possibly huge) address space.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_bytes, self.file_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))


def _raise_errno(call: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{call}: {os.strerror(code)}")
