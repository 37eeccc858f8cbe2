"""JSON read strictly (SPEC §2 "Strict input"): an object holding a key twice is no JSON this
engine takes, wherever it is read (a request body in `api.strict`, a signed statement in
`setapay verify-statement`): a reader may take the first of two values where a check took the
last."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """An object holds a key twice (compared after unescaping)."""


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads`'s `object_pairs_hook`: the object, or `DuplicateKey`."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise DuplicateKey("an object holds a key twice")
    return found


def loads(text: str | bytes) -> Any:
    """`json.loads(text)` with every object's keys distinct; `DuplicateKey` (a ValueError) else.
    Bytes are UTF-8 without a byte order mark (RFC 8259 §8.1): `json.loads` also took UTF-16 and
    UTF-32 and a leading BOM (helper-106); a `UnicodeDecodeError` or `JSONDecodeError` (both
    ValueErrors) here."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")  # a BOM stays U+FEFF, which JSON refuses
    return json.loads(text, object_pairs_hook=unique_object)
