"""Wallet lifecycle runs and grants: crediting pending awards, expiring lots, finance grants.

Each run works in chunks, each chunk one database transaction under the
sequencer lock, so it is safe to run while terminals post and while another
run is going: whatever one chunk credited or expired is no longer due for the
next, so a run repeated with the same `as_of` posts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, cast

from sqlalchemy import CursorResult, delete, literal, select, tuple_
from sqlalchemy.orm import Session

from engine import events, limits, metrics
from engine import ledger_rules as rules
from engine.audit import OPERATOR, Actor
from engine.errors import decline
from engine.store import audit, remembered
from engine.store import events as outbox
from engine.store.books import load_books
from engine.store.ledger import CatalogSnapshot, Ledger, Result, replay_answer
from engine.store.models import (
    WALLET_LOT,
    AwardRow,
    CampaignRow,
    EventRow,
    GrantRow,
    IdempotencyRow,
    LifecycleRunRow,
)
from engine.timeutil import format_instant
from engine.wallet_book import expiry_posting

CHUNK_MAX = 2_000
LOT = WALLET_LOT.c  # every lot, wherever it is kept (`engine.store.books`)
DAY_US = 86_400_000_000


@metrics.job("credit")
def credit_due(
    ledger: Ledger, as_of_us: int, chunk: int = CHUNK_MAX, catalog: CatalogSnapshot | None = None
) -> dict[str, str | int]:
    """Post every pending award due by `as_of_us` from pending to available. With `catalog`,
    against it instead of the head's (the history import: what was in force then)."""
    credited = points = 0
    started = ledger.clock.now_us()
    while True:
        with ledger.unit_of_work(catalog) as unit:
            session = unit.session
            due = session.execute(
                select(
                    AwardRow.payment_id,
                    AwardRow.campaign_id,
                    AwardRow.campaign_version,
                    AwardRow.wallet_id,
                    AwardRow.pending,
                    AwardRow.credit_at_us,
                )
                .where(AwardRow.pending > 0, AwardRow.credit_at_us <= as_of_us)
                .order_by(AwardRow.credit_at_us, AwardRow.payment_id, AwardRow.campaign_id)
                .limit(chunk)
            ).all()
            if not due:
                session.add(
                    LifecycleRunRow(
                        kind="credit", as_of_us=as_of_us, started_at_us=started, items=credited, points=points
                    )
                )
                break
            books = load_books(session, {a.wallet_id for a in due})
            # The lot expires after the validity of the version that awarded the points (what
            # the purchase's answer promised), whatever version is current when they are credited.
            validity = ledger.validity_of_versions(session, {(a.campaign_id, a.campaign_version) for a in due})
            writer = unit.writer(unit.now_us(), books)
            said: list[events.Event] = []
            for award in due:
                amount = award.pending
                writer.post(
                    rules.Posting(
                        rules.CREDIT,
                        rules.pending_account(award.wallet_id, award.campaign_id),
                        rules.available_account(award.wallet_id, award.campaign_id),
                        amount,
                        award.payment_id,
                        award.campaign_id,
                        award.campaign_version,
                    )
                )
                lot = writer.new_lot(
                    award.payment_id,
                    award.wallet_id,
                    award.campaign_id,
                    award.credit_at_us,
                    validity.get((award.campaign_id, award.campaign_version)),
                    on_award=True,
                )
                writer.credit_points(books[award.wallet_id], lot, amount, award.payment_id)
                writer.award_credited(award.payment_id, award.campaign_id)
                credited += 1
                points += amount
                said.append(
                    events.award_credited(
                        award.wallet_id,
                        award.payment_id,
                        award.campaign_id,
                        award.campaign_version,
                        amount,
                        writer.at_us,
                    )
                )
            writer.flush()
            outbox.record(session, said, writer.at_us)
    return {"kind": "credit", "as_of": format_instant(as_of_us), "awards_credited": credited, "points": points}


@metrics.job("expire")
def expire_due(
    ledger: Ledger, as_of_us: int, chunk: int = CHUNK_MAX, catalog: CatalogSnapshot | None = None
) -> dict[str, str | int]:
    """Post the remaining points of every lot expired by `as_of_us` out of its wallet. With
    `catalog`, against it instead of the head's (the history import)."""
    expired_lots = points = 0
    started = ledger.clock.now_us()
    while True:
        with ledger.unit_of_work(catalog) as unit:
            session = unit.session
            wallets = [
                r[0]
                for r in session.execute(
                    select(LOT.wallet_id)
                    .where(LOT.remaining > 0, LOT.expires_at_us <= as_of_us)
                    .group_by(LOT.wallet_id)
                    .order_by(LOT.wallet_id)
                    .limit(chunk)
                )
            ]
            if not wallets:
                session.add(
                    LifecycleRunRow(
                        kind="expiry", as_of_us=as_of_us, started_at_us=started, items=expired_lots, points=points
                    )
                )
                break
            books = load_books(session, set(wallets))
            writer = unit.writer(unit.now_us(), books)
            said = []
            for wallet_id in wallets:
                for lot, amount in books[wallet_id].expire(as_of_us):
                    writer.post(expiry_posting(wallet_id, lot, amount))
                    expired_lots += 1
                    points += amount
                    said.append(events.points_expired(wallet_id, lot.id, lot.campaign_id, amount, writer.at_us))
            writer.flush()
            outbox.record(session, said, writer.at_us)
    # The warnings' count is not in the answer: a run's answer is what it posted.
    warn_expiring(ledger, as_of_us, chunk)
    return {"kind": "expiry", "as_of": format_instant(as_of_us), "lots_expired": expired_lots, "points": points}


def warn_expiring(ledger: Ledger, as_of_us: int, chunk: int = CHUNK_MAX) -> int:
    """A `points_expiring` event for every lot with points left that expires within 30 days of
    `as_of_us` (and another within 7), each once per lot and threshold: the outbox's unique
    `dedupe_key` makes that exact however often the daily run repeats. Run by `expire_due`, in
    units of work of their own (under the sequencer lock, as every writer of events is)."""
    warned = 0
    for days in events.EXPIRING_DAYS:
        lower, upper = events.expiring_window_us(as_of_us, days)
        prefix = f"{events.POINTS_EXPIRING}:{days}:"
        while True:
            with ledger.unit_of_work() as unit:
                session = unit.session
                said_already = select(EventRow.id).where(EventRow.dedupe_key == literal(prefix) + LOT.id)
                lots = list(
                    session.execute(
                        select(WALLET_LOT)
                        .where(
                            LOT.remaining > 0,
                            LOT.expires_at_us > lower,
                            LOT.expires_at_us <= upper,
                            ~said_already.exists(),
                        )
                        .order_by(LOT.expires_at_us, LOT.id)
                        .limit(chunk)
                    )
                )
                found = [
                    events.points_expiring(
                        lot.wallet_id, lot.id, lot.campaign_id, lot.remaining, lot.expires_at_us, days
                    )
                    for lot in lots
                ]
                outbox.record(session, found, ledger.clock.now_us())
                warned += len(found)
            if len(lots) < chunk:
                break
    return warned


def grant(
    ledger: Ledger,
    scope: str,
    idempotency_key: str,
    wallet_id: str,
    campaign_id: str,
    points: int,
    reason: str,
    actor: Actor = OPERATOR,
) -> Result:
    """Points to a wallet against a campaign's budget, exactly and idempotently (audited)."""
    request = {"wallet_id": wallet_id, "campaign_id": campaign_id, "points": points, "reason": reason}
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    with ledger.unit_of_work() as unit:
        session = unit.session
        campaigns = unit.catalog.campaigns
        remembered = session.get(IdempotencyRow, (scope, idempotency_key))
        if remembered is not None:
            return replay_answer(
                remembered.request_hash, remembered.response_status, remembered.response_json, request_hash
            )
        meter = session.get(CampaignRow, campaign_id)
        if meter is None:
            return Result(*decline("not_found", f"campaign {campaign_id} is not known"), remember=False)
        campaign = campaigns[campaign_id]
        if campaign.funding_merchant is not None:
            # A merchant funds its campaign's points on its own purchases; points granted against it
            # would be charged to the merchant's payout at settlement without the merchant.
            return Result(
                *decline("campaign_merchant_funded", f"campaign {campaign_id} is funded by a merchant"),
                remember=False,
            )
        now = unit.date_change()
        if campaign.budget is not None and meter.issued_net + points > campaign.budget:
            result = Result(
                *decline("budget_exceeded", f"{campaign.budget - meter.issued_net} points left in the budget")
            )
        else:
            grant_id = "gr_" + secrets.token_hex(12)
            books = load_books(session, {wallet_id})
            writer = unit.writer(now, books)
            writer.post(
                rules.Posting(
                    rules.GRANT,
                    rules.funding_account(campaign_id),
                    rules.available_account(wallet_id, campaign_id),
                    points,
                    grant_id,
                    campaign_id,
                    campaign.version,
                )
            )
            lot = writer.new_lot(grant_id, wallet_id, campaign_id, now)
            writer.credit_points(books[wallet_id], lot, points, grant_id)
            writer.flush()
            outbox.record(
                session,
                events.budget_crossings(
                    {campaign_id: meter.issued_net},
                    {campaign_id: meter.issued_net + points},
                    {campaign_id: campaign.budget},
                    now,
                ),
                now,
            )
            meter.issued_net += points
            session.add(
                GrantRow(
                    id=grant_id,
                    wallet_id=wallet_id,
                    campaign_id=campaign_id,
                    campaign_version=campaign.version,
                    points=points,
                    reason=reason,
                    granted_at_us=now,
                )
            )
            result = Result(
                201,
                {
                    "id": grant_id,
                    **request,
                    "campaign_version": campaign.version,
                    "granted_at": format_instant(now),
                    "expires_at": format_instant(lot.expires_at_us),
                },
            )
            audit.record(session, actor, "grant.create", f"wallet:{wallet_id}", None, result.body, at_us=now)
        session.add(
            IdempotencyRow(
                terminal_id=scope,
                key=idempotency_key,
                request_hash=request_hash,
                response_status=result.status,
                response_json=json.dumps(result.body),
                payment_id=result.body.get("id"),
                created_at_us=now,
            )
        )
        return result


@metrics.job("purge_answers")
def purge_remembered_answers(ledger: Ledger, retention_days: int, chunk: int = CHUNK_MAX) -> dict[str, str | int]:
    """Forget remembered answers (`idempotency_key` rows) older than `retention_days` by the
    engine's clock; SPEC §6 keeps them at least 30 days, so a shorter retention is refused.

    Those rows are the answers of declines and grants, and of payments accepted before payments
    carried their keys (migration `20261209_payment_keys`); an admin's creations' answers, whose
    secrets are kept sealed (`engine.store.remembered`), go once `remembered.SECRET_KEPT_US` old,
    whatever the retention. An accepted payment's own answer is
    on its `payment` row, under its key, and is never purged: its retry replays at any age. Only
    answers go: payments, awards, postings and `point_grant` rows stay. A purged key used again
    is a new request: a declined request is decided afresh, and a payment whose answer was in a
    purged row, sent again, is declined `receipt_already_used` (its receipt's jti is unique per
    app in `payment`), so a sale is still never posted twice. Chunked, each chunk its own short
    transaction, without the sequencer lock: a retry racing the purge is either replayed or,
    once its row is gone, decided afresh as above.
    """
    if retention_days < limits.IDEMPOTENCY_RETENTION_DAYS_MIN:
        raise ValueError(f"remembered answers are kept at least {limits.IDEMPOTENCY_RETENTION_DAYS_MIN} days")
    started = ledger.clock.now_us()
    cutoff = started - retention_days * DAY_US
    purged = 0
    while True:
        with Session(ledger.engine) as session, session.begin():
            oldest = (
                select(IdempotencyRow.terminal_id, IdempotencyRow.key)
                .where(IdempotencyRow.created_at_us < cutoff)
                .order_by(IdempotencyRow.created_at_us)
                .limit(chunk)
            )
            keys = [tuple(row) for row in session.execute(oldest)]
            if keys:
                # The age again: a key another purge freed may have been used afresh meanwhile.
                done = session.execute(
                    delete(IdempotencyRow).where(
                        tuple_(IdempotencyRow.terminal_id, IdempotencyRow.key).in_(keys),
                        IdempotencyRow.created_at_us < cutoff,
                    )
                )
                purged += cast("CursorResult[Any]", done).rowcount  # a DML statement's result is a cursor's
            if len(keys) < chunk:
                # An admin's creations: a day's keeping of their sealed secrets, not the retention's.
                created = session.execute(
                    delete(IdempotencyRow).where(
                        IdempotencyRow.terminal_id.startswith(remembered.SCOPE_PREFIX, autoescape=True),
                        IdempotencyRow.created_at_us <= started - remembered.SECRET_KEPT_US,
                    )
                )
                purged += cast("CursorResult[Any]", created).rowcount
                # `as_of_us`: answers remembered before this instant were purged.
                session.add(
                    LifecycleRunRow(kind="idempotency", as_of_us=cutoff, started_at_us=started, items=purged, points=0)
                )
                break
    return {"kind": "idempotency", "before": format_instant(cutoff), "answers_purged": purged}
