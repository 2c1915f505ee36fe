"""The built-in `calculator` tool: exact integer arithmetic on an expression the policy wrote.

Supports `+ - * // % **`, parentheses and unary minus/plus on integer literals. The expression is parsed
with `ast` and walked node by node; nothing is ever evaluated by Python, so no name, call or attribute
can run. It runs in-process, not in the sandbox: it does no I/O, and its cost is bounded before any work
by the input length and by refusing results wider than `max_result_bits`, so a call takes microseconds where
a sandboxed process would cost tens of milliseconds.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from slime_rl.rollout.tools.base import ToolResult

MAX_EXPRESSION_CHARS = 256  # longer input is refused before parsing; this also bounds the nesting depth
MAX_RESULT_BITS = 4096  # about 1233 decimal digits; `*` or `**` whose result would be wider is refused
MAX_EXPONENT = 4096  # largest exponent `**` accepts


class CalculatorError(ValueError):
    """The expression is not supported or its result would be too large; the message says which."""


def _power(base: int, exponent: int) -> int:
    if exponent < 0:
        raise CalculatorError("negative exponents give fractions; only integer results are supported")
    if exponent > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is above the limit of {MAX_EXPONENT}")
    if abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_RESULT_BITS:
        raise CalculatorError(f"the result would have more than {MAX_RESULT_BITS} bits")
    return base**exponent


def _multiply(left: int, right: int) -> int:
    if left.bit_length() + right.bit_length() > MAX_RESULT_BITS + 1:
        raise CalculatorError(f"the result would have more than {MAX_RESULT_BITS} bits")
    return left * right


def _divide(operation: Callable[[int, int], int]) -> Callable[[int, int], int]:
    def checked(left: int, right: int) -> int:
        if right == 0:
            raise CalculatorError("division by zero")
        return operation(left, right)

    return checked


_BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.FloorDiv: _divide(operator.floordiv),
    ast.Mod: _divide(operator.mod),
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[int], int]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate(expression: str) -> int:
    """The exact value of an integer expression; `CalculatorError` says why one is refused."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise CalculatorError(f"not a valid expression: {err.msg}") from err
    return _value(tree.body)


def _value(node: ast.expr) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        # Additions and subtractions grow by one bit per operator, which the length limit bounds.
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        raise CalculatorError("'/' is not supported; use '//' for integer division")
    raise CalculatorError(f"unsupported element {ast.unparse(node)!r}; use integers, + - * // % ** and parentheses")


async def calculator(arguments: str) -> ToolResult:
    """The `calculator` tool: the value of the expression, or a `bad_input` error saying what is wrong."""
    try:
        return ToolResult(is_ok=True, output=str(evaluate(arguments)))
    except CalculatorError as err:
        return ToolResult.failure("bad_input", str(err))
