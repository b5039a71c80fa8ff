"""The `calculator` tool: arithmetic and common math functions, with no `eval`.

`evaluate(expression)` parses the text with `ast` in expression mode and walks
the tree itself, accepting only numbers, the arithmetic operators, a fixed list
of functions and constants, and nothing else (no names, attributes, subscripts,
comprehensions or keyword arguments). Work is bounded: the expression length,
the size of integers (so `9**9**9` is refused before it is computed) and the
argument of `factorial` are capped, and each refusal is a ToolError with code
`limit_exceeded`. Malformed input is `invalid_arguments`; a math error such as
division by zero is `error`.

The tool runs `calculate()` in a worker process (see tools/workers.py), never on
the service's event loop, so whatever an expression costs, the loop keeps
serving and the tool's 5 s timeout holds: the worker is killed when it fires.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from agent_service.tools.base import ToolContext, ToolError, ToolRegistry, ToolSpec
from agent_service.tools.workers import ProcessWorkers

Number = int | float

MAX_EXPRESSION_CHARS = 1_000
MAX_INT_BITS = 4_096  # about 1,233 decimal digits: plenty for a calculator, cheap to compute
MAX_FACTORIAL = 1_000
MAX_DEPTH = 60  # nested operators and calls; deeper trees are refused before walking
MAX_ROUND_DIGITS = 400  # round(x, -n) computes 10**n: past a float's range it means nothing

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}


def _factorial(n: Number) -> int:
    if isinstance(n, float):
        if not n.is_integer():
            raise ToolError("factorial() needs a whole number", "error")
        n = int(n)
    if n > MAX_FACTORIAL:
        raise ToolError(f"factorial() is limited to n <= {MAX_FACTORIAL}", "limit_exceeded")
    return math.factorial(n)


def _log(x: Number, base: Number = math.e) -> float:
    return math.log(x, base)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round() is limited to |digits| <= {MAX_ROUND_DIGITS}", "limit_exceeded")
    return round(x, int(ndigits))


_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "cbrt": lambda x: math.copysign(abs(x) ** (1.0 / 3.0), x),
    "exp": math.exp,
    "log": _log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
    "trunc": math.trunc,
    "min": min,
    "max": max,
    "factorial": _factorial,
    "gcd": math.gcd,
}


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression. Raises ToolError for anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(
            f"expression is longer than {MAX_EXPRESSION_CHARS} characters", "limit_exceeded"
        )
    text = expression.strip().replace("^", "**")  # people write 2^10 and mean a power
    if not text:
        raise ToolError("expression is empty", "invalid_arguments")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolError(f"cannot parse {expression!r}: {exc}", "invalid_arguments") from None
    _check_depth(tree.body, 0)
    try:
        return _eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero", "error") from None
    except OverflowError:
        raise ToolError("the result is too large", "limit_exceeded") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error: {exc}", "error") from None


def format_number(value: Number) -> str:
    """A result as people write it: integers plainly, floats to 15 significant digits."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    return str(value)


def _check_depth(node: ast.AST, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ToolError(f"expression is nested deeper than {MAX_DEPTH} levels", "limit_exceeded")
    for child in ast.iter_child_nodes(node):
        _check_depth(child, depth + 1)


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"not a number: {node.value!r}", "invalid_arguments")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id not in _CONSTANTS:
            raise ToolError(f"unknown name {node.id!r}", "invalid_arguments")
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        if type(node.op) in _BINARY:
            if isinstance(node.op, ast.Mult):
                _check_product_size(left, right)
            return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        return _checked(_call(node))
    raise ToolError(
        f"unsupported syntax: {ast.unparse(node)!r} (numbers, + - * / // % **, "
        f"and the functions {', '.join(sorted(_FUNCTIONS))})",
        "invalid_arguments",
    )


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        name = ast.unparse(node.func)
        raise ToolError(f"unknown function {name!r}", "invalid_arguments")
    if node.keywords:
        raise ToolError("keyword arguments are not supported", "invalid_arguments")
    args = [_eval(arg) for arg in node.args]
    return _FUNCTIONS[node.func.id](*args)


def _power(base: Number, exponent: Number) -> Number:
    """base ** exponent, refusing integer results too large to compute cheaply."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise ToolError(
                f"{base}**{exponent} is larger than the {MAX_INT_BITS}-bit limit", "limit_exceeded"
            )
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("the result is a complex number", "error")
    return result


def _check_product_size(left: Number, right: Number) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise ToolError(
                f"the product is larger than the {MAX_INT_BITS}-bit limit", "limit_exceeded"
            )


def _checked(value: Any) -> Number:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"the result is larger than the {MAX_INT_BITS}-bit limit", "limit_exceeded")
    if not isinstance(value, int | float):
        raise ToolError(f"not a number: {value!r}", "error")
    return value


SPEC = ToolSpec(
    name="calculator",
    description=(
        "Evaluate an arithmetic expression exactly and return its value. Supports + - * / // % "
        "and ** (or ^), parentheses, the constants pi, e, tau, and the functions sqrt, cbrt, "
        "exp, log(x[, base]), ln, log10, log2, sin, cos, tan, asin, acos, atan, atan2, sinh, "
        "cosh, tanh, degrees, radians, hypot, abs, round(x[, digits]), floor, ceil, trunc, "
        "min, max, factorial, gcd. Angles are in radians. Example: sqrt(2) * sin(pi / 4)"
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_EXPRESSION_CHARS,
                "description": "The expression, for example (3 + 4) * 2 ** 10",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    timeout_s=5.0,
)


def calculate(expression: str) -> str:
    """The value of expression as the tool's result text. Raises ToolError."""
    return format_number(evaluate(expression))


def register(registry: ToolRegistry, workers: ProcessWorkers) -> None:
    """Add the calculator to a registry; its evaluations run in workers' processes."""

    async def calculator(args: dict[str, Any], ctx: ToolContext) -> str:
        return await workers.run(calculate, args["expression"])

    registry.register(SPEC, calculator)
