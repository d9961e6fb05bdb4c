"""JMESPath expressions as the pipeline evaluates them: plain field paths read without the interpreter.

Mappings and rule predicates are JMESPath, compiled once, but jmespath's
`search` builds an interpreter and walks the tree with a visitor call per
node on every event; about 17 searches per event were a seventh of the
pipeline's time with 100 rules. Nearly all of them are plain field paths
(`context.traits.email`) or a choice of them (`traits || context.traits`):
those are read straight from the dicts, with jmespath's meaning (a missing
key, or a step into something that is not an object, gives None; `a || b`
is b when a is '', [], {}, None or false). Any other expression runs
through jmespath.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jmespath


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
        if found == "" or found == [] or found == {} or found is None or found is False:
            return self.otherwise.search(value)
        return found


def compile(expression: str) -> Expression:
    """The expression, read directly when it is made of field paths and `||`, by jmespath otherwise."""
    parsed = jmespath.compile(expression)
    return _direct(parsed.parsed) or parsed


def _direct(node: dict[str, Any]) -> Expression | None:
    """A direct reading of a parsed expression, or None when it has more than field paths and `||`."""
    if node["type"] == "or_expression":
        first, otherwise = (_direct(child) for child in node["children"])
        return FirstOf(first, otherwise) if first and otherwise else None
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
