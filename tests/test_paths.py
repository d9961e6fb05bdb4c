"""Field paths read directly find exactly what jmespath finds, whatever the document holds."""

from __future__ import annotations

from typing import Any

import jmespath
from hypothesis import given
from hypothesis import strategies as st

from hub import paths
from hub.paths import FieldPath, FirstOf

EXPRESSIONS = ["a", "a.b", "a.b.c", '"x-y".b', "a || b", "a.b || b.a || c", "traits || context.traits"]
KEYS = st.sampled_from(["a", "b", "c", "x-y", "traits", "context"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-1, 1), st.sampled_from(["", "x"]), st.just([]), st.just({}),
                   st.lists(st.integers(0, 2), max_size=2))
DOCUMENTS = st.recursive(LEAVES, lambda inner: st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)


@given(DOCUMENTS)
def test_a_direct_reading_finds_what_jmespath_finds(document: Any) -> None:
    for expression in EXPRESSIONS:
        assert paths.compile(expression).search(document) == jmespath.search(expression, document), expression


def test_field_paths_and_their_choices_are_read_directly_and_the_rest_by_jmespath() -> None:
    assert paths.compile("context.device.id") == FieldPath(("context", "device", "id"))
    assert paths.compile("traits || context.traits") == FirstOf(FieldPath(("traits",)), FieldPath(("context", "traits")))
    for expression in ("type == 'track' && event || type", "a[0]", "a || 'web'", "a.*"):
        assert isinstance(paths.compile(expression), jmespath.parser.ParsedResult), expression
