"""The wallet history's reads (SPEC §6 `GET /v1/wallets/{id}/history`): one keyset page, newest first.

The ledger's postings are the one ordered stream of everything that moved a wallet's
points, so the history is read from them: the wallet's accounts (`account.wallet_id`),
then, for each account and side, the postings below the cursor in descending sequence
(`ix_posting_debit_wallet` / `ix_posting_credit_wallet`, partial indexes of the postings
that touch a wallet account, migration 20261204_wallet_history), merged. Each page reads a
few dozen postings whatever the wallet's age, and the cursor is the oldest posting sequence
of the page's last event: postings made later get higher sequences and never shift a page.
`engine/wallet_history.py` groups postings into events; the rows around them (awards,
payments, redemption legs, lots, grants) add the campaign terms and dates.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import limits
from engine.store.models import AccountRow, AwardRow, GrantRow, PaymentRow, PointLotRow, RedemptionLegRow
from engine.timeutil import format_instant
from engine.wallet_book import lot_id
from engine.wallet_history import HistoryEvent, WalletPosting, award_status, group_events

_COLUMNS = "sequence, payment_id, campaign_id, campaign_version, reason, amount, posted_at_us"
# The predicate of the two partial indexes, repeated literally so the planner may use them.
_WALLET_ACCOUNT = "LIKE 'wallet:%'"


def _postings_below(session: Session, accounts: list[str], before: int, count: int) -> list[WalletPosting]:
    """The `count` newest postings below sequence `before` that debit or credit one of `accounts`:
    for each account and side the `count` newest (a backward scan of a partial index), merged.
    On PostgreSQL the accounts go in as one array under a LATERAL join, so the statement (and its
    planning, which would dominate with a subquery per account) is the same for any wallet."""
    params: dict[str, Any] = {"before": before, "n": count}
    pg = session.get_bind().dialect.name == "postgresql"
    parts = []
    for side in ("debit", "credit"):
        scan = (
            f"SELECT {_COLUMNS} FROM posting WHERE {side}_account_id = {{account}} "
            f"AND {side}_account_id {_WALLET_ACCOUNT} AND sequence < :before ORDER BY sequence DESC LIMIT :n"
        )
        if pg:
            params["accounts"] = accounts
            parts.append(
                f"SELECT p.* FROM unnest(CAST(:accounts AS varchar[])) AS a(id) "
                f"CROSS JOIN LATERAL ({scan.format(account='a.id')}) AS p"
            )
        else:
            for i, account in enumerate(accounts):
                params[f"a{i}"] = account
                parts.append(f"SELECT * FROM ({scan.format(account=f':a{i}')}) AS {side[0]}{i}")
    # UNION, not UNION ALL: a credit moves points between two accounts of the same wallet.
    sql = "SELECT * FROM (" + " UNION ".join(parts) + ") AS u ORDER BY sequence DESC LIMIT :n"
    return [WalletPosting(*row) for row in session.execute(text(sql), params)]


def _events(session: Session, wallet_id: str, before: int, limit: int) -> tuple[list[HistoryEvent], bool]:
    """Up to `limit` complete events below `before`, newest first, and whether more follow."""
    accounts = sorted(session.execute(select(AccountRow.id).where(AccountRow.wallet_id == wallet_id)).scalars())
    if not accounts:
        return [], False
    postings: list[WalletPosting] = []
    batch = limit + 8  # most events are one posting: usually one round
    while True:
        chunk = _postings_below(session, accounts, before, batch)
        postings.extend(chunk)
        events = group_events(postings)
        if len(chunk) < batch:  # the stream ended: every event is complete
            return events[:limit], len(events) > limit
        if len(events) > limit:  # a later event began, so the first `limit` are complete
            return events[:limit], True
        before = chunk[-1].sequence


def wallet_history(engine: Engine, wallet_id: str, before: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the wallet's events below posting sequence `before` (0: from the newest), and
    the next page's `before`, or None at the end."""
    with Session(engine) as session:
        events, more = _events(session, wallet_id, before or limits.SEQUENCE_MAX, limit)
        page = _describe(session, events)
    return page, (events[-1].first_sequence if more and events else None)


def _where_in(session: Session, columns: list[Any], key: Any, values: set[str], *order: Any) -> list[Any]:
    """Rows of `columns` whose `key` is one of `values`; no query at all for none."""
    if not values:
        return []
    return list(session.execute(select(*columns).where(key.in_(sorted(values))).order_by(*order)))


def _describe(session: Session, events: list[HistoryEvent]) -> list[dict[str, Any]]:
    """Each event with its campaign terms, transaction and dates, from the rows around the postings."""

    # One query per kind of row the page needs, none for a kind it does not.
    def of(*types: str) -> set[str]:
        return {e.source_id for e in events if e.source_id is not None and e.type in types}

    pay, a, g, r, lot = PaymentRow, AwardRow, GrantRow, RedemptionLegRow, PointLotRow
    payments = {
        row.id: row
        for row in _where_in(
            session,
            [pay.id, pay.merchant_id, pay.original_id],
            pay.id,
            of("earned", "credited", "redeemed", "returned", "clawed_back", "expired"),
        )
    }
    award_columns = [a.payment_id, a.campaign_id, a.campaign_version, a.points, a.pending, a.clawed_back]
    awards = {
        (row.payment_id, row.campaign_id): row
        for row in _where_in(session, [*award_columns, a.capped_by, a.credit_at_us], a.payment_id, of("earned"))
    }
    grants = {row.id: row for row in _where_in(session, [g.id, g.reason], g.id, of("granted"))}
    legs: dict[str, list[Any]] = defaultdict(list)
    for leg in _where_in(
        session,
        [r.payment_id, r.lot_id, r.campaign_id, r.points],
        r.payment_id,
        of("redeemed"),
        r.payment_id,
        r.position,
    ):
        legs[leg.payment_id].append(leg)
    lot_ids = {leg.lot_id for ls in legs.values() for leg in ls}
    lot_ids |= {
        lot_id(e.source_id, e.campaign_id)
        for e in events
        if e.source_id and e.campaign_id and e.type in ("earned", "credited", "expired", "granted")
    }
    expiry = {row.id: row.expires_at_us for row in _where_in(session, [lot.id, lot.expires_at_us], lot.id, lot_ids)}
    out = []
    for e in events:
        payment = payments.get(e.source_id) if e.source_id else None
        item: dict[str, Any] = {
            "sequence": e.sequence,
            "type": e.type,
            "at": format_instant(e.posted_at_us),
            "points": e.points,
            "campaign_id": e.campaign_id,
            "campaign_version": e.postings[0].campaign_version if e.campaign_id else None,
            "transaction_id": e.source_id if payment is not None else None,
            "merchant_id": payment.merchant_id if payment is not None else None,
        }
        if payment is not None and payment.original_id is not None:
            item["original_id"] = payment.original_id
        if e.type == "earned":
            award = awards[(e.source_id or "", e.campaign_id or "")]
            item.update(
                status=award_status(award.points, award.pending, award.clawed_back),
                capped_by=award.capped_by,
                credit_at=format_instant(award.credit_at_us),
                campaign_version=award.campaign_version,
            )
        if e.type in ("earned", "credited", "expired", "granted") and e.source_id and e.campaign_id:
            expires = expiry.get(lot_id(e.source_id, e.campaign_id))
            item["expires_at"] = format_instant(expires) if expires is not None else None
        if e.type == "granted":
            grant = grants.get(e.source_id)
            item["grant_id"] = e.source_id
            item["reason"] = grant.reason if grant is not None else None
        if e.type == "redeemed":
            item["lots"] = [
                {
                    "lot_id": leg.lot_id,
                    "campaign_id": leg.campaign_id,
                    "points": leg.points,
                    "expires_at": format_instant(expiry[leg.lot_id]) if leg.lot_id in expiry else None,
                }
                for leg in legs.get(e.source_id or "", [])
            ]
        if e.type == "returned":
            by_campaign: dict[str, int] = defaultdict(int)
            for p in e.postings:
                by_campaign[p.campaign_id or ""] += p.amount
            item["campaigns"] = [{"campaign_id": c, "points": n} for c, n in sorted(by_campaign.items())]
        out.append(item)
    return out
