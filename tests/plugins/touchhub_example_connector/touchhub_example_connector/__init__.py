"""ExampleForms submissions: one JSON object per request, authenticated by a shared token header."""

import hmac
from datetime import datetime, timezone

import jmespath
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import InboundRequest, ParseResult, Source
from connectors.webhooks import json_document, json_events, require_header
from hub.errors import AuthenticationError

SUBMISSION_ID = jmespath.compile("submission_id")


class ExampleFormConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: SecretStr = Field(description="The token ExampleForms sends in X-Form-Token.")


class ExampleFormSource(Source):
    slug = "example_form"
    title = "ExampleForms submissions"
    docs_url = "https://forms.example.com/docs/webhooks"
    default_mapping = "example_form.yaml"
    Config = ExampleFormConfig

    def verify(self, request: InboundRequest) -> None:
        presented = require_header(request.headers, "X-Form-Token")
        if not hmac.compare_digest(presented.encode(), self.config.token.get_secret_value().encode()):
            raise AuthenticationError("X-Form-Token: token does not match")

    def parse(self, request: InboundRequest) -> ParseResult:
        return json_events(
            self.source_id, json_document(request.body), events=None, message_id=SUBMISSION_ID,
            received_at=datetime.now(timezone.utc).isoformat(),
        )
