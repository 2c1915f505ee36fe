"""The tool plug-in interface: `Tool` (an async call on the argument string) and its `ToolResult`.

A tool never raises into the run: every failure, including a limit the sandbox enforced, comes back as
a `ToolResult` with `is_ok=False`, whose `policy_text()` the multi-turn loop shows to the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# timeout: wall-clock limit; memory: address-space limit; output_limit: too many stdout/stderr bytes;
# network: the tool tried the network, which the sandbox blocks; crash: nonzero exit or a signal;
# bad_input: the arguments were rejected before running; isolation_unavailable: no network block works here,
# so the sandbox refused to start the tool; unknown_tool: the policy named a tool that is not registered.
ErrorKind = Literal[
    "timeout", "memory", "output_limit", "network", "crash", "bad_input", "isolation_unavailable", "unknown_tool"
]


@dataclass(slots=True, kw_only=True)
class ToolResult:
    """What one tool call produced. `error_kind` is None exactly when `is_ok`."""

    is_ok: bool
    output: str  # the tool's output (stdout for a process); may be partial when not `is_ok`
    error_kind: ErrorKind | None = None
    message: str = ""  # one line or a short traceback tail saying what went wrong; empty when `is_ok`
    seconds: float = 0.0  # wall-clock seconds the call took

    def __post_init__(self) -> None:
        if self.is_ok != (self.error_kind is None):
            raise ValueError(f"ToolResult: error_kind={self.error_kind!r} does not match is_ok={self.is_ok}")

    def policy_text(self) -> str:
        """The text shown to the policy: the output, or the error kind and message."""
        if self.is_ok:
            return self.output
        return f"error ({self.error_kind}): {self.message}"

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, *, output: str = "", seconds: float = 0.0) -> ToolResult:
        return cls(is_ok=False, output=output, error_kind=kind, message=message, seconds=seconds)


class Tool(Protocol):
    """One tool the policy can call by name. `arguments` is the text the policy wrote after `NAME:`."""

    async def __call__(self, arguments: str) -> ToolResult: ...
