"""Tool-use settings (`tools` group): sandbox limits, the tagged call format and the registered tools.

This module only validates values. Tools are resolved in `slime_rl.rollout.tools.registry`, so a bad
`module:function` path fails there (still at startup, still as a one-line `ConfigError`).
"""

from dataclasses import dataclass, field

from slime_rl.errors import ConfigError

BUILTIN_TOOLS = ("calculator", "python")


def _default_tools() -> dict[str, str]:
    return {name: name for name in BUILTIN_TOOLS}


@dataclass
class ToolsConfig:
    timeout_s: float = 10.0  # wall-clock seconds per sandboxed tool call; the process group is killed after it
    memory_mb: int = 512  # address-space limit of a sandboxed tool (RLIMIT_AS), MiB
    max_output_bytes: int = 16384  # bytes of stdout + stderr read from a tool before it is killed
    max_file_mb: int = 16  # largest file a sandboxed tool may write (RLIMIT_FSIZE), MiB
    require_network_isolation: bool = True  # refuse to run sandboxed tools where no network block works
    max_tool_calls: int = 8  # tool calls per sample; the multi-turn loop stops calling tools after this many
    call_open_tag: str = "<tool>"  # a call is `<tool>NAME: ARGUMENTS</tool>`
    call_close_tag: str = "</tool>"
    answer_open_tag: str = "<answer>"  # the final answer ends the conversation
    answer_close_tag: str = "</answer>"
    result_open_tag: str = "<result>"  # a tool's output is appended as `<result>TEXT</result>`
    result_close_tag: str = "</result>"
    # Tool name the policy writes -> "calculator", "python" (built-ins) or "package.module:function".
    registered: dict[str, str] = field(default_factory=_default_tools)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"tools.timeout_s must be > 0 seconds, got {self.timeout_s}")
        # Below about 64 MiB of address space the Python interpreter of the `python` tool cannot start.
        if self.memory_mb < 64:
            raise ConfigError(f"tools.memory_mb must be >= 64 MiB, got {self.memory_mb}")
        for key in ("max_output_bytes", "max_file_mb", "max_tool_calls"):
            if getattr(self, key) < 1:
                raise ConfigError(f"tools.{key} must be >= 1, got {getattr(self, key)}")
        for kind in ("call", "answer", "result"):
            open_tag, close_tag = getattr(self, f"{kind}_open_tag"), getattr(self, f"{kind}_close_tag")
            if not open_tag or not close_tag or open_tag == close_tag:
                raise ConfigError(
                    f"tools.{kind}_open_tag={open_tag!r} and tools.{kind}_close_tag={close_tag!r} must be "
                    "non-empty and different, e.g. '<tool>' and '</tool>'"
                )
        if self.call_open_tag == self.answer_open_tag:
            raise ConfigError(f"tools.call_open_tag and tools.answer_open_tag are both {self.call_open_tag!r}")
        for name, spec in self.registered.items():
            if not name or ":" in name or name != name.strip() or any(c.isspace() for c in name):
                raise ConfigError(
                    f"tools.registered has the tool name {name!r}; a name is one word without ':' or spaces"
                )
            if spec not in BUILTIN_TOOLS and spec.count(":") != 1:
                raise ConfigError(
                    f"tools.registered.{name}={spec!r} is unknown; choose one of {list(BUILTIN_TOOLS)} "
                    "or 'package.module:function'"
                )
