"""The tagged call format, the tools config and the registry's call boundary (no subprocesses here)."""

import asyncio

import pytest

from slime_rl.config.tools import ToolsConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.tools.base import ToolResult
from slime_rl.rollout.tools.registry import ToolRegistry
from slime_rl.rollout.tools.tool_call import FinalAnswer, ToolCall, format_result, parse_turn, stop_strings


async def echo(arguments: str) -> ToolResult:
    """A custom tool for the registry tests: `tests.unit.test_tool_call:echo`."""
    return ToolResult(is_ok=True, output=arguments.upper())


async def broken(arguments: str) -> ToolResult:
    raise RuntimeError(f"cannot handle {arguments}")


def not_async(arguments: str) -> ToolResult:
    return ToolResult(is_ok=True, output=arguments)


def test_parse_turn_reads_name_and_arguments_of_a_call():
    turn = "Let me compute that. <tool>calculator: 12*34</tool>"
    assert parse_turn(turn, ToolsConfig()) == ToolCall(name="calculator", arguments="12*34")


def test_parse_turn_splits_at_the_first_colon_and_keeps_code_indentation():
    turn = "<tool>python:\n    for i in range(2):\n        print(i, {'a': 1})\n</tool>"
    call = parse_turn(turn, ToolsConfig())
    assert call == ToolCall(name="python", arguments="for i in range(2):\n    print(i, {'a': 1})")


def test_parse_turn_accepts_a_call_cut_at_the_trimmed_stop_string():
    assert parse_turn("<tool>calculator: 2**8", ToolsConfig()) == ToolCall(name="calculator", arguments="2**8")


def test_parse_turn_gives_an_empty_name_when_the_call_has_none():
    assert parse_turn("<tool>12*34</tool>", ToolsConfig()) == ToolCall(name="", arguments="12*34")


def test_parse_turn_reads_a_final_answer():
    assert parse_turn("So it is <answer> 408 </answer>", ToolsConfig()) == FinalAnswer(text="408")


def test_parse_turn_takes_whichever_tag_comes_first():
    cfg = ToolsConfig()
    assert parse_turn("<answer>1</answer><tool>calculator: 2</tool>", cfg) == FinalAnswer(text="1")
    assert parse_turn("<tool>calculator: 2</tool><answer>1</answer>", cfg) == ToolCall("calculator", "2")


def test_parse_turn_is_none_without_tags():
    assert parse_turn("I am still thinking", ToolsConfig()) is None


def test_parse_turn_uses_configured_tags():
    cfg = ToolsConfig(call_open_tag="[[", call_close_tag="]]", answer_open_tag="ANSWER:", answer_close_tag="END")
    assert parse_turn("[[calculator: 1+1]] <tool>x: y</tool>", cfg) == ToolCall("calculator", "1+1")
    assert parse_turn("ANSWER: 2 END", cfg) == FinalAnswer("2")


def test_format_result_wraps_output_or_error_in_result_tags():
    cfg = ToolsConfig()
    assert format_result(ToolResult(is_ok=True, output="408"), cfg) == "<result>408</result>"
    failed = ToolResult.failure("timeout", "no result within 10 s; the tool was killed")
    assert format_result(failed, cfg) == "<result>error (timeout): no result within 10 s; the tool was killed</result>"
    assert stop_strings(cfg) == ["</tool>", "</answer>"]


def test_tool_result_rejects_an_error_kind_that_contradicts_is_ok():
    with pytest.raises(ValueError, match="does not match"):
        ToolResult(is_ok=True, output="", error_kind="crash")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timeout_s": 0}, "tools.timeout_s must be > 0"),
        ({"memory_mb": 16}, "tools.memory_mb must be >= 64"),
        ({"max_output_bytes": 0}, "tools.max_output_bytes must be >= 1"),
        ({"call_close_tag": ""}, "tools.call_open_tag='<tool>' and tools.call_close_tag=''"),
        ({"answer_open_tag": "<tool>"}, "tools.call_open_tag and tools.answer_open_tag"),
        ({"registered": {"calc": "nonsense"}}, "tools.registered.calc='nonsense' is unknown"),
        ({"registered": {"my tool": "calculator"}}, "tools.registered has the tool name 'my tool'"),
    ],
)
def test_tools_config_rejects_bad_values_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        ToolsConfig(**overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_registry_calls_builtin_and_custom_tools_by_name():
    registry = ToolRegistry(ToolsConfig(registered={"calc": "calculator", "shout": "tests.unit.test_tool_call:echo"}))
    assert registry.names == ["calc", "shout"]
    assert asyncio.run(registry.call("calc", "6*7")).output == "42"
    assert asyncio.run(registry.call("shout", "hi")).output == "HI"


def test_registry_answers_an_unknown_tool_with_an_error_result():
    result = asyncio.run(ToolRegistry(ToolsConfig(registered={"calculator": "calculator"})).call("search", "x"))
    assert result.error_kind == "unknown_tool"
    assert result.message == "no tool named 'search'; write <tool>NAME: ARGUMENTS</tool> with NAME in ['calculator']"


def test_registry_turns_a_raising_custom_tool_into_a_crash_result():
    registry = ToolRegistry(ToolsConfig(registered={"broken": "tests.unit.test_tool_call:broken"}))
    result = asyncio.run(registry.call("broken", "this"))
    assert result.error_kind == "crash"
    assert result.message == "RuntimeError: cannot handle this"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.unit.no_such_module:echo", "cannot be imported"),
        ("tests.unit.test_tool_call:missing", "cannot be imported"),
        ("tests.unit.test_tool_call:not_async", "is not async; define it as `async def not_async("),
    ],
)
def test_registry_names_the_key_of_a_bad_dotted_path(spec, message):
    with pytest.raises(ConfigError) as err:
        ToolRegistry(ToolsConfig(registered={"t": spec}))
    assert str(err.value).startswith(f"tools.registered.t={spec!r}")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
