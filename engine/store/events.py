"""The event outbox (SPEC §10): events written in the transaction of the change they describe.

Writers hand the `Event`s that `engine/events.py` decided to one of two calls, in their own
unit of work (every one holds the sequencer lock from the insert to the commit, which is what
makes `event.id` the commit order the feed pages by):

- `queue_group(batch, ...)`: the money path's, from `Ledger._decide_group`: clawbacks of the
  refunds it accepted and the budget thresholds its meters crossed, queued into the group's
  `bulk.WriteBatch` so they go out with the rest of its writes;
- `record(session, events, at_us)`: everyone else's (crediting, expiry and its warnings, grants,
  settlement runs, payout results), an INSERT that skips an event whose `dedupe_key` was
  written already.

`page(engine, after, types, limit)` reads the feed for `GET /v1/events`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import events
from engine.model import Campaign
from engine.store import bulk
from engine.store.models import EventRow
from engine.timeutil import format_instant

if TYPE_CHECKING:
    from engine.store.ledger import Result


def _row(event: events.Event, at_us: int) -> dict[str, Any]:
    return dict(
        type=event.type,
        wallet_id=event.wallet_id,
        dedupe_key=event.dedupe_key,
        data_json=json.dumps(event.data, ensure_ascii=False, sort_keys=True),
        created_at_us=at_us,
    )


def _unsaid(session: Session, found: Sequence[events.Event]) -> list[events.Event]:
    """`found` less the events whose dedupe key the outbox holds already."""
    keys = [e.dedupe_key for e in found if e.dedupe_key is not None]
    reads = bulk.ReadBatch(session)
    known = reads.where_in(EventRow.__table__, ["dedupe_key"], "dedupe_key", keys)
    reads.run()
    said = {r[0] for r in known.rows}
    return [e for e in found if e.dedupe_key is None or e.dedupe_key not in said]


class Said(NamedTuple):
    """Which `budget_threshold` keys were looked up with a group's reads, and the read."""

    keys: frozenset[str]
    read: bulk.Read


def queue_said(reads: bulk.ReadBatch, campaigns: Mapping[str, Campaign]) -> Said:
    """Queue the look-up of which `budget_threshold` events of these campaigns' budgets the outbox
    holds already (a few keys a campaign): `queue_group`'s `said`, read with a group's other reads."""
    keys = events.budget_threshold_keys({cid: c.budget for cid, c in campaigns.items()})
    return Said(frozenset(keys), reads.where_in(EventRow.__table__, ["dedupe_key"], "dedupe_key", keys))


def queue_group(
    batch: bulk.WriteBatch,
    results: Iterable[Result | None],
    spend_before: Mapping[str, int],
    spend_after: Mapping[str, int],
    campaigns: Mapping[str, Campaign],
    at_us: int,
    said: Said | None = None,
    expired: Sequence[events.Event] = (),
) -> None:
    """The events of one rated group of `Ledger.submit`, queued into its write batch: the
    `points_expired` of the lots it expired before spending (`expired`), a `clawback` per
    accepted refund that took points back (from the answers), a `budget_threshold` per campaign
    meter that crossed 80 % or 100 % of its budget. A threshold
    crossed again after clawbacks lowered the meter is not said twice: `said` tells the threshold
    keys the outbox held when the group's reads ran (`queue_said`); a key it did not ask about (a
    budget changed since) is looked up in `batch`'s session, as all are without `said`, only when
    a crossing happened (rare)."""
    answers = [r.body for r in results if r is not None and r.status == 201 and not r.replayed]
    found = [*expired, *events.clawbacks(answers)]
    crossings = events.budget_crossings(
        spend_before, spend_after, {cid: c.budget for cid, c in campaigns.items()}, at_us
    )
    if crossings:
        asked = said.keys if said is not None else frozenset()
        held = {row[0] for row in said.read.rows} if said is not None else set()
        rest = [e for e in crossings if e.dedupe_key not in asked]
        if rest:
            unsaid = {e.dedupe_key for e in _unsaid(batch.session, rest)}
            held |= {e.dedupe_key for e in rest if e.dedupe_key not in unsaid}
        found += [e for e in crossings if e.dedupe_key not in held]
    batch.insert(EventRow.__table__, [_row(e, at_us) for e in found])


def record(session: Session, found: Sequence[events.Event], at_us: int) -> None:
    """Write `found` in `session`'s transaction; an event whose dedupe key is written already is
    skipped (ON CONFLICT DO NOTHING), so a run repeated or raced says each such event once."""
    if not found:
        return
    batch = bulk.WriteBatch(session)
    batch.upsert(EventRow.__table__, [_row(e, at_us) for e in found], key=["dedupe_key"])
    batch.send()


def view(event_id: int, type_: str, wallet_id: str | None, data_json: str, created_at_us: int) -> dict[str, Any]:
    """An event as the feed lists it and a webhook delivers it (Standard Webhooks' shape:
    `type`, `timestamp`, `data`)."""
    return {
        "id": event_id,
        "type": type_,
        "timestamp": format_instant(created_at_us),
        "wallet_id": wallet_id,
        "data": json.loads(data_json),
    }


def page(engine: Engine, after: int, types: Sequence[str] | None, limit: int) -> list[dict[str, Any]]:
    """Events with an id above `after`, oldest first, of `types` (all when None), at most `limit`."""
    stmt = select(EventRow.id, EventRow.type, EventRow.wallet_id, EventRow.data_json, EventRow.created_at_us).where(
        EventRow.id > after
    )
    if types:
        stmt = stmt.where(EventRow.type.in_(list(types)))
    with Session(engine) as session:
        return [view(*row) for row in session.execute(stmt.order_by(EventRow.id).limit(limit))]
