"""What the hub's destinations are given: each provider's credentials, addresses and options (HUB_TWILIO_*,
HUB_SALESFORCE_*, HUB_FCM_*, HUB_SMTP_*, the webhook receivers).

`hub.settings.HubSettings` is these plus how the hub itself runs; kept apart
so each part reads as one list. Checks that span both (a provider's base URL
is checked as the public one is; an emptied file path is unset) are
`HubSettings`'s. Credentials are `SecretStr`, printed as ``**********``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

PREVIOUS_WEBHOOK_SECRET_HELP = "During a rotation, the secret before: messages carry a signature by each until you unset it."


class ProviderSettings(BaseSettings):
    """The providers' settings; read only as part of `HubSettings`, whose configuration (the HUB_ prefix, .env)
    they take."""

    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("sandbox-auth-token")
    twilio_from_number: str = "+15005550006"
    twilio_api_base_url: str | None = Field(
        None, description="Send Twilio API calls here instead of https://api.twilio.com (sandbox, proxy)."
    )

    salesforce_consumer_key: str | None = Field(
        None, description="Connected app consumer key; the salesforce (crm) destination is built only when set."
    )
    salesforce_consumer_secret: SecretStr = SecretStr("")
    salesforce_username: str | None = Field(None, description="With a password: username-password OAuth flow.")
    salesforce_password: SecretStr | None = None
    salesforce_domain: str = Field("login", description="login, test, or the My Domain prefix such as acme.my.")
    salesforce_api_version: str = "59.0"
    salesforce_sobject: str = Field("Lead", description="Lead or Contact: what the profile is upserted as.")
    salesforce_external_id_field: str = Field("Touchhub_Profile_Id__c", description="External-id field holding the profile id.")
    salesforce_intent_field: str = Field("Touchhub_Intent__c", description="Custom field the decision's intent goes to.")
    salesforce_task_external_id_field: str = Field("Touchhub_Delivery_Id__c", description="External-id field on Task.")
    salesforce_api_base_url: str | None = Field(
        None, description="Send Salesforce calls here instead of *.salesforce.com (sandbox, proxy)."
    )
    salesforce_erase_on_forget: bool = Field(
        True, description="Forgetting a person (DELETE /api/profiles/{id}) deletes the Leads and Contacts the hub "
        "upserted for them, with their Tasks; false keeps them, for an org whose sales team owns its records.",
    )

    fcm_credentials_file: Path | None = Field(
        None, description="Service-account key JSON; the fcm_push (push) destination is built only when set."
    )
    fcm_project_id: str | None = Field(None, description="Firebase project id; defaults to the key's project_id.")
    fcm_api_base_url: str | None = Field(
        None, description="Send FCM calls here instead of https://fcm.googleapis.com (sandbox, proxy)."
    )

    smtp_host: str = Field("127.0.0.1", description="SMTP relay of the email destination.")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_tls: str = Field("none", pattern="^(none|starttls|tls)$", description="none, starttls (587) or tls (465).")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: str | None = Field(None, description="PEM bundle to verify the relay with, instead of the system's.")
    email_from: str = Field("Touchpoint Hub <hub@example.com>", description="From address of every email.")

    outbound_webhook_url: str | None = Field(None, description="Receiver of the `webhook` channel; unset or empty: no such destination.")
    outbound_webhook_secret: SecretStr | None = Field(None, description="Its Standard Webhooks signing secret (whsec_...).")
    outbound_webhook_previous_secret: SecretStr | None = Field(None, description=PREVIOUS_WEBHOOK_SECRET_HELP)
    chat_webhook_url: str | None = Field(None, description="Chat widget backend for the `chat` channel; unset or empty: none.")
    chat_webhook_secret: SecretStr | None = Field(None, description="Its Standard Webhooks signing secret (whsec_...).")
    chat_webhook_previous_secret: SecretStr | None = Field(None, description=PREVIOUS_WEBHOOK_SECRET_HELP)
    webhook_allowed_networks: str = Field(
        "", description="Comma-separated non-public networks webhooks may reach (SSRF guard), e.g. 127.0.0.1,10.0.0.0/8."
    )
