"""Field paths read directly find exactly what jmespath finds, whatever the document holds."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import paths
from hub.paths import BothOf, Equals, FieldPath, FirstOf, Literal

EXPRESSIONS = [
    "a", "a.b", "a.b.c", '"x-y".b', "a || b", "a.b || b.a || c", "traits || context.traits",
    "a && b", "a.b && c || b", "a == b", "a != b.c", "a == 'x'", "a == `1`", "a != `0`", "`true` == a", "a == `[]`",
    "a == `1.0`", "a == `false` && b", "type == 'track' && event || type", "a || 'web'", "'x'",
]
KEYS = st.sampled_from(["a", "b", "c", "x-y", "traits", "context", "type", "event"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-1, 1), st.sampled_from([0.0, 1.0, 0.5]),
                   st.sampled_from(["", "x", "track"]), st.just([]), st.just({}), st.lists(st.integers(0, 2), max_size=2))
DOCUMENTS = st.recursive(LEAVES, lambda inner: st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)


@given(DOCUMENTS)
def test_a_direct_reading_finds_what_jmespath_finds(document: Any) -> None:
    for expression in EXPRESSIONS:
        assert paths.compile(expression).search(document) == jmespath.search(expression, document), expression


def test_paths_tests_and_choices_are_read_directly_and_the_rest_by_jmespath() -> None:
    assert paths.compile("context.device.id") == FieldPath(("context", "device", "id"))
    assert paths.compile("traits || context.traits") == FirstOf(FieldPath(("traits",)), FieldPath(("context", "traits")))
    assert paths.compile("type == 'track' && event || type") == FirstOf(
        BothOf(Equals(FieldPath(("type",)), Literal("track"), negated=False), FieldPath(("event",))), FieldPath(("type",))
    )
    for expression in ("a[0]", "a.*", "a > `1`", "!a", "a == b[0]", "length(a)"):
        assert isinstance(paths.compile(expression), jmespath.parser.ParsedResult), expression


@pytest.mark.parametrize("a, b", [(1, True), (True, 1), (0, False), (False, 0.0), (1.0, 1), (0, 0), ("1", 1), ([1], [True])])
def test_equality_is_jmespaths_for_numbers_and_booleans(a: Any, b: Any) -> None:
    for expression in ("a == b", "a != b"):
        assert paths.compile(expression).search({"a": a, "b": b}) == jmespath.search(expression, {"a": a, "b": b})
