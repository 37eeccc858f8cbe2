"""Read-side queries: transactions with their award status, wallet points, ledger checks."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import ledger_rules as rules
from engine import posting_columns
from engine.errors import EngineError
from engine.store import bulk, db
from engine.store.models import (
    WALLET_LOT,
    AccountRow,
    AwardRow,
    CampaignBurnRow,
    CampaignRow,
    LedgerHead,
    PaymentRow,
    PostingRow,
    WalletDebtRow,
)
from engine.timeutil import format_instant


def award_status(award: AwardRow) -> str:
    if award.clawed_back == award.points:
        return "clawed_back"
    return "pending" if award.pending > 0 else "credited"


def get_payment(engine: Engine, payment_id: str) -> dict[str, Any]:
    with Session(engine) as session:
        row = session.get(PaymentRow, payment_id)
        if row is None:
            raise EngineError("not_found", f"transaction {payment_id} is not known")
        return _payment_views(session, [row])[0]


def _payment_views(session: Session, rows: Sequence[PaymentRow]) -> list[dict[str, Any]]:
    """Each payment's answer as `GET /v1/transactions/{id}` shows it (its awards' status now, a
    purchase's refunded amount), the awards of all of them read in one query."""
    awards: dict[tuple[str, str], AwardRow] = {}
    ids = [row.id for row in rows if row.type == "purchase"]
    for chunk_start in range(0, len(ids), 1000):
        chunk = ids[chunk_start : chunk_start + 1000]
        for a in session.execute(select(AwardRow).where(AwardRow.payment_id.in_(chunk))).scalars():
            awards[(a.payment_id, a.campaign_id)] = a
    views = []
    for row in rows:
        body: dict[str, Any] = json.loads(row.response_json)
        for award in body.get("awards", []):
            a = awards[(row.id, award["campaign_id"])]
            award["status"] = award_status(a)
            award["points_clawed_back"] = a.clawed_back
        if row.type == "purchase":
            body["refunded_amount"] = row.refunded_amount
        views.append(body)
    return views


def payment_scope(engine: Engine, payment_id: str) -> tuple[str, str] | None:
    """(merchant_id, terminal_id) of a transaction, for access checks."""
    with Session(engine) as session:
        row = session.execute(
            select(PaymentRow.merchant_id, PaymentRow.terminal_id).where(PaymentRow.id == payment_id)
        ).first()
        return (row.merchant_id, row.terminal_id) if row else None


def wallet_points(
    engine: Engine, wallet_id: str, expired: Mapping[str, int] | None = None, session: Session | None = None
) -> dict[str, Any]:
    """A wallet's points by its accounts, less `expired` (campaign -> points of lots past their
    expiry the expiry run has not taken out yet: no longer available, SPEC §4); in `session` when
    given (the caller's snapshot)."""
    with contextlib.nullcontext(session) if session is not None else Session(engine) as session:
        pending = available = 0
        by_campaign: dict[str, dict[str, int]] = defaultdict(lambda: {"pending": 0, "available": 0})
        for row in session.execute(
            select(AccountRow.kind, AccountRow.campaign_id, AccountRow.balance).where(AccountRow.wallet_id == wallet_id)
        ):
            if row.kind == "wallet_pending":
                pending += row.balance
                by_campaign[row.campaign_id]["pending"] += row.balance
            else:
                balance = row.balance - (expired or {}).get(row.campaign_id, 0)
                available += balance
                by_campaign[row.campaign_id]["available"] += balance
        return {
            "wallet_id": wallet_id,
            "pending": pending,
            "available": max(available, 0),
            "debt": max(-available, 0),
            "by_campaign": [{"campaign_id": c, **v} for c, v in sorted(by_campaign.items())],
        }


LEDGER_CHECKS = (
    "trial_balance_zero",
    "cached_balances_match",
    "hash_chain_intact",
    "posting_sequence_gapless",
    "payment_chain_intact",
    "lots_match_balances",
    "liability_identity_per_campaign",
    "liability_identity_per_wallet",
    "liability_identity_total",
    "budget_meters_match",
    "burn_meters_match",
    "postings_of_their_kind",
    "postings_match_payments",
    "postings_match_awards_and_grants",
    "cap_usage_matches_awards",
)


def ledger_check(engine: Engine) -> dict[str, Any]:
    """Trial balance, cached balances against postings, the hash chain, lots against
    balances, and the liability identity per campaign, per wallet and in total:
    issued - clawed back - redeemed - expired = pending + available (debt negative); and each
    posting against its source row (`sources_check`), on a connection of its own while this one
    walks the postings: PostgreSQL joins while Python hashes (on the one snapshot of
    `db.one_snapshot`, whose every connection reads the same instant). On SQLite in turn: there
    is no server to overlap with, and an in-memory database is one connection's."""
    if engine.dialect.name != "postgresql":
        done: concurrent.futures.Future[dict[str, list[str]]] = concurrent.futures.Future()
        with Session(engine) as session:
            done.set_result(sources_check(session))
        return _ledger_check(engine, done)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sources-check") as pool:
        sources_read = pool.submit(_sources_check_alone, engine)
        try:
            return _ledger_check(engine, sources_read)
        finally:
            sources_read.cancel()


def _sources_check_alone(engine: Engine) -> dict[str, list[str]]:
    with Session(engine) as session:
        # Hash joins of a million payments in memory, not in batches on disk; and no JIT, which
        # compiled each statement for about a second and saved nothing.
        session.execute(text("SET LOCAL work_mem = '128MB'"))
        session.execute(text("SET LOCAL jit = off"))
        return sources_check(session)


def _ledger_check(engine: Engine, sources_read: concurrent.futures.Future[dict[str, list[str]]]) -> dict[str, Any]:
    with Session(engine) as session:
        computed: dict[str, int] = defaultdict(int)
        flows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # campaign -> category -> points
        wallet_flows: dict[str, int] = defaultdict(int)  # wallet -> issued - clawed - redeemed - expired
        previous = rules.GENESIS_HASH
        chain_breaks: list[int | str] = []
        expected_sequence = 1
        gaps: list[int] = []
        malformed: list[int] = []  # postings whose accounts are not of their reason's kind
        count = 0
        burn: dict[tuple[str, int], list[int]] = {}  # the budgets' hour meters, as the postings make them
        burning: list[Sequence[Any]] = []  # their postings not summed yet
        burn_reasons = posting_columns.BURN_REASONS
        parts = functools.lru_cache(maxsize=None)(rules.account_parts)
        rows = bulk.stream(
            session,
            (
                "SELECT sequence, payment_id, campaign_id, campaign_version, reason, debit_account_id, "
                "credit_account_id, amount, posted_at_us, hash FROM posting ORDER BY sequence"
            ),
        )
        # Plain tuples, not ORM objects: this walks every posting ever made.
        for row in rows:
            sequence, payment_id, campaign_id, version, reason, debit_id, credit_id, amount, posted_at, digest = row
            count += 1
            if reason in burn_reasons:
                burning.append(row)
                if len(burning) == 10_000:  # summed a chunk at a time: one call, not one a posting
                    posting_columns.campaign_burn(burning, burn)
                    burning.clear()
            if sequence != expected_sequence:
                gaps.append(expected_sequence)
            expected_sequence = sequence + 1
            if (
                rules.chain_hash_of(
                    previous, sequence, payment_id, campaign_id, version, reason, debit_id, credit_id, amount, posted_at
                )
                != digest
            ):
                chain_breaks.append(sequence)
            previous = digest
            computed[debit_id] -= amount
            computed[credit_id] += amount
            category = _CATEGORY.get(reason)
            if reason == rules.DEBT_SETTLEMENT:
                # Between two wallet accounts, each of a campaign.
                settled_from, settled_to = parts(debit_id)["campaign_id"], parts(credit_id)["campaign_id"]
                if settled_from is None or settled_to is None:
                    malformed.append(sequence)  # reported, not an assertion: a tampered row is a finding
                    continue
                flows[settled_from]["settled_out"] += amount
                flows[settled_to]["settled_in"] += amount
            elif category:
                flows[campaign_id][category] += amount
                wallet = parts(debit_id)["wallet_id"] or parts(credit_id)["wallet_id"]
                if wallet is None:  # every categorised posting moves a wallet's points
                    malformed.append(sequence)
                    continue
                sign = 1 if category in ("issued", "returned") else -1
                wallet_flows[wallet] += sign * amount
        posting_columns.campaign_burn(burning, burn)
        head = session.execute(select(LedgerHead.last_posting_sequence, LedgerHead.last_hash)).one()
        if tuple(head) != (expected_sequence - 1, previous):  # the chain's tail cut, or the head moved
            chain_breaks.append("ledger_head")
        payment_breaks = verify_payment_chain(session)
        accounts = list(
            session.execute(
                select(AccountRow.id, AccountRow.kind, AccountRow.wallet_id, AccountRow.campaign_id, AccountRow.balance)
            )
        )
        cached = {a.id: a.balance for a in accounts}
        mismatched = sorted(a for a in set(cached) | set(computed) if cached.get(a, 0) != computed.get(a, 0))
        outstanding: dict[str, int] = defaultdict(int)
        wallet_outstanding: dict[str, int] = defaultdict(int)
        available: dict[tuple[str, str], int] = defaultdict(int)
        for a in accounts:
            if a.kind in ("wallet_pending", "wallet_available"):
                outstanding[a.campaign_id] += a.balance
                wallet_outstanding[a.wallet_id] += a.balance
            if a.kind == "wallet_available":
                available[(a.wallet_id, a.campaign_id)] += a.balance
        in_lots: dict[tuple[str, str], int] = defaultdict(int)
        for wallet_id, campaign_id, remaining in session.execute(
            select(WALLET_LOT.c.wallet_id, WALLET_LOT.c.campaign_id, WALLET_LOT.c.remaining).where(
                WALLET_LOT.c.remaining > 0
            )
        ):
            in_lots[(wallet_id, campaign_id)] += remaining
        for wallet_id, campaign_id, points in session.execute(
            select(WalletDebtRow.wallet_id, WalletDebtRow.campaign_id, WalletDebtRow.points)
        ):
            in_lots[(wallet_id, campaign_id)] -= points
        lots_mismatched = sorted(
            f"{w}:{c}" for w, c in set(available) | set(in_lots) if available.get((w, c), 0) != in_lots.get((w, c), 0)
        )
        meters = {r.id: r.issued_net for r in session.execute(select(CampaignRow)).scalars()}
        burn_stored = {
            (c, h): [issued, clawed]
            for c, h, issued, clawed in session.execute(
                select(
                    CampaignBurnRow.campaign_id,
                    CampaignBurnRow.hour_us,
                    CampaignBurnRow.issued,
                    CampaignBurnRow.clawed_back,
                )
            )
        }
        burn_mismatched = sorted(
            f"{c}@{format_instant(h)}"
            for c, h in set(burn) | set(burn_stored)
            if burn.get((c, h)) != burn_stored.get((c, h))
        )
        campaigns: dict[str, dict[str, Any]] = {}
        for cid in sorted(set(flows) | set(outstanding) | set(meters)):
            f = flows[cid]
            redeemed = f["redeemed"] - f["returned"]
            lhs = f["issued"] - f["clawed_back"] - redeemed - f["expired"] - f["settled_out"] + f["settled_in"]
            campaigns[cid] = {
                "issued": f["issued"],
                "clawed_back": f["clawed_back"],
                "redeemed": redeemed,
                "expired": f["expired"],
                "settled_in": f["settled_in"],
                "settled_out": f["settled_out"],
                "outstanding": outstanding[cid],
                "identity_holds": lhs == outstanding[cid],
                "meter_matches": meters.get(cid, 0) == f["issued"] - f["clawed_back"],
            }
        wallets_broken = sorted(
            w
            for w in set(wallet_flows) | set(wallet_outstanding)
            if wallet_flows.get(w, 0) != wallet_outstanding.get(w, 0)
        )
        sources = sources_read.result()
        total_lhs = sum(wallet_flows.values())
        total_outstanding = sum(outstanding.values())
        trial_balance = sum(computed.values())
        checks = {
            "trial_balance_zero": trial_balance == 0,
            "cached_balances_match": not mismatched,
            "hash_chain_intact": not chain_breaks
            and session.execute(select(func.count()).select_from(PostingRow)).scalar_one() == count,
            "posting_sequence_gapless": not gaps,
            "payment_chain_intact": not payment_breaks,
            "lots_match_balances": not lots_mismatched,
            "liability_identity_per_campaign": all(v["identity_holds"] for v in campaigns.values()),
            "liability_identity_per_wallet": not wallets_broken,
            "liability_identity_total": total_lhs == total_outstanding,
            "budget_meters_match": all(v["meter_matches"] for v in campaigns.values()),
            "burn_meters_match": not burn_mismatched,
            "postings_of_their_kind": not malformed,
            "postings_match_payments": not (sources["coin_sale"] or sources["redemption"] or sources["refund"]),
            "postings_match_awards_and_grants": not (sources["award"] or sources["grant"]),
            "cap_usage_matches_awards": not sources["usage"],
        }
        assert tuple(checks) == LEDGER_CHECKS
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "postings": count,
            "trial_balance": trial_balance,
            "mismatched_accounts": mismatched[:50],
            "chain_breaks": chain_breaks[:50],
            "sequence_gaps": gaps[:50],
            "payment_chain_breaks": payment_breaks[:50],
            "lots_mismatched": lots_mismatched[:50],
            "wallets_broken": wallets_broken[:50],
            "burn_mismatched": burn_mismatched[:50],
            "malformed_postings": malformed[:50],
            "sources_mismatched": sources,
            "campaigns": campaigns,
            "total": {"issued_net_of_clawbacks_redemptions_expiry": total_lhs, "outstanding": total_outstanding},
        }


def unread_ledger_report() -> dict[str, Any]:
    """`ledger_check`'s report when it could not read the ledger: every check failed, no rows."""
    lists = (
        "mismatched_accounts chain_breaks sequence_gaps payment_chain_breaks lots_mismatched wallets_broken "
        "burn_mismatched malformed_postings"
    )
    return {
        "ok": False,
        "checks": dict.fromkeys(LEDGER_CHECKS, False),
        "postings": 0,  # not counted: the walk stopped
        "campaigns": {},
        "sources_mismatched": {kind: [] for kind in _SOURCE_CHECKS},
        **{name: [] for name in lists.split()},
    }


def verify_payment_chain(session: Session) -> list[str]:
    """Ids of payments whose hash does not follow from their fields and predecessor, or out of sequence."""
    previous = rules.GENESIS_HASH
    expected = 1
    breaks: list[str] = []
    # Plain tuples streamed in chunks: this reads every request and answer ever stored.
    rows = bulk.stream(
        session,
        f"SELECT {', '.join(rules.PAYMENT_HASHED_FIELDS)}, hash FROM payment ORDER BY sequence",
        chunk_rows=20_000,
    )
    for row in rows:
        values, digest = row[:-1], row[-1]
        if values[0] != expected or rules.payment_hash_of(previous, values) != digest:
            breaks.append(values[1])
        expected = values[0] + 1
        previous = digest
    head = session.execute(select(LedgerHead)).scalar_one()
    if head.last_payment_sequence != expected - 1 or head.last_payment_hash != previous:
        breaks.append("ledger_head")
    return breaks


_CATEGORY = {
    rules.AWARD: "issued",
    rules.GRANT: "issued",
    rules.CLAWBACK: "clawed_back",
    rules.REDEMPTION: "redeemed",
    rules.POINTS_RETURN: "returned",
    rules.EXPIRY: "expired",
}


def wallet_detail(engine: Engine, wallet_id: str, now_us: int) -> dict[str, Any]:
    """Pending points with when they will be credited, available, debt, and expiring amounts by
    date, as of `now_us`: a lot past its expiry is neither available nor expiring, whether or not
    the expiry run has taken its points out yet (the ledger takes them out before a spend). Read
    in one snapshot (`db.reader`): the accounts agree with the lots and the pending awards."""
    with Session(db.reader(engine)) as session:
        pending: dict[tuple[str, int], int] = defaultdict(int)
        for award in session.execute(
            select(AwardRow).where(AwardRow.wallet_id == wallet_id, AwardRow.pending > 0)
        ).scalars():
            pending[(award.campaign_id, award.credit_at_us)] += award.pending
        expiring: dict[int, int] = defaultdict(int)
        expired: dict[str, int] = defaultdict(int)
        for lot in session.execute(
            select(WALLET_LOT).where(WALLET_LOT.c.wallet_id == wallet_id, WALLET_LOT.c.remaining > 0)
        ):
            if lot.expires_at_us <= now_us:  # due, as `WalletBook.expire`
                expired[lot.campaign_id] += lot.remaining
            else:
                expiring[lot.expires_at_us] += lot.remaining
        base = wallet_points(engine, wallet_id, expired, session)
    base["pending_by_credit_date"] = [
        {"campaign_id": c, "credit_at": format_instant(at), "points": p}
        for (c, at), p in sorted(pending.items(), key=lambda kv: kv[0][1])
    ]
    base["expiring"] = [{"expires_at": format_instant(at), "points": p} for at, p in sorted(expiring.items())]
    return base


def merchant_rewards(engine: Engine, merchant_id: str, from_us: int | None, to_us: int | None) -> dict[str, Any]:
    """Counts, coin sales, points redeemed, and customers' points per campaign by status.

    Summed by the database: the purchases' figures and their awards' by campaign in two
    aggregates, only the refunds' answers read (a refund's coin and points are in its answer, not
    its columns). Every payment of the merchant was loaded whole, its request and answer texts
    included, for each call: 2.2 s of CPU and 300 MB at 53,000 payments (helper-89)."""
    with Session(engine) as session:
        where = [PaymentRow.merchant_id == merchant_id]
        if from_us is not None:
            where.append(PaymentRow.occurred_at_us >= from_us)
        if to_us is not None:
            where.append(PaymentRow.occurred_at_us < to_us)
        purchases = [*where, PaymentRow.type == "purchase"]
        count, coin, redeemed = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(PaymentRow.amount - PaymentRow.points_used), 0),
                func.coalesce(func.sum(PaymentRow.points_used), 0),
            ).where(*purchases)
        ).one()
        totals: dict[str, int] = defaultdict(int)
        totals.update(purchases=int(count), coin_sales=int(coin), points_redeemed=int(redeemed))
        for (answer,) in session.execute(select(PaymentRow.response_json).where(*where, PaymentRow.type == "refund")):
            body = json.loads(answer)
            totals["refunds"] += 1
            totals["coin_refunded"] += body["coin_refunded"]
            totals["points_returned"] += body["points_returned"]
        campaigns: dict[str, dict[str, int]] = {}
        for campaign_id, awarded, pending, clawed_back in session.execute(
            select(
                AwardRow.campaign_id,
                func.sum(AwardRow.points),
                func.sum(AwardRow.pending),
                func.sum(AwardRow.clawed_back),
            )
            .join(PaymentRow, PaymentRow.id == AwardRow.payment_id)
            .where(*purchases)
            .group_by(AwardRow.campaign_id)
        ):
            awarded, pending, clawed_back = int(awarded), int(pending), int(clawed_back)
            campaigns[campaign_id] = {
                "awarded": awarded,
                "pending": pending,
                "credited": awarded - pending - clawed_back,
                "clawed_back": clawed_back,
            }
    return {
        "merchant_id": merchant_id,
        "from": format_instant(from_us) if from_us is not None else None,
        "to": format_instant(to_us) if to_us is not None else None,
        "transactions": totals["purchases"] + totals["refunds"],
        **{
            k: totals[k]
            for k in ("purchases", "refunds", "coin_sales", "coin_refunded", "points_redeemed", "points_returned")
        },
        "campaigns": [{"campaign_id": c, **v} for c, v in sorted(campaigns.items())],
        "points": {k: sum(v[k] for v in campaigns.values()) for k in ("awarded", "pending", "credited", "clawed_back")},
    }


def merchant_transactions(
    engine: Engine, merchant_id: str, from_us: int | None, to_us: int | None, after_sequence: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """One page in acceptance order after `after_sequence`; the next cursor, or None at the end.

    Keyset pagination on the gapless sequence: a transaction accepted while a
    client pages gets a higher sequence, so every transaction appears exactly once.
    """
    with Session(engine) as session:
        where = [PaymentRow.merchant_id == merchant_id, PaymentRow.sequence > after_sequence]
        if from_us is not None:
            where.append(PaymentRow.occurred_at_us >= from_us)
        if to_us is not None:
            where.append(PaymentRow.occurred_at_us < to_us)
        rows = list(
            session.execute(select(PaymentRow).where(*where).order_by(PaymentRow.sequence).limit(limit + 1)).scalars()
        )
        page = _payment_views(session, rows[:limit])  # one session, two queries (helper-89: one a row)
    return page, (rows[limit - 1].sequence if len(rows) > limit else None)


def merchant_next_crediting(engine: Engine, merchant_id: str) -> str | None:
    """When the earliest award still pending at this merchant's payments falls due, if any."""
    with Session(engine) as session:
        at = session.execute(
            select(func.min(AwardRow.credit_at_us))
            .join(PaymentRow, PaymentRow.id == AwardRow.payment_id)
            .where(PaymentRow.merchant_id == merchant_id, AwardRow.pending > 0)
        ).scalar_one_or_none()
    return None if at is None else format_instant(at)


# -- postings against the rows they come from (helper-101) ------------------------------------
#
# The chains and balances prove that no posting changed after it was written, unless whoever
# changed it also wrote every later hash again (the chains are not keyed: the signed chain heads
# anchor them, day by day). These prove each posting is the one its payment, award or grant
# makes: a sale moved to another merchant's payable, a coin sale or an award posting enlarged,
# or a grant posted with no grant behind it, fails here whatever was hashed again.

_PAYABLE = "'merchant:' || p.merchant_id || ':payable'"
_WALLET_PREFIX = "'wallet:' || p.wallet_id || ':'"


def _in_wallet(column: str) -> str:
    """SQL: `column` is one of payment p's wallet's accounts of `kind` (both databases)."""
    return f"substr({column}, 1, length({_WALLET_PREFIX})) = {_WALLET_PREFIX}"


_SOURCE_CHECKS: dict[str, str] = {
    # A purchase's coin part: one coin sale of amount - points_used, coin:clearing to its payable.
    "coin_sale": f"""
        WITH s AS (
            SELECT payment_id, sum(amount) AS total, min(debit_account_id) AS d1, max(debit_account_id) AS d2,
                   min(credit_account_id) AS c1, max(credit_account_id) AS c2
            FROM posting WHERE reason = 'coin_sale' GROUP BY payment_id)
        SELECT p.id FROM payment p LEFT JOIN s ON s.payment_id = p.id
        WHERE p.type = 'purchase' AND (coalesce(s.total, 0) <> p.amount - p.points_used
            OR (s.total IS NOT NULL AND (s.d1 <> 'coin:clearing' OR s.d2 <> 'coin:clearing'
                OR s.c1 <> {_PAYABLE} OR s.c2 <> s.c1)))
        UNION ALL
        SELECT s.payment_id FROM s LEFT JOIN payment p ON p.id = s.payment_id
        WHERE p.id IS NULL OR p.type <> 'purchase'""",
    # Its points part: redemptions of points_used in all, from its wallet to its payable.
    "redemption": f"""
        WITH s AS (SELECT payment_id, sum(amount) AS total FROM posting WHERE reason = 'redemption' GROUP BY payment_id)
        SELECT p.id FROM payment p LEFT JOIN s ON s.payment_id = p.id
        WHERE p.type = 'purchase' AND coalesce(s.total, 0) <> p.points_used
        UNION ALL
        SELECT p.id FROM posting x LEFT JOIN payment p ON p.id = x.payment_id
        WHERE x.reason = 'redemption' AND (p.id IS NULL OR p.type <> 'purchase' OR x.credit_account_id <> {_PAYABLE}
            OR NOT {_in_wallet("x.debit_account_id")} OR x.debit_account_id NOT LIKE '%:available')""",
    # A refund: its coin part and the points it returns make its amount, from its original's
    # merchant's payable to coin:clearing and its original's wallet; it is of its original's
    # wallet and merchant; and a purchase's refunded amount is its refunds' sum.
    "refund": f"""
        WITH s AS (
            SELECT payment_id, sum(amount) AS total FROM posting
            WHERE reason IN ('coin_refund', 'points_return') GROUP BY payment_id)
        SELECT p.id FROM payment p LEFT JOIN s ON s.payment_id = p.id LEFT JOIN payment o ON o.id = p.original_id
        WHERE p.type = 'refund' AND (coalesce(s.total, 0) <> p.amount OR o.id IS NULL OR o.type <> 'purchase'
            OR o.wallet_id <> p.wallet_id OR o.merchant_id <> p.merchant_id)
        UNION ALL
        SELECT coalesce(p.id, x.payment_id) FROM posting x LEFT JOIN payment p ON p.id = x.payment_id
        WHERE x.reason IN ('coin_refund', 'points_return') AND (p.id IS NULL OR p.type <> 'refund'
            OR x.debit_account_id <> {_PAYABLE}
            OR (x.reason = 'coin_refund' AND x.credit_account_id <> 'coin:clearing')
            OR (x.reason = 'points_return' AND (NOT {_in_wallet("x.credit_account_id")}
                OR x.credit_account_id NOT LIKE '%:available')))
        UNION ALL
        SELECT p.id FROM payment p
        LEFT JOIN (SELECT original_id, sum(amount) AS total FROM payment WHERE type = 'refund' GROUP BY original_id) r
            ON r.original_id = p.id
        WHERE p.type = 'purchase' AND p.refunded_amount <> coalesce(r.total, 0)""",
    # An award: its postings make its points, from its campaign's funding to its payment's
    # wallet, pending or available; its clawbacks (posted by refunds of its payment) its
    # clawed_back; and no award posting is without its award row.
    "award": """
        WITH s AS (
            SELECT payment_id, campaign_id, sum(amount) AS total FROM posting WHERE reason = 'award'
            GROUP BY payment_id, campaign_id),
        c AS (
            SELECT r.original_id AS payment_id, x.campaign_id, sum(x.amount) AS total
            FROM posting x JOIN payment r ON r.id = x.payment_id
            WHERE x.reason = 'clawback' GROUP BY r.original_id, x.campaign_id)
        SELECT a.payment_id || '/' || a.campaign_id FROM award a
        JOIN payment p ON p.id = a.payment_id
        LEFT JOIN s ON s.payment_id = a.payment_id AND s.campaign_id = a.campaign_id
        LEFT JOIN c ON c.payment_id = a.payment_id AND c.campaign_id = a.campaign_id
        WHERE coalesce(s.total, 0) <> a.points OR coalesce(c.total, 0) <> a.clawed_back
            OR p.wallet_id <> a.wallet_id OR p.type <> 'purchase'
        UNION ALL
        SELECT a.payment_id || '/' || a.campaign_id FROM award a LEFT JOIN payment p ON p.id = a.payment_id
        WHERE p.id IS NULL
        UNION ALL
        SELECT x.payment_id || '/' || coalesce(x.campaign_id, '') FROM posting x
        LEFT JOIN award a ON a.payment_id = x.payment_id AND a.campaign_id = x.campaign_id
        WHERE x.reason = 'award' AND (a.payment_id IS NULL
            OR x.debit_account_id <> 'campaign:' || a.campaign_id || ':funding'
            OR (x.credit_account_id <> 'wallet:' || a.wallet_id || ':' || a.campaign_id || ':pending'
                AND x.credit_account_id <> 'wallet:' || a.wallet_id || ':' || a.campaign_id || ':available'))
        UNION ALL
        SELECT coalesce(r.original_id, x.payment_id) || '/' || coalesce(x.campaign_id, '') FROM posting x
        LEFT JOIN payment r ON r.id = x.payment_id
        LEFT JOIN award a ON a.payment_id = r.original_id AND a.campaign_id = x.campaign_id
        WHERE x.reason = 'clawback' AND (a.payment_id IS NULL OR r.type <> 'refund'
            OR x.credit_account_id <> 'campaign:' || a.campaign_id || ':funding'
            OR (x.debit_account_id <> 'wallet:' || a.wallet_id || ':' || a.campaign_id || ':pending'
                AND x.debit_account_id <> 'wallet:' || a.wallet_id || ':' || a.campaign_id || ':available'))""",
    # A grant: one posting of its points, from its campaign's funding to its wallet's available;
    # and no grant posting is without its grant row.
    "grant": """
        WITH s AS (
            SELECT payment_id, sum(amount) AS total, min(debit_account_id) AS d1, max(debit_account_id) AS d2,
                   min(credit_account_id) AS c1, max(credit_account_id) AS c2, min(campaign_id) AS k1,
                   max(campaign_id) AS k2
            FROM posting WHERE reason = 'grant' GROUP BY payment_id)
        SELECT g.id FROM point_grant g LEFT JOIN s ON s.payment_id = g.id
        WHERE coalesce(s.total, 0) <> g.points OR s.d1 <> 'campaign:' || g.campaign_id || ':funding' OR s.d2 <> s.d1
            OR s.c1 <> 'wallet:' || g.wallet_id || ':' || g.campaign_id || ':available' OR s.c2 <> s.c1
            OR s.k1 <> g.campaign_id OR s.k2 <> s.k1
        UNION ALL
        SELECT s.payment_id FROM s LEFT JOIN point_grant g ON g.id = s.payment_id WHERE g.id IS NULL""",
    # A wallet's cap usage in a window: its awards' points there net of their clawbacks (the
    # kernel's `usage`). Zeroed, the wallet would earn past its cap until a re-rate caught the
    # awards after they were paid (helper-101).
    "usage": """
        SELECT u.wallet_id || '/' || u.campaign_id || '/' || u.window_key FROM wallet_window_usage u
        LEFT JOIN (
            SELECT wallet_id, campaign_id, window_key, sum(points - clawed_back) AS total FROM award
            GROUP BY wallet_id, campaign_id, window_key) a
            ON a.wallet_id = u.wallet_id AND a.campaign_id = u.campaign_id AND a.window_key = u.window_key
        WHERE u.points <> coalesce(a.total, 0)
        UNION
        SELECT a.wallet_id || '/' || a.campaign_id || '/' || a.window_key FROM award a
        LEFT JOIN wallet_window_usage u
            ON u.wallet_id = a.wallet_id AND u.campaign_id = a.campaign_id AND u.window_key = a.window_key
        WHERE u.wallet_id IS NULL
        GROUP BY a.wallet_id, a.campaign_id, a.window_key HAVING sum(a.points - a.clawed_back) <> 0""",
}


SOURCE_ROWS_MAX = 50  # ids named a kind of source


def sources_check(session: Session) -> dict[str, list[str]]:
    """For each kind of source row (`_SOURCE_CHECKS`), the ids whose postings are not the ones it
    makes (at most `SOURCE_ROWS_MAX` a kind, sorted); empty lists when every posting is."""
    found: dict[str, list[str]] = {}
    for kind, sql in _SOURCE_CHECKS.items():
        # UNION, not UNION ALL: an id once, the first few only, however many are found.
        limited = sql.replace("UNION ALL", "UNION") + f" ORDER BY 1 LIMIT {SOURCE_ROWS_MAX}"
        rows = session.execute(text(limited.replace(":", "\\:")))  # colons are text, not binds
        found[kind] = [str(row[0]) for row in rows]
    return found
