"""Whether text has a UTF-8 form.

Python keeps bytes it could not decode as lone surrogates (a command-line
argument typed in a Latin-1 terminal, a JSON escape such as "\\ud800"): such
text prints, compares and hashes, but no database driver can send it and no
UTF-8 consumer can read it, so each place that takes text from outside asks
this before it goes further.
"""

from __future__ import annotations


def has_utf8_form(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
