"""Sending a rule's params as JSON: checked once where they load, encoded once where they are sent."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.test_webhook_destination import RawReceiver
from tests.test_webhook_destination import delivery as webhook_delivery
from tests.test_webhook_destination import to as webhook_to
from tests.test_webhooks20 import sending


class CountedMap(dict[str, Any]):
    """A param map that counts how often the json module reads it (its encoder asks a dict subclass for `items`)."""

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.reads = 0

    def items(self) -> Any:
        self.reads += 1
        return super().items()


def test_a_webhook_send_encodes_each_param_once() -> None:
    """Each attempt JSON-encoded every param twice (three times once its request summary was logged): a check on
    each look-up of the event type, then the body, on the delivery engine's benchmarked path."""
    with RawReceiver(sending(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as receiver:
        target = webhook_to(receiver.url)
        offer = CountedMap(code="SPRING")
        result = target.deliver(webhook_delivery(params={"type": "chat.offer", "offer": offer}))
        target.close()
    assert result.status == "delivered"
    assert len(receiver.heads) == 1
    assert offer.reads == 1


def test_checking_salesforce_params_loads_no_webhook_client() -> None:
    """`no_json_form` lived in the webhook connector: checking a Salesforce rule's params loaded the webhook
    module, with aiohttp and the SSRF guard, into a plain pydantic params module."""
    code = (
        "import sys, connectors.destinations.salesforce_params\n"
        "print(sorted(name for name in ('aiohttp', 'connectors.destinations.webhook') if name in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
