"""Posting rules of plain purchases as columns (issue 11): from rated purchases to the rows
of postings, awards and lots, and the balance deltas, for a whole run of purchases at once.

A plain purchase spends no points and its wallet owes none, which is what nearly every
purchase of a launch rush is: its postings are the coin sale (coin clearing -> the
merchant's payable) and one award posting per award (the campaign's funding -> the
wallet's pending or, credited at once, available account), and each award credited at
once fills a new lot. `plain_purchases` decides all of that for a run of such purchases
in acceptance order: every posting's sequence and chain hash (SPEC §5), the award rows
with their credit and expiry instants, the new lots, one balance delta per account, and
each purchase's answer. Crediting and expiry instants come from `engine.crediting`, the
same functions the lifecycle runs use.

The per-object path in `engine/store/ledger.py` (`PostingWriter.purchase`, which also
handles redemptions and debt) is the reference: `tests/store/test_posting_columns.py`
posts the same groups both ways and compares every stored row, hash and answer.
Rows come out as tuples in the order of `POSTING_COLUMNS`, `AWARD_COLUMNS` and
`engine.wallet_book.LOT_COLUMNS`, which is how the store copies them into its tables.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from engine import crediting
from engine import ledger_rules as rules
from engine.model import Campaign, Purchase
from engine.quotes import award_answer
from engine.rating import Award, window_key
from engine.timeutil import format_instant, to_us
from engine.wallet_book import lot_id

POSTING_COLUMNS = (
    "sequence",
    "payment_id",
    "campaign_id",
    "campaign_version",
    "reason",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "posted_at_us",
    "hash",
)
AWARD_COLUMNS = (
    "payment_id",
    "campaign_id",
    "campaign_version",
    "wallet_id",
    "points",
    "pending",
    "clawed_back",
    "capped_by",
    "window_key",
    "credit_at_us",
)


class PlainPurchase(NamedTuple):
    """One accepted purchase of a run: its payment id, the record and the kernel's awards (in
    evaluation order)."""

    payment_id: str
    body: Purchase
    awards: Sequence[Award]


@dataclasses.dataclass
class PostedRun:
    """What a run of plain purchases posts."""

    postings: list[tuple[Any, ...]]  # POSTING_COLUMNS
    awards: list[tuple[Any, ...]]  # AWARD_COLUMNS
    lots: list[tuple[Any, ...]]  # LOT_COLUMNS: lots credited at once, full
    deltas: dict[str, int]  # account -> its balance change
    answers: list[dict[str, Any]]  # each purchase's answer, in the run's order
    posting_sequence: int  # the posting chain's head after the run
    posting_hash: str


@dataclasses.dataclass(frozen=True)
class _Terms:
    """What posting needs of a campaign version."""

    immediate: bool
    schedule: str
    delay: int
    validity: int
    period: str


def plain_purchases(
    run: Sequence[PlainPurchase],
    campaigns: Mapping[str, Campaign],
    at_us: int,
    payment_sequence: int,
    posting_sequence: int,
    posting_hash: str,
) -> PostedRun:
    """Post `run`, plain purchases in acceptance order accepted at `at_us`, after payment
    sequence `payment_sequence` and posting sequence `posting_sequence` whose hash is
    `posting_hash`."""
    terms = {
        cid: _Terms(
            c.credit.schedule == "immediate",
            c.credit.schedule,
            c.credit.delay_business_days,
            c.validity_months,
            c.per_wallet_cap_period,
        )
        for cid, c in campaigns.items()
    }
    accepted_at = format_instant(at_us)

    # The columns of every posting, in chain order: per purchase its coin sale, then its awards.
    reasons: list[str] = []
    payment_ids: list[str] = []
    campaign_ids: list[str | None] = []
    versions: list[int | None] = []
    debits: list[str] = []
    credits: list[str] = []
    amounts: list[int] = []
    awards: list[tuple[Any, ...]] = []
    lots: list[tuple[Any, ...]] = []
    answers: list[dict[str, Any]] = []
    for i, p in enumerate(run):
        body, pid, at = p.body, p.payment_id, to_us(p.body.occurred_at)
        wallet = body.wallet_id
        coin = body.amount - body.points_used
        assert body.points_used == 0, "a plain purchase spends no points"
        reasons.append(rules.COIN_SALE)
        payment_ids.append(pid)
        campaign_ids.append(None)
        versions.append(None)
        debits.append(rules.COIN_CLEARING)
        credits.append(rules.payable_account(body.merchant_id))
        amounts.append(coin)
        answer_awards = []
        awarded = 0
        for award in p.awards:
            cid, t = award.campaign_id, terms[award.campaign_id]
            credit_at = crediting.credit_at_us(t.schedule, t.delay, at, at_us)
            expires_at = crediting.expires_at_us(credit_at, t.validity)
            reasons.append(rules.AWARD)
            payment_ids.append(pid)
            campaign_ids.append(cid)
            versions.append(award.campaign_version)
            debits.append(rules.funding_account(cid))
            credits.append((rules.available_account if t.immediate else rules.pending_account)(wallet, cid))
            amounts.append(award.points)
            awarded += award.points
            awards.append(
                (
                    pid,
                    cid,
                    award.campaign_version,
                    wallet,
                    award.points,
                    0 if t.immediate else award.points,
                    0,
                    award.capped_by,
                    window_key(t.period, at),
                    credit_at,
                )
            )
            if t.immediate:
                lots.append((lot_id(pid, cid), wallet, cid, pid, credit_at, expires_at, award.points, award.points, 0))
            answer_awards.append(award_answer(award, t.immediate, credit_at, expires_at))
        answers.append(
            {
                "id": pid,
                "sequence": payment_sequence + i + 1,
                "type": "purchase",
                "wallet_id": wallet,
                "merchant_id": body.merchant_id,
                "terminal_id": body.terminal_id,
                "occurred_at": body.occurred_at.isoformat(),
                "accepted_at": accepted_at,
                "amount": body.amount,
                "points_used": body.points_used,
                "points_awarded": awarded,
                "awards": answer_awards,
            }
        )

    # Sequences and the chain over the columns (each hash needs the one before it).
    m = len(amounts)
    sequences = range(posting_sequence + 1, posting_sequence + m + 1)
    hashes: list[str] = []
    digest = posting_hash
    for sequence, pid, cid, version, reason, debit, credit, amount in zip(
        sequences, payment_ids, campaign_ids, versions, reasons, debits, credits, amounts
    ):
        digest = rules.chain_hash_of(digest, sequence, pid, cid, version, reason, debit, credit, amount, at_us)
        hashes.append(digest)
    postings = list(
        zip(sequences, payment_ids, campaign_ids, versions, reasons, debits, credits, amounts, [at_us] * m, hashes)
    )
    return PostedRun(
        postings, awards, lots, balance_deltas(debits, credits, amounts), answers, posting_sequence + m, digest
    )


def balance_deltas(debits: Sequence[str], credits: Sequence[str], amounts: Sequence[int]) -> dict[str, int]:
    """Each account's balance change from postings given as columns: debits go down, credits up."""
    deltas: dict[str, int] = defaultdict(int)
    for debit, credit, amount in zip(debits, credits, amounts):
        deltas[debit] -= amount
        deltas[credit] += amount
    return dict(deltas)
