"""The built-in `python` tool: run a snippet the policy wrote in the sandbox and return what it printed.

The snippet is written to `main.py` in the call's temporary directory and run by this interpreter in
isolated mode (`-I`: no user site-packages, no PYTHON* variables, the script's directory not on the path),
so it sees the installed packages but nothing of the caller's environment. Limits and the network block
are the sandbox's (`ToolsConfig`).
"""

from __future__ import annotations

import sys

from slime_rl.rollout.tools.base import ToolResult
from slime_rl.rollout.tools.sandbox import Sandbox


class PythonTool:
    """Callable as a `Tool`: `await tool("print(6 * 7)")` gives a result whose output is "42\\n"."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def __call__(self, arguments: str) -> ToolResult:
        code = _strip_fence(arguments)
        if not code.strip():
            return ToolResult.failure("bad_input", "no code given; write the snippet after 'python:'")
        return await self._sandbox.run([sys.executable, "-I", "main.py"], files={"main.py": code})


def _strip_fence(text: str) -> str:
    """Drop a surrounding Markdown code fence (```python ... ```), which policies often write."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6:
        first_line, _, rest = stripped[3:-3].partition("\n")
        return rest if first_line.strip() in ("", "python", "py") else stripped[3:-3]
    return text
