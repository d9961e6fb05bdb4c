"""Destinations built from HUB_* settings, one function per kind of provider.

Credentials only ever come from settings; a destination whose settings are
absent is simply not built, and deliveries routed to it wait, due, in the
outbox for a process that has its settings (this one, once configured).
Each destination's id is its connector slug: one destination per provider.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from connectors.base import Destination, Registry
from hub.errors import ConfigError
from hub.settings import HubSettings

ForgetTokens = Callable[[Sequence[str], str], None]  # (tokens, why the provider called them dead)
CRM = "salesforce"  # the CRM destination's id: forgetting a person erases their records there (`record_erasures`)


def build_destinations(registry: Registry, settings: HubSettings, forget_tokens: ForgetTokens) -> dict[str, Destination]:
    """Every configured destination; all their settings problems are reported together."""
    return _merged([
        lambda: sms_destination(registry, settings),
        lambda: crm_destination(registry, settings),
        lambda: push_destination(registry, settings, forget_tokens),
        lambda: webhook_destinations(registry, settings),
        lambda: email_destination(registry, settings),
    ])


def sms_destination(registry: Registry, settings: HubSettings) -> dict[str, Destination]:
    """`twilio_sms`, always built: its defaults point at Twilio's test credentials."""
    return _configured(registry, settings, "twilio_sms", "HUB_TWILIO_*", {
        "account_sid": settings.twilio_account_sid,
        "auth_token": settings.twilio_auth_token,
        "from_number": settings.twilio_from_number,
        "api_base_url": settings.twilio_api_base_url,
        "status_callback_url": settings.public_url("/v1/callbacks/twilio_sms"),
    })


def crm_destination(registry: Registry, settings: HubSettings) -> dict[str, Destination]:
    """`salesforce`, when a connected app's consumer key is set."""
    if not settings.salesforce_consumer_key:
        return {}
    return _configured(registry, settings, CRM, "HUB_SALESFORCE_*", {
        "consumer_key": settings.salesforce_consumer_key,
        "consumer_secret": settings.salesforce_consumer_secret,
        "username": settings.salesforce_username,
        "password": settings.salesforce_password,
        "domain": settings.salesforce_domain,
        "api_version": settings.salesforce_api_version,
        "sobject": settings.salesforce_sobject,
        "external_id_field": settings.salesforce_external_id_field,
        "intent_field": settings.salesforce_intent_field,
        "task_external_id_field": settings.salesforce_task_external_id_field,
        "api_base_url": settings.salesforce_api_base_url,
    })


def record_erasures(settings: HubSettings) -> frozenset[str]:
    """The CRM destinations in which forgetting a person erases the records the hub wrote for them
    (`hub.store.erasures`).

    Read from settings, not from the destinations built: a process without
    the CRM's credentials (an API node in a rolling deploy) still plans the
    erasures, which wait in the outbox for a process that has them. Nothing
    else is read here: the record type an update wrote by default is the
    sending node's (HUB_SALESFORCE_SOBJECT), which this one may not know.
    """
    return frozenset({CRM}) if settings.salesforce_erase_on_forget else frozenset()


def push_destination(registry: Registry, settings: HubSettings, forget_tokens: ForgetTokens) -> dict[str, Destination]:
    """`fcm_push`, when a service-account key is set; `forget_tokens` is how it reports dead devices to the hub."""
    if not settings.fcm_credentials_file:
        return {}
    return _configured(registry, settings, "fcm_push", "HUB_FCM_*", {
        "credentials_file": settings.fcm_credentials_file,
        "project_id": settings.fcm_project_id,
        "api_base_url": settings.fcm_api_base_url,
    }, forget_tokens=forget_tokens)


def webhook_destinations(registry: Registry, settings: HubSettings) -> dict[str, Destination]:
    """`outbound_webhook` and `chat_webhook`, each when its URL is set: an empty one is unset, as an emptied
    setting is everywhere in the hub (`HUB_CHAT_WEBHOOK_URL=` turns chat offers off)."""
    allowed = [network for network in settings.webhook_allowed_networks.split(",") if network.strip()]
    wanted = [
        ("outbound_webhook", settings.outbound_webhook_url, settings.outbound_webhook_secret,
         settings.outbound_webhook_previous_secret, "HUB_OUTBOUND_WEBHOOK_*"),
        ("chat_webhook", settings.chat_webhook_url, settings.chat_webhook_secret,
         settings.chat_webhook_previous_secret, "HUB_CHAT_WEBHOOK_*"),
    ]
    return _merged([
        partial(_configured, registry, settings, slug, prefix, {
            "url": url, "secret": secret, "previous_secret": previous, "allowed_networks": allowed,
            "timeout_seconds": settings.webhook_timeout_seconds,
        })
        for slug, url, secret, previous, prefix in wanted
        if url
    ])


def email_destination(registry: Registry, settings: HubSettings) -> dict[str, Destination]:
    """`email_smtp`, always built: its defaults point at a local relay, as Twilio's point at the sandbox."""
    return _configured(registry, settings, "email_smtp", "HUB_SMTP_* / HUB_EMAIL_FROM / HUB_UNSUBSCRIBE_*", {
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
    })


def _merged(builders: Sequence[Callable[[], dict[str, Destination]]]) -> dict[str, Destination]:
    """Every builder's destinations; all their settings problems are reported together."""
    built: dict[str, Destination] = {}
    problems: list[str] = []
    for build in builders:
        try:
            built.update(build())
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return built


def _configured(
    registry: Registry, settings: HubSettings, slug: str, where: str, values: dict[str, object], **hooks: object
) -> dict[str, Destination]:
    """The `slug` connector configured from settings (`where` names them in errors), with the send timeout.

    `hooks` go to the connector's constructor: callbacks into the hub such as
    FCM's `forget_tokens`, which a connector may not reach by itself.
    """
    connector = registry.destinations[slug]
    config = connector.validate_config(where, {"timeout_seconds": settings.send_timeout_seconds, **values})
    return {slug: connector(slug, config, **hooks)}  # type: ignore[call-arg]
