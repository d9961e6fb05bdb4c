"""The explain answer as a rich tree, for `touchhub profiles explain`."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from rich.tree import Tree

from hub.cli_support import styled
from hub.model import Identifier
from hub.pii import mask_recipient


def explain_tree(graph: dict[str, Any], *, show_pii: bool = False) -> Tree:
    """Identifiers, the links between them and the merges, refusals and unmerges, each with its reason.

    Emails and phones are masked, and push tokens cut short, unless `show_pii`: the output ends up in tickets
    and chat, and a whole token is enough to message the device. Every value is data (an event name in a
    reason may hold `[/]`), so each is filled into its line's markup by `styled`, never written into it.
    """

    def shown(kind: str, value: str) -> str:
        return value if show_pii else mask_recipient(value, Identifier(kind, value))

    def ident(pair: list[str]) -> str:
        return f"{pair[0]}={shown(pair[0], pair[1])}" if len(pair) == 2 else str(pair)

    root = Tree(styled("[bold]profile {}[/]", graph["profile_id"]))
    if graph["aliases"]:
        root.add(styled("aliases (merged in, still resolve here): {}", ", ".join(graph["aliases"])))
    members = root.add(f"identifiers ({len(graph['identifiers'])})")
    for item in graph["identifiers"]:
        members.add(styled("[cyan]{}[/]={}  [dim]{}[/]", item["type"], shown(item["type"], item["value"]), item["why"]))
    links = root.add(f"links ({len(graph['links'])})")
    for link in graph["links"]:
        links.add(styled("{} — {}  [dim]{}, touchpoint {}[/]", ident(link["from"]), ident(link["to"]), link["why"], link["touchpoint_id"]))
    for title, items in (("merges", graph["merges"]), ("refused links", graph["refused"]), ("unmerges", graph["unmerges"]),
                         ("detached by a provider", graph["detached"])):
        branch = root.add(f"{title} ({len(items)})")
        for item in items:
            branch.add(_audit_line(item, ident))
    moved = root.add(f"moved with a device to whoever signed in on it ({len(graph['moved'])})")
    for item in graph["moved"]:
        carried = ", ".join(ident(pair) for pair in item["identifiers"])
        moved.add(styled("{}: {} -> {}  [dim]touchpoint {}[/]", carried, item["other_profile_id"], item["profile_id"], item["touchpoint_id"]))
    return root


def _audit_line(item: dict[str, Any], ident: Any) -> Text:
    if "merged_profile_id" in item:
        linked = ", ".join(ident(pair) for pair in item["linking_identifiers"])
        return styled("{} merged via {}: [yellow]{}[/]  [dim]touchpoint {}[/]", item["merged_profile_id"], linked, item["rule"],
                      item["touchpoint_id"])
    carried = ", ".join(ident(pair) for pair in item["identifiers"])
    other = f" (profile {item['other_profile_id']})" if item["other_profile_id"] else ""
    where = f"touchpoint {item['touchpoint_id']}" if item["touchpoint_id"] else item["at"].isoformat()
    if item.get("times", 1) > 1:  # a refused link recurring on a shared device (refusals alone count)
        where += f", {item['times']} times, last at {item['last_at'].isoformat()}"
    return styled("{}{}: [yellow]{}[/]  [dim]{}[/]", carried, other, item["rule"], where)
