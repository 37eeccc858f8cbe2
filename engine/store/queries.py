"""Read-side queries: transactions with their award status, wallet points, ledger checks."""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import ledger_rules as rules
from engine.errors import EngineError
from engine.store.models import AccountRow, AwardRow, CampaignRow, PaymentRow, PostingRow


def award_status(award: AwardRow) -> str:
    if award.clawed_back == award.points:
        return "clawed_back"
    return "pending" if award.pending > 0 else "credited"


def get_payment(engine: Engine, payment_id: str) -> dict:
    with Session(engine) as session:
        row = session.get(PaymentRow, payment_id)
        if row is None:
            raise EngineError(404, "not_found", f"transaction {payment_id} is not known")
        body = json.loads(row.response_json)
        awards = {a.campaign_id: a for a in session.execute(
            select(AwardRow).where(AwardRow.payment_id == payment_id)).scalars()}
        for award in body.get("awards", []):
            a = awards[award["campaign_id"]]
            award["status"] = award_status(a)
            award["points_clawed_back"] = a.clawed_back
        if row.type == "purchase":
            body["refunded_amount"] = row.refunded_amount
        return body


def payment_scope(engine: Engine, payment_id: str) -> tuple[str, str] | None:
    """(merchant_id, terminal_id) of a transaction, for access checks."""
    with Session(engine) as session:
        row = session.execute(
            select(PaymentRow.merchant_id, PaymentRow.terminal_id).where(PaymentRow.id == payment_id)
        ).first()
        return (row.merchant_id, row.terminal_id) if row else None


def wallet_points(engine: Engine, wallet_id: str) -> dict:
    with Session(engine) as session:
        pending = available = 0
        by_campaign: dict[str, dict[str, int]] = defaultdict(lambda: {"pending": 0, "available": 0})
        for row in session.execute(
            select(AccountRow.kind, AccountRow.campaign_id, AccountRow.balance).where(AccountRow.wallet_id == wallet_id)
        ):
            if row.kind == "wallet_pending":
                pending += row.balance
                by_campaign[row.campaign_id]["pending"] += row.balance
            else:
                available += row.balance
                by_campaign[row.campaign_id]["available"] += row.balance
        return {
            "wallet_id": wallet_id,
            "pending": pending,
            "available": max(available, 0),
            "debt": max(-available, 0),
            "by_campaign": [{"campaign_id": c, **v} for c, v in sorted(by_campaign.items())],
        }


def ledger_check(engine: Engine) -> dict:
    """Trial balance, cached balances against postings, the hash chain, and
    issued - clawed back - redeemed = outstanding per campaign and in total."""
    with Session(engine) as session:
        computed: dict[str, int] = defaultdict(int)
        issued: dict[str, int] = defaultdict(int)
        clawed: dict[str, int] = defaultdict(int)
        redeemed: dict[str, int] = defaultdict(int)
        returned: dict[str, int] = defaultdict(int)
        previous = rules.GENESIS_HASH
        chain_breaks: list[int] = []
        expected_sequence = 1
        gaps: list[int] = []
        count = 0
        for p in session.execute(select(PostingRow).order_by(PostingRow.sequence)).scalars():
            count += 1
            if p.sequence != expected_sequence:
                gaps.append(expected_sequence)
            expected_sequence = p.sequence + 1
            posting = rules.Posting(p.reason, p.debit_account_id, p.credit_account_id, p.amount, p.payment_id,
                                    p.campaign_id, p.campaign_version)
            digest = rules.chain_hash(previous, p.sequence, posting, p.posted_at_us)
            if digest != p.hash:
                chain_breaks.append(p.sequence)
            previous = p.hash
            computed[p.debit_account_id] -= p.amount
            computed[p.credit_account_id] += p.amount
            if p.reason in (rules.AWARD, rules.GRANT):
                issued[p.campaign_id] += p.amount
            elif p.reason == rules.CLAWBACK:
                clawed[p.campaign_id] += p.amount
            elif p.reason == rules.REDEMPTION:
                redeemed[p.campaign_id] += p.amount
            elif p.reason == rules.POINTS_RETURN:
                returned[p.campaign_id] += p.amount
        cached = {a.id: a for a in session.execute(select(AccountRow)).scalars()}
        mismatched = sorted(
            a for a in set(cached) | set(computed) if (cached[a].balance if a in cached else 0) != computed.get(a, 0)
        )
        outstanding: dict[str, int] = defaultdict(int)
        for a in cached.values():
            if a.kind in ("wallet_pending", "wallet_available"):
                outstanding[a.campaign_id] += a.balance
        meters = {r.id: r.issued_net for r in session.execute(select(CampaignRow)).scalars()}
        campaigns = {}
        for cid in sorted(set(issued) | set(outstanding) | set(meters)):
            # Points returned by refunds undo redemptions, so they count against `redeemed`.
            net_redeemed = redeemed[cid] - returned[cid]
            lhs = issued[cid] - clawed[cid] - net_redeemed
            campaigns[cid] = {
                "issued": issued[cid],
                "clawed_back": clawed[cid],
                "redeemed": net_redeemed,
                "outstanding": outstanding[cid],
                "identity_holds": lhs == outstanding[cid],
                "meter_matches": meters.get(cid, 0) == issued[cid] - clawed[cid],
            }
        total_lhs = sum(v["issued"] - v["clawed_back"] - v["redeemed"] for v in campaigns.values())
        total_outstanding = sum(outstanding.values())
        trial_balance = sum(computed.values())
        checks = {
            "trial_balance_zero": trial_balance == 0,
            "cached_balances_match": not mismatched,
            "hash_chain_intact": not chain_breaks and (session.execute(
                select(func.count()).select_from(PostingRow)).scalar_one() == count),
            "posting_sequence_gapless": not gaps,
            "liability_identity_per_campaign": all(v["identity_holds"] for v in campaigns.values()),
            "liability_identity_total": total_lhs == total_outstanding,
            "budget_meters_match": all(v["meter_matches"] for v in campaigns.values()),
        }
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "postings": count,
            "trial_balance": trial_balance,
            "mismatched_accounts": mismatched[:50],
            "chain_breaks": chain_breaks[:50],
            "sequence_gaps": gaps[:50],
            "campaigns": campaigns,
            "total": {"issued_net_of_clawbacks_and_redemptions": total_lhs, "outstanding": total_outstanding},
        }
