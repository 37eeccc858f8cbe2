"""Full re-rate for reconciliation: rate every stored purchase and refund again and
compare with what the ledger holds.

Payments are re-rated in acceptance order from their stored requests, each
under the campaign versions that were in force when it was accepted (a
version is in force from its `created_at_us`), so a campaign version changed
after the fact, an edited request or an altered award all show up as
mismatches. Balance checks are left out: redemptions were decided against
balances that crediting and expiry runs also moved, and an accepted purchase
is what it is.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import defaultdict

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.model import Campaign, Merchant, Transaction
from engine.rating import RatingState, build_catalog, rate
from engine.store.models import AwardRow, CampaignVersionRow, MerchantRow, PaymentRow

_transaction = TypeAdapter(Transaction)
CHUNK = 20_000


def _versions(session: Session) -> tuple[list[int], dict[str, list[tuple[int, Campaign]]]]:
    """Every instant the campaign set changed, and each campaign's versions in order."""
    by_campaign: dict[str, list[tuple[int, Campaign]]] = defaultdict(list)
    for row in session.execute(
        select(CampaignVersionRow).order_by(CampaignVersionRow.campaign_id, CampaignVersionRow.version)
    ).scalars():
        by_campaign[row.campaign_id].append((row.created_at_us, Campaign.model_validate_json(row.record_json)))
    changes = sorted({at for versions in by_campaign.values() for at, _ in versions})
    return changes, by_campaign


def _in_force(by_campaign, instant: int) -> list[Campaign]:
    out = []
    for versions in by_campaign.values():
        current = [c for at, c in versions if at <= instant]
        if current:
            out.append(current[-1])
    return out


def rerate_check(engine, progress=None) -> dict:
    """Re-rate everything; returns {"ok", "checked", "mismatches": [...]}."""
    with Session(engine) as session:
        merchants = [Merchant.model_validate_json(r.record_json)
                     for r in session.execute(select(MerchantRow).order_by(MerchantRow.id)).scalars()]
        changes, by_campaign = _versions(session)
        awards: dict[str, dict[str, AwardRow]] = defaultdict(dict)
        for a in session.execute(select(AwardRow)).scalars():
            awards[a.payment_id][a.campaign_id] = a
        state = RatingState()
        catalogs: dict[int, object] = {}
        mismatches: list[dict] = []
        checked = 0
        segment: list = []
        segment_era = None
        rows = session.execute(select(PaymentRow).order_by(PaymentRow.sequence)).scalars()

        def flush(era, events, stored):
            nonlocal checked
            if not events:
                return
            if era not in catalogs:
                catalogs[era] = build_catalog(merchants, _in_force(by_campaign, changes[era] if era >= 0 else -1))
            outcomes = rate(catalogs[era], events, state)
            for outcome, row in zip(outcomes, stored):
                mismatches.extend(_compare(outcome, row, awards.get(row.id, {})))
            checked += len(events)
            if progress:
                progress(len(events))

        stored: list = []
        for row in rows:
            era = bisect_right(changes, row.accepted_at_us) - 1
            if era != segment_era or len(segment) >= CHUNK:
                flush(segment_era, segment, stored)
                segment, stored, segment_era = [], [], era
            try:
                body = _transaction.validate_json(row.request_json)
            except ValueError:
                mismatches.append({"payment_id": row.id, "problem": "stored request is not a valid transaction"})
                continue
            if body.type == "refund" and body.original_id != row.original_id:
                mismatches.append({"payment_id": row.id, "problem": "stored request names another original"})
            segment.append((row.id, body))
            stored.append(row)
        flush(segment_era, segment, stored)
    return {"ok": not mismatches, "checked": checked, "mismatches": mismatches[:100],
            "mismatch_count": len(mismatches)}


def _compare(outcome, row: PaymentRow, award_rows: dict[str, AwardRow]) -> list[dict]:
    out = []
    answer = json.loads(row.response_json)
    if outcome.declined:
        return [{"payment_id": row.id, "problem": f"re-rating declines it: {outcome.declined}"}]
    if row.type == "purchase":
        expected = {a.campaign_id: (a.points, a.capped_by, a.campaign_version) for a in outcome.awards}
        held = {cid: (a.points, a.capped_by, a.campaign_version) for cid, a in award_rows.items()}
        if expected != held:
            out.append({"payment_id": row.id, "problem": "awards differ", "rerated": expected, "ledger": held})
        if answer.get("points_awarded") != outcome.points_awarded:
            out.append({"payment_id": row.id, "problem": "answered points differ from re-rating"})
    else:
        expected = {c.campaign_id: c.points for c in outcome.clawbacks}
        held = {c["campaign_id"]: c["points"] for c in answer.get("clawbacks", [])}
        if expected != held or answer.get("points_returned") != outcome.points_returned:
            out.append({"payment_id": row.id, "problem": "clawbacks differ", "rerated": expected, "ledger": held})
    return out
