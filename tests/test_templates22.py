"""Event data in an email's html block is escaped; the plain-text parts are not."""

from __future__ import annotations

from pathlib import Path

from hub.settings import PROJECT_MAPPINGS
from hub.templates import TemplateRenderer

MARKUP_NAME = '<a href="https://evil.example/login">Ana</a> & co'  # a first name any SDK's identify call can set


def render(folder: Path, name: str, **context: object) -> dict[str, str]:
    return TemplateRenderer(folder).render(name, {"profile": {}, "vars": {}, **context})


def test_a_trait_holding_markup_is_text_in_the_shipped_cart_email_not_a_link() -> None:
    """Autoescape was off, so the html part carried the trait's link as the brand's own link."""
    rendered = render(
        PROJECT_MAPPINGS / "templates", "cart_abandonment.email.j2",
        profile={"first_name": MARKUP_NAME},
        vars={"discount_percent": 10, "discount_code": "SAVE10", "cart_url": "https://shop.example/cart?a=1&b=2"},
    )
    assert "<a href=\"https://evil.example" not in rendered["html"]
    assert "Hi &lt;a href=&#34;https://evil.example/login&#34;&gt;Ana&lt;/a&gt; &amp; co," in rendered["html"]
    assert '<a href="https://shop.example/cart?a=1&amp;b=2">' in rendered["html"]  # an attribute as HTML writes it
    assert rendered["text"].startswith(f"Hi {MARKUP_NAME},")  # the plain part shows what was sent, not entities


def test_only_the_html_block_escapes_and_safe_keeps_markup_ops_meant(tmp_path: Path) -> None:
    (tmp_path / "email.j2").write_text(
        "{% block subject %}{{ profile.first_name }}: R&D news{% endblock %}"
        "{% block text %}{{ profile.first_name }}{% endblock %}"
        "{% block html %}<p>{{ profile.first_name }}</p>{{ vars.footer | safe }}{% endblock %}",
        encoding="utf-8",
    )
    rendered = render(tmp_path, "email.j2", profile={"first_name": "Tom & Jerry"}, vars={"footer": "<hr><small>Acme</small>"})
    assert rendered["subject"] == "Tom & Jerry: R&D news"
    assert rendered["text"] == "Tom & Jerry"
    assert rendered["html"] == "<p>Tom &amp; Jerry</p><hr><small>Acme</small>"
