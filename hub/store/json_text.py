"""JSON text for the SQLite store: orjson where it reads and writes what the json module would, json where not.

The pipeline writes about five JSON documents per event (the touchpoint's
four, decisions) and reads about four (the inbox payload, traits, the recent
past); the json module took 3-5 us for each, orjson (C, well kept) a tenth of
that. orjson differs from json in a few corners, and there the json module
answers, so what a column holds loads back as before. Stored text may differ
in spacing and in non-ASCII characters written as themselves, never in value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import orjson

# Subclasses (str and int enums, dict subclasses), datetimes and dataclasses go to json, which decides as before.
_AS_JSON_WOULD = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19  # an integer beyond 64 bits has at least 19 digits


def dumps(value: Any) -> str:
    """`json.dumps(value)`'s document: orjson's text unless orjson refuses the value or may have changed it."""
    try:
        text = orjson.dumps(value, option=_AS_JSON_WOULD)
    except TypeError:  # integers beyond 64 bits, lone surrogates, keys that are not strings: json handles them
        return json.dumps(value)
    if b"null" in text:  # orjson writes NaN and infinities as null, json as NaN and Infinity
        return json.dumps(value)
    return text.decode()


def loads(text: str) -> Any:
    """`json.loads(text)`: by orjson unless the text has a long digit run, which orjson would read as a float."""
    return loads_bytes(text.encode(), lambda _data: json.loads(text))


def loads_bytes(data: bytes, otherwise: Callable[[bytes], Any]) -> Any:
    """orjson's reading of `data` where it is the json module's, `otherwise(data)` where it may not be: a long
    digit run (orjson reads a float), or a document orjson refuses (NaN, Infinity, escaped lone surrogates,
    UTF-16 or -32, nesting past 1,024 levels), which `otherwise` reads or says why not."""
    if _LONG_NUMBER not in data.translate(_DIGITS_AS_ZERO):
        with suppress(orjson.JSONDecodeError):
            return orjson.loads(data)
    return otherwise(data)
