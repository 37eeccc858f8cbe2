"""Reading the rating vector files of ../shared/vectors (format in their README)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from engine.model import Campaign, Merchant, Transaction
from engine.rating import RatingState, build_catalog, rate
from engine.rating.columns import Event

_transaction = TypeAdapter(Transaction)


@dataclasses.dataclass
class VectorFile:
    name: str
    merchants: list[Merchant]
    campaigns: list[Campaign]
    events: list[Event]
    expected: dict[str, Any]
    raw: dict[str, Any]


def load(path: str | Path) -> VectorFile:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    events: list[Event] = []
    for event in raw["events"]:
        body = {k: v for k, v in event.items() if k != "id"}
        events.append((event["id"], _transaction.validate_python(body)))
    return VectorFile(
        name=raw.get("name", Path(path).stem),
        merchants=[Merchant.model_validate(m) for m in raw["merchants"]],
        campaigns=[Campaign.model_validate(c) for c in raw["campaigns"]],
        events=events,
        expected=raw.get("expected", {}),
        raw=raw,
    )


def rate_file(vector: VectorFile, engine: str | None = None) -> dict[str, dict[str, Any]]:
    """Rate a vector file's events in order, one at a time as a server would accept them."""
    catalog = build_catalog(vector.merchants, vector.campaigns)
    state = RatingState()
    results: dict[str, dict[str, Any]] = {}
    for event in vector.events:
        (outcome,) = rate(catalog, [event], state, engine)
        results[outcome.key] = outcome.as_expected()
    return results


def rate_file_batched(vector: VectorFile, engine: str | None = None) -> dict[str, dict[str, Any]]:
    """Rate all of a vector file's events in one batch (must equal `rate_file`)."""
    catalog = build_catalog(vector.merchants, vector.campaigns)
    return {o.key: o.as_expected() for o in rate(catalog, vector.events, RatingState(), engine)}


def differences(expected: Mapping[str, object], actual: Mapping[str, object]) -> list[str]:
    out = []
    for key in expected.keys() | actual.keys():
        if expected.get(key) != actual.get(key):
            out.append(f"{key}: expected {json.dumps(expected.get(key))} got {json.dumps(actual.get(key))}")
    return sorted(out)
