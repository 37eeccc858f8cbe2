"""The wallet history's reads (SPEC §6 `GET /v1/wallets/{id}/history`): one keyset page, newest first.

The ledger's postings are the one ordered stream of everything that moved a wallet's
points, so the history is read from them: for each of the wallet's accounts
(`account.wallet_id`) and side, the postings below the cursor in descending sequence
(`ix_posting_debit_wallet` / `ix_posting_credit_wallet`, partial indexes of the postings
that touch a wallet account, migration 20261204_wallet_history), merged. Each page reads a
few dozen postings whatever the wallet's age, and the cursor is the oldest posting sequence
of the page's last event: postings made later get higher sequences and never shift a page.
`engine/wallet_history.py` groups postings into events; the rows around them (awards,
payments, redemption legs, lots, grants) add the campaign terms and dates.

On PostgreSQL a page is two round trips besides the pool's ping, both plain SQL on the
psycopg connection in autocommit (no BEGIN, no ROLLBACK): the postings, whose statement
finds the wallet's accounts itself and scans each under a LATERAL join, so the statement is
the same for any wallet and psycopg prepares it after a few uses of a connection (one UNION
subquery per account planned in 6.4 ms, several times what it runs in); then the rows
around them, every kind at once in one pipeline, the redeemed legs joined to their lots (and,
the first time a page holds points pending under a campaign version, that version's validity,
which says when they will expire: kept per database from then on).
SQLite, in process, reads the accounts first and the rows around one kind after the other.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import crediting, limits
from engine.store import bulk, db
from engine.store.books import lot_expiry
from engine.store.db import psycopg_connection
from engine.store.ledger import validity_of_versions
from engine.store.models import AccountRow, AwardRow, GrantRow, PaymentRow, RedemptionLegRow
from engine.timeutil import format_instant
from engine.wallet_book import lot_id
from engine.wallet_history import HistoryEvent, WalletPosting, award_status, group_events

if TYPE_CHECKING:
    import psycopg

_COLUMNS = "sequence, payment_id, campaign_id, campaign_version, reason, amount, posted_at_us"


def _scan(side: str, account: str, before: str, count: str, like: str) -> str:
    """The `count` newest postings below `before` on one side of `account`: a backward scan of a
    partial index, whose predicate (`like`) is repeated literally so the planner may use it."""
    return (
        f"SELECT {_COLUMNS} FROM posting WHERE {side}_account_id = {account} "
        f"AND {side}_account_id LIKE {like} AND sequence < {before} ORDER BY sequence DESC LIMIT {count}"
    )


# UNION, not UNION ALL: a credit moves points between two accounts of the same wallet.
_PG_POSTINGS = (
    "SELECT * FROM ("
    + " UNION ".join(
        f"SELECT p.* FROM account AS a CROSS JOIN LATERAL ({scan}) AS p WHERE a.wallet_id = %(wallet)s"
        for scan in (_scan(side, "a.id", "%(before)s", "%(n)s", "'wallet:%%'") for side in ("debit", "credit"))
    )
    + ") AS u ORDER BY sequence DESC LIMIT %(n)s"
)

# A lot by its id, wherever it is kept (`engine.store.books`): a `point_lot` row by its key, an
# award's lot by its award's key, the id's two parts (ids hold no ':', `limits.ID_PATTERN`).
_LOT_JOINS = (
    "LEFT JOIN point_lot AS l ON l.id = {id} LEFT JOIN award AS a "
    "ON a.payment_id = split_part({id}, ':', 1) AND a.campaign_id = split_part({id}, ':', 2)"
)
_LOT_EXPIRY = "coalesce(l.expires_at_us, a.lot_expires_at_us)"

# The rows around a page's postings on PostgreSQL, by kind; the one parameter: the keys, an array.
_PG_AROUND = {
    "payments": "SELECT id, merchant_id, original_id FROM payment WHERE id = ANY(%b::text[])",
    "awards": (
        "SELECT payment_id, campaign_id, campaign_version, points, pending, clawed_back, capped_by, credit_at_us "
        "FROM award WHERE payment_id = ANY(%b::text[])"
    ),
    "grants": "SELECT id, reason FROM point_grant WHERE id = ANY(%b::text[])",
    # A leg's lot by a join, rather than a second round trip once the legs are known.
    "legs": (
        f"SELECT r.payment_id, r.lot_id, r.campaign_id, r.points, {_LOT_EXPIRY} FROM redemption_leg AS r "
        f"{_LOT_JOINS.format(id='r.lot_id')} WHERE r.payment_id = ANY(%b::text[]) "
        "ORDER BY r.payment_id, r.position"
    ),
    "lots": (
        f"SELECT k.id, {_LOT_EXPIRY} FROM unnest(%b::text[]) AS k(id) {_LOT_JOINS.format(id='k.id')} "
        f"WHERE {_LOT_EXPIRY} IS NOT NULL"
    ),
}


class _Around(NamedTuple):
    """The rows around a page's events, each kind keyed as `_describe` looks it up."""

    payments: dict[str, tuple[str, str | None]]  # id -> merchant_id, original_id
    # (payment, campaign) -> campaign_version, points, pending, clawed_back, capped_by, credit_at_us
    awards: dict[tuple[str, str], tuple[Any, ...]]
    grants: dict[str, str | None]  # id -> reason
    legs: dict[str, list[tuple[str, str, int, int | None]]]  # payment -> lot, campaign, points, expires_at_us
    expiry: dict[str, int]  # lot id -> expires_at_us


def _keys(events: list[HistoryEvent]) -> dict[str, set[str]]:
    """The keys of the rows each kind the page needs: none for a kind it does not."""

    def of(*types: str) -> set[str]:
        return {e.source_id for e in events if e.source_id is not None and e.type in types}

    return {
        "payments": of("earned", "credited", "redeemed", "returned", "clawed_back", "expired"),
        "awards": of("earned"),
        "grants": of("granted"),
        "legs": of("redeemed"),
        "lots": {
            lot_id(e.source_id, e.campaign_id)
            for e in events
            if e.source_id and e.campaign_id and e.type in ("earned", "credited", "expired", "granted")
        },
    }


def _arrange(rows: dict[str, list[Any]]) -> _Around:
    legs: dict[str, list[tuple[str, str, int, int | None]]] = defaultdict(list)
    for payment_id, lot, campaign_id, points, expires_at_us in rows["legs"]:
        legs[payment_id].append((lot, campaign_id, points, expires_at_us))
    return _Around(
        payments={r[0]: (r[1], r[2]) for r in rows["payments"]},
        awards={(r[0], r[1]): tuple(r[2:]) for r in rows["awards"]},
        grants={r[0]: r[1] for r in rows["grants"]},
        legs=legs,
        expiry={r[0]: r[1] for r in rows["lots"]},
    )


class _Postgres:
    """A page's reads on PostgreSQL: plain SQL on the psycopg connection, one round trip per step."""

    def __init__(self, raw: psycopg.Connection[tuple[Any, ...]], wallet_id: str) -> None:
        self.raw = raw
        self.wallet_id = wallet_id

    def postings(self, before: int, count: int) -> list[WalletPosting]:
        cursor = self.raw.execute(_PG_POSTINGS, {"wallet": self.wallet_id, "before": before, "n": count})
        return [WalletPosting(*row) for row in cursor.fetchall()]

    def around(self, keys: dict[str, set[str]]) -> _Around:
        wanted = [kind for kind, values in keys.items() if values]
        # Every kind at once: one round trip.
        found = dict(zip(wanted, bulk.pipelined(self.raw, [(_PG_AROUND[k], [sorted(keys[k])]) for k in wanted])))
        return _arrange({kind: found.get(kind, []) for kind in keys})


class _Sqlite:
    """A page's reads on SQLite, in process: the wallet's accounts, then statement after statement."""

    def __init__(self, session: Session, wallet_id: str) -> None:
        self.session = session
        self.accounts = sorted(
            session.execute(select(AccountRow.id).where(AccountRow.wallet_id == wallet_id)).scalars()
        )

    def postings(self, before: int, count: int) -> list[WalletPosting]:
        if not self.accounts:
            return []
        params: dict[str, Any] = {"before": before, "n": count}
        parts = []
        for side in ("debit", "credit"):
            for i, account in enumerate(self.accounts):
                params[f"a{i}"] = account
                scan = _scan(side, f":a{i}", ":before", ":n", "'wallet:%'")
                parts.append(f"SELECT * FROM ({scan}) AS {side[0]}{i}")
        sql = "SELECT * FROM (" + " UNION ".join(parts) + ") AS u ORDER BY sequence DESC LIMIT :n"
        return [WalletPosting(*row) for row in self.session.execute(text(sql), params)]

    def _where_in(self, columns: list[Any], key: Any, values: set[str], *order: Any) -> list[Any]:
        if not values:
            return []
        return list(self.session.execute(select(*columns).where(key.in_(sorted(values))).order_by(*order)))

    def around(self, keys: dict[str, set[str]]) -> _Around:
        pay, a, g, r = PaymentRow, AwardRow, GrantRow, RedemptionLegRow
        leg_columns = [r.payment_id, r.lot_id, r.campaign_id, r.points]
        legs = self._where_in(leg_columns, r.payment_id, keys["legs"], r.payment_id, r.position)
        expiry = lot_expiry(self.session, keys["lots"] | {leg.lot_id for leg in legs})
        award_columns = [a.campaign_version, a.points, a.pending, a.clawed_back, a.capped_by, a.credit_at_us]
        return _arrange(
            {
                "payments": self._where_in([pay.id, pay.merchant_id, pay.original_id], pay.id, keys["payments"]),
                "awards": self._where_in([a.payment_id, a.campaign_id, *award_columns], a.payment_id, keys["awards"]),
                "grants": self._where_in([g.id, g.reason], g.id, keys["grants"]),
                "legs": [(*leg, expiry.get(leg.lot_id)) for leg in legs],
                "lots": list(expiry.items()),
            }
        )


def _events(
    postings_below: Callable[[int, int], list[WalletPosting]], before: int, limit: int
) -> tuple[list[HistoryEvent], bool]:
    """Up to `limit` complete events below `before`, newest first, and whether more follow."""
    postings: list[WalletPosting] = []
    batch = limit + 8  # most events are one posting: usually one round
    while True:
        chunk = postings_below(before, batch)
        postings.extend(chunk)
        events = group_events(postings)
        if len(chunk) < batch:  # the stream ended: every event is complete
            return events[:limit], len(events) > limit
        if len(events) > limit:  # a later event began, so the first `limit` are complete
            return events[:limit], True
        before = chunk[-1].sequence


def wallet_history(
    engine: Engine, wallet_id: str, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the wallet's events below posting sequence `before` (None: from the newest), and
    the next page's `before`, or None at the end."""
    before = limits.SEQUENCE_MAX if before is None else before
    if engine.dialect.name == "postgresql":
        # Autocommit: no BEGIN nor ROLLBACK round trip. Under READ COMMITTED each statement read
        # its own snapshot inside a transaction too, so the page is the same.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            reads: _Postgres | _Sqlite = _Postgres(psycopg_connection(connection), wallet_id)
            events, more = _events(reads.postings, before, limit)
            around = reads.around(_keys(events))
            page = _describe(events, around, _pending_validity(engine, lambda: Session(bind=connection), around))
    else:
        with Session(db.reader(engine)) as session:  # a read: DEFERRED, no writer lock
            reads = _Sqlite(session, wallet_id)
            events, more = _events(reads.postings, before, limit)
            around = reads.around(_keys(events))
            page = _describe(events, around, _pending_validity(engine, lambda: contextlib.nullcontext(session), around))
    return page, (events[-1].first_sequence if more and events else None)


# Per database: (campaign, version) -> validity_months; a stored version never changes.
_VALIDITY: weakref.WeakKeyDictionary[Engine, dict[tuple[str, int], int]] = weakref.WeakKeyDictionary()


def _pending_validity(
    engine: Engine, session: Callable[[], AbstractContextManager[Session]], around: _Around
) -> dict[tuple[str, int], int]:
    """The validity of the versions that awarded the page's pending points, read (in `session()`)
    only the first time a version of `engine`'s database is met: their lots do not exist yet, and
    expire when the purchase's answer said (`crediting`)."""
    versions = {(cid, row[0]) for (_, cid), row in around.awards.items() if row[2] > 0}
    known = _VALIDITY.setdefault(engine, {})
    if versions - known.keys():
        with session() as opened:
            validity_of_versions(opened, versions, known)
    return {v: known[v] for v in versions if v in known}


def _describe(
    events: list[HistoryEvent], around: _Around, validity: dict[tuple[str, int], int]
) -> list[dict[str, Any]]:
    """Each event with its campaign terms, transaction and dates, from the rows around the postings;
    `validity`: of the versions that awarded pending points."""
    out = []
    for e in events:
        payment = around.payments.get(e.source_id) if e.source_id else None
        item: dict[str, Any] = {
            "sequence": e.sequence,
            "type": e.type,
            "at": format_instant(e.posted_at_us),
            "points": e.points,
            "campaign_id": e.campaign_id,
            "campaign_version": e.postings[0].campaign_version if e.campaign_id else None,
            "transaction_id": e.source_id if payment is not None else None,
            "merchant_id": payment[0] if payment is not None else None,
        }
        if payment is not None and payment[1] is not None:
            item["original_id"] = payment[1]
        if e.type == "earned":
            version, points, pending, clawed_back, capped_by, credit_at_us = around.awards[
                (e.source_id or "", e.campaign_id or "")
            ]
            item.update(
                status=award_status(points, pending, clawed_back),
                capped_by=capped_by,
                credit_at=format_instant(credit_at_us),
                campaign_version=version,
            )
        if e.type in ("earned", "credited", "expired", "granted") and e.source_id and e.campaign_id:
            expires = around.expiry.get(lot_id(e.source_id, e.campaign_id))
            if expires is None and e.type == "earned":
                # Pending: no lot yet; it will expire when the purchase's answer said.
                version, _, pending, _, _, credit_at_us = around.awards[(e.source_id, e.campaign_id)]
                months = validity.get((e.campaign_id, version)) if pending > 0 else None
                expires = crediting.expires_at_us(credit_at_us, months) if months is not None else None
            item["expires_at"] = format_instant(expires) if expires is not None else None
        if e.type == "granted":
            item["grant_id"] = e.source_id
            item["reason"] = around.grants.get(e.source_id) if e.source_id is not None else None
        if e.type == "redeemed":
            item["lots"] = [
                {
                    "lot_id": lot,
                    "campaign_id": campaign_id,
                    "points": points,
                    "expires_at": format_instant(expires_at_us) if expires_at_us is not None else None,
                }
                for lot, campaign_id, points, expires_at_us in around.legs.get(e.source_id or "", [])
            ]
        if e.type == "returned":
            by_campaign: dict[str, int] = defaultdict(int)
            for p in e.postings:
                by_campaign[p.campaign_id or ""] += p.amount
            item["campaigns"] = [{"campaign_id": c, "points": n} for c, n in sorted(by_campaign.items())]
        out.append(item)
    return out
