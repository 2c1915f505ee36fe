"""Tools by name: the built-ins and `package.module:function` tools, resolved once when the run starts.

A custom tool is `async def fn(arguments: str) -> ToolResult`. It runs in-process (it is the user's own
code); one that needs isolation runs its command through a `Sandbox` itself. `ToolRegistry.call` is the
boundary the policy's text crosses: whatever happens, it returns a `ToolResult` and never raises.
"""

from __future__ import annotations

import inspect
import logging
import time

from slime_rl.config.tools import ToolsConfig
from slime_rl.errors import ConfigError
from slime_rl.plugins import load_plugin
from slime_rl.rollout.tools.base import Tool, ToolResult
from slime_rl.rollout.tools.calculator import calculator
from slime_rl.rollout.tools.python_runner import PythonTool
from slime_rl.rollout.tools.sandbox import Sandbox

logger = logging.getLogger(__name__)


def resolve_tool(name: str, spec: str, sandbox: Sandbox) -> Tool:
    """The tool `tools.registered.<name>=<spec>` names; a one-line `ConfigError` when it cannot be used."""
    if spec == "calculator":
        return calculator
    if spec == "python":
        return PythonTool(sandbox)
    key = f"tools.registered.{name}={spec!r}"
    if ":" not in spec:
        raise ConfigError(f"{key} is unknown; use 'calculator', 'python' or 'package.module:function'")
    fn = load_plugin(f"tools.registered.{name}", spec)
    attr = spec.partition(":")[2]
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"{key} is not async; define it as `async def {attr}(arguments: str) -> ToolResult`")
    return fn


class ToolRegistry:
    """The tools of one run by the name the policy writes, with their shared sandbox."""

    def __init__(self, cfg: ToolsConfig) -> None:
        self._cfg = cfg
        self.sandbox = Sandbox(cfg)
        self._tools = {name: resolve_tool(name, spec, self.sandbox) for name, spec in cfg.registered.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    async def call(self, name: str, arguments: str) -> ToolResult:
        """Run tool `name` on `arguments`; an unknown name or a tool that raises gives an error result."""
        if name not in self._tools:
            call = f"{self._cfg.call_open_tag}NAME: ARGUMENTS{self._cfg.call_close_tag}"
            return ToolResult.failure("unknown_tool", f"no tool named {name!r}; write {call} with NAME in {self.names}")
        start = time.monotonic()
        try:
            result = await self._tools[name](arguments)
        except Exception as err:  # a custom tool's bug must not end the run; the policy sees the error
            logger.warning("tool %r raised on its arguments", name, exc_info=True)
            return ToolResult.failure("crash", f"{type(err).__name__}: {err}", seconds=time.monotonic() - start)
        if not isinstance(result, ToolResult):
            return ToolResult.failure(
                "crash", f"tool {name!r} returned {type(result).__name__}, not a ToolResult", seconds=0.0
            )
        return result
