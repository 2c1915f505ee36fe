"""The tagged text format between policy and tools: parse a turn, format a tool's result.

Default format (every tag is a `ToolsConfig` field):
- a call is `<tool>NAME: ARGUMENTS</tool>`: the name is the text before the first ':', the arguments are
  the rest, dedented and stripped (so multi-line code after `python:` keeps its own indentation);
- a final answer is `<answer>TEXT</answer>`;
- a result appended to the conversation is `<result>TEXT</result>`, where TEXT is the output or
  `error (KIND): MESSAGE`.
Whichever opening tag comes first in the turn wins. A missing closing tag is accepted at the end of the
turn, because engines trim the stop string: generation is expected to stop at the closing tags.
It deliberately does not run tools or keep the conversation; the multi-turn loop does.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from slime_rl.config.tools import ToolsConfig
from slime_rl.rollout.tools.base import ToolResult


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the policy wrote. `name` is empty when it wrote no 'NAME:' prefix."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """The policy's final answer; the conversation ends here."""

    text: str


def parse_turn(text: str, cfg: ToolsConfig) -> ToolCall | FinalAnswer | None:
    """The first tool call or final answer in one generated turn; None when there is neither."""
    call_at = text.find(cfg.call_open_tag)
    answer_at = text.find(cfg.answer_open_tag)
    if call_at < 0 and answer_at < 0:
        return None
    if answer_at >= 0 and (call_at < 0 or answer_at < call_at):
        return FinalAnswer(_tagged_body(text, answer_at + len(cfg.answer_open_tag), cfg.answer_close_tag).strip())
    body = _tagged_body(text, call_at + len(cfg.call_open_tag), cfg.call_close_tag)
    name, colon, arguments = body.partition(":")
    if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
        return ToolCall(name="", arguments=textwrap.dedent(body).strip())
    return ToolCall(name=name.strip(), arguments=textwrap.dedent(arguments).strip())


def format_result(result: ToolResult, cfg: ToolsConfig) -> str:
    """The text appended to the conversation after a call: the result between the result tags."""
    return f"{cfg.result_open_tag}{result.policy_text()}{cfg.result_close_tag}"


def stop_strings(cfg: ToolsConfig) -> list[str]:
    """Strings the engine should stop a turn at: the closing tags of a call and of an answer."""
    return [cfg.call_close_tag, cfg.answer_close_tag]


def _tagged_body(text: str, start: int, close_tag: str) -> str:
    end = text.find(close_tag, start)
    return text[start:] if end < 0 else text[start:end]
