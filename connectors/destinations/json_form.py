"""Whether a rule's params can be sent as JSON, for every destination whose provider takes JSON (webhook,
Salesforce, FCM).

Its own module, with nothing but the json module behind it: a plain params module (`salesforce_params`) checks
with it without loading another system's connector and its HTTP clients.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# JSON's rules alone (no separators or key order to match): only whether an encoding exists is asked.
_JSON_FORM = json.JSONEncoder(allow_nan=False)


def no_json_form(value: Any) -> str | None:
    """Why `value` of a rule's params cannot be sent as JSON, or None: YAML's `.nan` and `.inf` load as floats
    the json module writes as ``NaN`` and ``Infinity``, which are not JSON (RFC 8259) and every parser refuses."""
    try:
        _JSON_FORM.encode(value)
    except (TypeError, ValueError):
        return (f"{type(value).__name__} {value!r} has no JSON form to send: quote it, or use a finite number, "
                "true/false, null, a list or a map")
    return None


def json_problems(values: Mapping[str, Any], where: str) -> list[str]:
    """``<where><key>: <reason>`` for each of `values` without a JSON form, in their order."""
    return [f"{where}{key}: {why}" for key, value in values.items() if (why := no_json_form(value))]
