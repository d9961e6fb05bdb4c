"""JMESPath expressions as the pipeline evaluates them: plain field paths read without the interpreter.

Mappings and rule predicates are JMESPath, compiled once, but jmespath's
`search` builds an interpreter and walks the tree with a visitor call per
node on every event; about 17 searches per event were a seventh of the
pipeline's time with 100 rules. Nearly all of them are plain field paths
(`context.traits.email`) or a choice of them (`traits || context.traits`),
and the Segment mapping's `event` is a test of one against a literal
(`type == 'track' && event || type`): those are read straight from the
dicts, with jmespath's meaning (a missing key, or a step into something
that is not an object, gives None; `a || b` is b when a is '', [], {},
None or false, `a && b` is a then; `==` never equates 0 or 1 with a
boolean). Any other expression runs through jmespath.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number
from typing import Any, Protocol

import jmespath


# What jmespath raises when a document's data does not suit an expression: its own type errors (`join()` of a
# string), and Python's from inside it (`max_by()` or a `[?a > b]` filter comparing a string with a number).
# The direct readers below never raise them.
DATA_ERRORS = (jmespath.exceptions.JMESPathError, TypeError, ValueError)


class Expression(Protocol):
    def search(self, value: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class FieldPath:
    """`a.b.c`: one key after another."""

    keys: tuple[str, ...]

    def search(self, value: Any) -> Any:
        for key in self.keys:
            try:
                value = value.get(key)
            except AttributeError:  # not an object (None included)
                return None
        return value


@dataclass(frozen=True, slots=True)
class FirstOf:
    """`a || b`: a, unless JMESPath calls it false."""

    first: Expression
    otherwise: Expression

    def search(self, value: Any) -> Any:
        found = self.first.search(value)
        return self.otherwise.search(value) if is_false(found) else found


@dataclass(frozen=True, slots=True)
class BothOf:
    """`a && b`: b, unless JMESPath calls a false (then a)."""

    first: Expression
    then: Expression

    def search(self, value: Any) -> Any:
        found = self.first.search(value)
        return found if is_false(found) else self.then.search(value)


@dataclass(frozen=True, slots=True)
class Literal:
    """`'track'` or `` `1` ``."""

    value: Any

    def search(self, value: Any) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class Equals:
    """`a == b` (or `a != b` when `negated`)."""

    left: Expression
    right: Expression
    negated: bool

    def search(self, value: Any) -> Any:
        return equals(self.left.search(value), self.right.search(value)) != self.negated


def is_false(value: Any) -> bool:
    """JMESPath's falsehood, not Python's: a 0 found is true (`||`, `&&`, `!` and a mapping's `drop` judge alike)."""
    return value == "" or value == [] or value == {} or value is None or value is False


def equals(x: Any, y: Any) -> bool:
    """JMESPath's equality: Python's, except that 0 and 1 never equal a boolean."""
    if _is_number(x) and x in (0, 1):
        return not isinstance(y, bool) and x == y
    if _is_number(y) and y in (0, 1):
        return not isinstance(x, bool) and x == y
    return bool(x == y)


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def compile(expression: str) -> Expression:
    """The expression, read directly when it is made of field paths and `||`, by jmespath otherwise."""
    parsed = jmespath.compile(expression)
    return _direct(parsed.parsed) or parsed


def _direct(node: dict[str, Any]) -> Expression | None:
    """A direct reading of a parsed expression, or None when it has more than field paths, literals, `||`, `&&`,
    `==` and `!=`."""
    kind = node["type"]
    if kind == "literal":
        return Literal(node["value"])
    if kind in ("or_expression", "and_expression") or (kind == "comparator" and node["value"] in ("eq", "ne")):
        left, right = (_direct(child) for child in node["children"])
        if left is None or right is None:
            return None
        if kind == "comparator":
            return Equals(left, right, negated=node["value"] == "ne")
        return FirstOf(left, right) if kind == "or_expression" else BothOf(left, right)
    keys = _keys(node)
    return FieldPath(keys) if keys else None


def _keys(node: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a field path (`a`, `a.b.c`); () for anything else."""
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] != "subexpression":
        return ()
    keys = [_keys(child) for child in node["children"]]
    return sum(keys, ()) if all(keys) else ()
