"""Rating: how points are computed (SPEC §4).

`rate(catalog, events, state)` rates a batch of purchases and refunds in
acceptance order and returns one `Outcome` per event, updating `state`.
The loop runs in the compiled kernel (`ext/_kernel_c.pyx`) when it is built,
else in its pure-Python twin (`_kernel_py.py`); SETAPAY_PURE_PYTHON=1 forces
the twin. `ENGINE` names the one in use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import _kernel_py
from .columns import Catalog, Columns, Event, build_catalog, decode, encode
from .state import AwardState, PurchaseState, RatingState, window_key

PURE_PYTHON_FORCED = os.environ.get("SETAPAY_PURE_PYTHON", "") not in ("", "0")

if PURE_PYTHON_FORCED:
    _kernel = _kernel_py
else:
    try:
        from . import _kernel_c as _kernel  # type: ignore[no-redef]  # the compiled twin: same names, see _kernel_c.pyi
    except ImportError:  # pragma: no cover - the tests fail if this happens unforced
        _kernel = _kernel_py

ENGINE: str = _kernel.ENGINE
ENGINES = {"python": _kernel_py}
try:
    from . import _kernel_c

    ENGINES["cython"] = _kernel_c
except ImportError:  # pragma: no cover
    pass

__all__ = [
    "Award",
    "AwardState",
    "Catalog",
    "Clawback",
    "Columns",
    "ENGINE",
    "ENGINES",
    "Outcome",
    "PurchaseState",
    "RatingState",
    "build_catalog",
    "rate",
    "rate_columns",
    "window_key",
]


# Award and Clawback are NamedTuples: immutable values made for every award and refund a
# group rates, where a frozen dataclass's __init__ (a __setattr__ call per field) cost ~3x.
class Award(NamedTuple):
    campaign_id: str
    campaign_version: int
    points: int
    capped_by: str | None


class Clawback(NamedTuple):
    campaign_id: str
    points: int


@dataclasses.dataclass(slots=True)
class Outcome:
    key: str
    type: str  # "purchase" | "refund"
    declined: str | None  # None when accepted, else a stable decline code
    awards: list[Award] = dataclasses.field(default_factory=list)
    clawbacks: list[Clawback] = dataclasses.field(default_factory=list)
    points_returned: int = 0
    original_key: str | None = None

    @property
    def points_awarded(self) -> int:
        return sum(a.points for a in self.awards)

    @property
    def points_clawed_back(self) -> int:
        return sum(c.points for c in self.clawbacks)

    def as_expected(self) -> dict[str, Any]:
        """The shape of a vector file's `expected` entry."""
        if self.declined:
            return {"declined": self.declined}
        if self.type == "purchase":
            return {
                "awards": [
                    {"campaign_id": a.campaign_id, "points": a.points, "capped_by": a.capped_by} for a in self.awards
                ],
                "points_awarded": self.points_awarded,
            }
        return {
            "clawbacks": [{"campaign_id": c.campaign_id, "points": c.points} for c in self.clawbacks],
            "points_clawed_back": self.points_clawed_back,
            "points_returned": self.points_returned,
        }


def rate_columns(cols: Columns, engine: str | None = None) -> None:
    """Run one engine's loop over a columnar batch, in place."""
    (ENGINES[engine] if engine else _kernel).rate_columns(cols)


def rate(catalog: Catalog, events: Sequence[Event], state: RatingState, engine: str | None = None) -> list[Outcome]:
    """Rate `events` ((key, Purchase | Refund) in acceptance order) against `state`."""
    cols, ctx = encode(catalog, events, state)
    rate_columns(cols, engine)
    return decode(catalog, cols, ctx, state)
