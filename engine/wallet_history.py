"""A wallet's history (SPEC §6, §10): its postings grouped into the events a resident sees.

Pure rules, no I/O: `engine/store/history.py` reads the wallet's postings newest first and
hands them here. One event is a run of consecutive postings (in the wallet's own stream)
that one change made: the same reason, the same transaction or grant, the same instant and,
except for a redemption and a refund's returned points (which list their lots or campaigns),
the same campaign. `debt_settlement` postings only move a wallet's points between its own
campaign buckets (a clawback repaid from another campaign's lot) and are no event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from engine import ledger_rules as rules

# Posting reason -> the event type the app shows.
EVENT_TYPES = {
    rules.AWARD: "earned",
    rules.CREDIT: "credited",
    rules.REDEMPTION: "redeemed",
    rules.POINTS_RETURN: "returned",
    rules.CLAWBACK: "clawed_back",
    rules.EXPIRY: "expired",
    rules.GRANT: "granted",
}
# Events that span campaigns: one per transaction, with a leg per posting.
_ACROSS_CAMPAIGNS = {rules.REDEMPTION, rules.POINTS_RETURN}


@dataclasses.dataclass(frozen=True)
class WalletPosting:
    """One posting that moves the wallet's points, as the history reads it."""

    sequence: int
    payment_id: str | None  # the purchase, refund or grant; for credit and expiry the lot's source
    campaign_id: str | None
    campaign_version: int | None
    reason: str
    amount: int
    posted_at_us: int


@dataclasses.dataclass
class HistoryEvent:
    """Postings of one change; `sequence` is its newest posting's, `first_sequence` its oldest's."""

    type: str
    sequence: int
    first_sequence: int
    source_id: str | None
    posted_at_us: int
    postings: list[WalletPosting]

    @property
    def points(self) -> int:
        return sum(p.amount for p in self.postings)

    @property
    def campaign_id(self) -> str | None:
        return None if self.type in ("redeemed", "returned") else self.postings[0].campaign_id


def award_status(points: int, pending: int, clawed_back: int) -> str:
    """An award's status now: all clawed back, else pending while any part awaits crediting."""
    if clawed_back == points:
        return "clawed_back"
    return "pending" if pending > 0 else "credited"


def _group_key(p: WalletPosting) -> tuple[object, ...]:
    campaign = None if p.reason in _ACROSS_CAMPAIGNS else p.campaign_id
    return (p.reason, p.payment_id, p.posted_at_us, campaign)


def group_events(postings_newest_first: Iterable[WalletPosting]) -> list[HistoryEvent]:
    """The events of `postings_newest_first` (descending sequence), newest first. The last event
    may be incomplete when the postings are a prefix of the stream: callers drop it unless the
    stream ended."""
    events: list[HistoryEvent] = []
    last_key: tuple[object, ...] | None = None
    for p in postings_newest_first:
        kind = EVENT_TYPES.get(p.reason)
        if kind is None:
            continue
        key = _group_key(p)
        if events and key == last_key:
            event = events[-1]
            assert p.sequence < event.first_sequence, "postings must come newest first"
            event.postings.insert(0, p)  # kept in posting order inside the event
            event.first_sequence = p.sequence
        else:
            events.append(HistoryEvent(kind, p.sequence, p.sequence, p.payment_id, p.posted_at_us, [p]))
        last_key = key
    return events
