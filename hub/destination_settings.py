"""Destinations built from HUB_* settings, one function per kind of provider.

Credentials only ever come from settings; a destination whose settings are
absent is simply not built, and deliveries routed to it are parked (dead,
`config.unknown_destination`) until it is configured and they are replayed.
"""

from __future__ import annotations

from connectors.base import Destination, Registry
from hub.errors import ConfigError
from hub.settings import HubSettings


def webhook_destinations(registry: Registry, settings: HubSettings) -> dict[str, Destination]:
    """`outbound_webhook` and `chat_webhook`, each when its URL is set."""
    allowed = [network for network in settings.webhook_allowed_networks.split(",") if network.strip()]
    built: dict[str, Destination] = {}
    problems: list[str] = []
    for slug, url, secret, prefix in (
        ("outbound_webhook", settings.outbound_webhook_url, settings.outbound_webhook_secret, "HUB_OUTBOUND_WEBHOOK_*"),
        ("chat_webhook", settings.chat_webhook_url, settings.chat_webhook_secret, "HUB_CHAT_WEBHOOK_*"),
    ):
        if url is None:
            continue
        connector = registry.destinations[slug]
        try:
            config = connector.validate_config(
                prefix,
                {
                    "url": url,
                    "secret": secret,
                    "allowed_networks": allowed,
                    "timeout_seconds": settings.send_timeout_seconds,
                },
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        built[slug] = connector(slug, config)
    if problems:
        raise ConfigError(problems)
    return built


def email_destination(registry: Registry, settings: HubSettings) -> dict[str, Destination]:
    """`email_smtp`, always built: its defaults point at a local relay, as Twilio's point at the sandbox."""
    connector = registry.destinations["email_smtp"]
    config = connector.validate_config(
        "HUB_SMTP_* / HUB_EMAIL_FROM / HUB_UNSUBSCRIBE_*",
        {
            "host": settings.smtp_host,
            "port": settings.smtp_port,
            "tls": settings.smtp_tls,
            "username": settings.smtp_username,
            "password": settings.smtp_password,
            "ca_file": settings.smtp_ca_file,
            "from_address": settings.email_from,
            "unsubscribe_url": settings.public_url("/v1/unsubscribe"),
            "unsubscribe_secret": settings.unsubscribe_secret,
            "unsubscribe_link_days": settings.unsubscribe_link_days,
            "timeout_seconds": settings.send_timeout_seconds,
        },
    )
    return {"email_smtp": connector("email_smtp", config)}
