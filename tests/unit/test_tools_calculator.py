"""The `calculator` tool: exact integer arithmetic from an `ast` walk, refusing anything else."""

import asyncio
import re

import pytest

from slime_rl.rollout.tools.calculator import MAX_EXPRESSION_CHARS, CalculatorError, calculator, evaluate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("12*34", 408),
        (" 1 + 2 * 3 ", 7),
        ("(1 + 2) * -3", -9),
        ("-7 // 2", -4),  # floor division, as in Python
        ("-7 % 3", 2),
        ("2**10", 1024),
        ("2**3**2", 512),  # right-associative: 2**9
        ("-2**2", -4),
        ("+5 - -5", 10),
        ("2**100 - 1", 1267650600228229401496703205375),
        ("99999999999999999999 * 99999999999999999999", 9999999999999999999800000000000000000001),
    ],
)
def test_evaluate_integer_expressions_are_exact(expression, expected):
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1/2", "use '//'"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("2**-1", "negative exponents"),
        ("9**9**9", "exponent"),
        ("10**2000", "more than 4096 bits"),
        ("(10**1000) * (10**1000)", "more than 4096 bits"),
        ("1.5 * 2", "unsupported element"),
        ("True + 1", "unsupported element"),
        ("__import__('os').getpid()", "unsupported element"),
        ("x + 1", "unsupported element"),
        ("1 +", "not a valid expression"),
        ("1 < 2", "unsupported element"),
    ],
)
def test_evaluate_refuses_unsupported_or_unbounded_expressions(expression, reason):
    with pytest.raises(CalculatorError, match=re.escape(reason)):
        evaluate(expression)


def test_evaluate_refuses_input_over_the_length_limit():
    with pytest.raises(CalculatorError, match="longer than"):
        evaluate("1+" * MAX_EXPRESSION_CHARS + "1")


def test_calculator_tool_returns_the_value_as_text():
    result = asyncio.run(calculator("12*34"))
    assert result.is_ok
    assert result.output == "408"
    assert result.policy_text() == "408"


def test_calculator_tool_reports_a_bad_expression_as_an_error_result():
    result = asyncio.run(calculator("12 / 0"))
    assert not result.is_ok
    assert result.error_kind == "bad_input"
    assert result.policy_text() == "error (bad_input): '/' is not supported; use '//' for integer division"
