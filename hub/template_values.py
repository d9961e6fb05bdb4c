"""Values sent as null, as templates see them.

A trait sent as null (Segment identify calls often carry `company: null`)
is no value either: it renders as nothing, through a filter or `~` too, and
`default(...)` replaces it as it replaces a missing one. Jinja's own would
print "None", writing "Hi None," to a customer and "None" into a CRM's
Company. `template_context` hands each null to templates as `NULL`, an
Undefined that prints nothing (`is none` still finds it, `tojson` writes it
as null); `finalize` covers a None a template makes itself
(`null_aware`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import ChainableUndefined, Environment, Undefined


class _Null(ChainableUndefined):
    """A null value in what a template is given (see the module doc): false, prints nothing, through filters and
    `~` too, and so does any attribute of it (a null `address` has no `city`); `| int` and `| float` give their
    default, as for None. Only arithmetic or a comparison with it fails, saying what to do."""

    __slots__ = ()

    def __int__(self) -> int:
        raise TypeError("null is not a number")  # what `| int` and `| float` take as "use the default"

    __float__ = __int__


NULL = _Null(hint="a value sent as null cannot be computed with; give it one: `| default(...)`")


def template_context(traits: Mapping[str, Any], touchpoint: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """What templates are rendered with: ``profile`` (the traits), ``touchpoint`` and ``vars``, each null in them
    `NULL`. Built once per decision routed, not per template: the values are walked once."""
    return {"profile": _without_nulls(traits), "touchpoint": _without_nulls(touchpoint), "vars": _without_nulls(variables)}


def null_aware(environment: Environment) -> Environment:
    """`environment` with nulls as the module doc has them: its `none` test, `default` and `tojson` count `NULL`
    as the null it was sent as, and what it prints (`finalize`) prints nothing for a None. Called before it
    compiles anything: Jinja reads `finalize` as it compiles."""
    environment.finalize = _nothing_for_none
    environment.filters["default"] = environment.filters["d"] = _default
    environment.tests["none"] = _is_none
    environment.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _json_null}
    return environment


def _without_nulls(value: Any) -> Any:
    """`value` with each None in it, at any depth of maps and lists, `NULL`."""
    if value is None:
        return NULL
    if isinstance(value, Mapping):
        return {key: _without_nulls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _nothing_for_none(value: Any) -> Any:
    return "" if value is None else value


def _is_none(value: Any) -> bool:
    """Jinja's `none` test, a value sent as null (`NULL`) counted as None still."""
    return value is None or isinstance(value, _Null)


def _json_null(value: Any) -> None:
    """`tojson`'s answer for a value JSON has no form of: null for `NULL`, as it was sent."""
    if isinstance(value, _Null):
        return None
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's `default`, with a null value counted as missing."""
    if value is None or isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value
