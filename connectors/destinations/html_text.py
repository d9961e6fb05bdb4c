"""The plain-text part of an email made from its HTML, for a template with an `html` block and no `text` block.

Clients that show the plain part, and spam filters comparing the two, read
the words a reader of the HTML sees: no markup, scripts or styles; a link's
target beside its words (a plain-text reader cannot click them); a line
break at each block; and the cells of a table apart, since email HTML is
laid out in tables ("Order #1234", not "Order#1234").
"""

from __future__ import annotations

import re
from html.parser import HTMLParser


class TextOfHtml(HTMLParser):
    """The words of an HTML document as a reader sees them (see the module doc)."""

    HIDDEN = frozenset({"head", "script", "style", "title"})
    BLOCKS = frozenset({
        "blockquote", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol", "p", "pre", "table", "tbody",
        "tfoot", "thead", "tr", "ul",
    })
    CELLS = frozenset({"td", "th"})  # side by side on one line, a blank before each (its end tag may be left out)

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0
        self._links: list[tuple[str, int]] = []  # each open link's target, and where its words start in `parts`

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag in self.CELLS:
            self.parts.append(" ")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # `<br/>` is one break, not an opening and a closing

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(self._hidden - 1, 0)
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            words = " ".join("".join(self.parts[start:]).split())
            if href.startswith(("http:", "https:", "mailto:")) and href != words:
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_as_text(html: str) -> str:
    """`html` as plain text (`TextOfHtml`): whitespace collapsed within lines, one blank line between blocks."""
    parser = TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
