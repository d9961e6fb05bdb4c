"""Where a rule's keys are in the rules file, for the problems found across files (a channel routes.yaml does
not route, a template that does not parse, params a destination refuses)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import yaml

from hub.config_files import child_of, line_of, yaml_tree


class RuleLines:
    """``path:line`` of a rule's keys in the rules file, for the problems the checks across files find (a channel
    routes.yaml does not route, a template that does not parse, params a destination refuses): they then read as
    the file's own problems do after `with_line`, in `touchhub mappings check`, a refused hot reload and
    `touchhub triggers test` alike. Rules are found by id, as the hub holds them by priority, not in file order;
    the file is read at the first problem, not on each load."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def where(self, rule_id: str, *keys: str | int) -> str:
        """Where `keys` (e.g. "respond", 0, "channel") are in rule `rule_id`: the deepest of them the file has."""
        place = self._places.get(rule_id)
        return f"{self.path}:{line_of(self._tree, ['rules'] if place is None else ['rules', place, *keys])}"

    @cached_property
    def _tree(self) -> yaml.Node | None:
        return yaml_tree(self.path)

    @cached_property
    def _places(self) -> dict[str, int]:
        """rule id -> its place in the file's `rules` list."""
        rules = _value_of(self._tree, "rules")
        if not isinstance(rules, yaml.SequenceNode):
            return {}
        ids = [_value_of(rule, "id") for rule in rules.value]
        return {node.value: place for place, node in enumerate(ids) if isinstance(node, yaml.ScalarNode)}



def _value_of(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node of `key` in a YAML mapping node; None when there is none."""
    found = child_of(node, key)
    return found[1] if found else None
