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
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine import crediting
from engine import ledger_rules as rules
from engine.model import Campaign, Purchase
from engine.quotes import award_answer_of, award_status
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


# One accepted purchase of a run: its payment id, the record and the kernel's awards (in
# evaluation order). A plain tuple: the writer makes one a purchase.
PlainPurchase = tuple[str, Purchase, Sequence[Award]]


@dataclasses.dataclass
class PostedRun:
    """What a run of plain purchases posts."""

    postings: list[tuple[Any, ...]]  # POSTING_COLUMNS
    awards: list[tuple[Any, ...]]  # AWARD_COLUMNS
    lots: list[tuple[Any, ...]]  # LOT_COLUMNS: lots credited at once, full
    deltas: dict[str, int]  # account -> its balance change
    answers: list[dict[str, Any]]  # each purchase's answer, in the run's order
    occurred_at_us: list[int]  # each purchase's instant, in the run's order (its payment row's)
    posting_sequence: int  # the posting chain's head after the run
    posting_hash: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Terms:
    """What posting needs of a campaign version, and what is the same for every award of it in a
    run: its funding account and, credited at acceptance, its awards' instants."""

    immediate: bool
    schedule: str
    delay: int
    validity: int
    period: str
    status: str  # an award's status in the answer
    funding: str  # the account each award debits
    account: Callable[[str, str], str]  # (wallet, campaign) -> the account each award credits
    # Credited at acceptance (`immediate`): every award's credit and expiry instants and their
    # texts, the run's acceptance and what follows from it. None: they depend on the purchase.
    credited: tuple[int, int, str, str] | None


def _terms(campaign: Campaign, at_us: int) -> _Terms:
    schedule, delay = campaign.credit.schedule, campaign.credit.delay_business_days
    immediate = schedule == "immediate"
    credited = None
    if immediate:  # credited at acceptance, whatever the purchase's instant
        credit_at = crediting.credit_at_us(schedule, delay, at_us, at_us)
        expires_at = crediting.expires_at_us(credit_at, campaign.validity_months)
        credited = (credit_at, expires_at, format_instant(credit_at), format_instant(expires_at))
    return _Terms(
        immediate,
        schedule,
        delay,
        campaign.validity_months,
        campaign.per_wallet_cap_period,
        award_status(immediate),
        rules.funding_account(campaign.id),
        rules.available_account if immediate else rules.pending_account,
        credited,
    )


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
    accepted_at = format_instant(at_us)
    terms: dict[str, _Terms] = {}  # campaign -> its terms, as its first award of the run meets it
    payables: dict[str, str] = {}  # merchant -> its payable account
    # (instant, UTC offset) -> the instant's text: a run's purchases share a few instants, and
    # the two fix the text (its wall clock is the instant plus the offset).
    texts: dict[tuple[int, dt.timedelta | None], str] = {}
    # Locals, not module attributes: read for every posting.
    chain_hash_of = rules.chain_hash_of
    coin_sale, award_reason, clearing = rules.COIN_SALE, rules.AWARD, rules.COIN_CLEARING

    # Every posting in chain order (per purchase its coin sale, then its awards), each chained
    # to the one before it as it is made.
    postings: list[tuple[Any, ...]] = []
    awards: list[tuple[Any, ...]] = []
    lots: list[tuple[Any, ...]] = []
    answers: list[dict[str, Any]] = []
    instants: list[int] = []
    deltas: dict[str, int] = {}
    sequence, digest = posting_sequence, posting_hash
    for payment, (pid, body, run_awards) in enumerate(run, payment_sequence + 1):
        wallet, merchant = body.wallet_id, body.merchant_id
        assert body.points_used == 0, "a plain purchase spends no points"
        coin = body.amount - body.points_used
        payable = payables.get(merchant)
        if payable is None:
            payable = payables[merchant] = rules.payable_account(merchant)
        sequence += 1
        digest = chain_hash_of(digest, sequence, pid, None, None, coin_sale, clearing, payable, coin, at_us)
        postings.append((sequence, pid, None, None, coin_sale, clearing, payable, coin, at_us, digest))
        deltas[clearing] = deltas.get(clearing, 0) - coin
        deltas[payable] = deltas.get(payable, 0) + coin
        answer_awards = []
        awarded = 0
        occurred_at = body.occurred_at
        at = to_us(occurred_at)  # ~0.8 µs: the cache compares instants of distinct offset objects
        instants.append(at)
        text_key = (at, occurred_at.utcoffset())
        occurred_text = texts.get(text_key)
        if occurred_text is None:
            occurred_text = texts[text_key] = occurred_at.isoformat()
        for award in run_awards:
            cid, version, points = award.campaign_id, award.campaign_version, award.points
            t = terms.get(cid)
            if t is None:
                t = terms[cid] = _terms(campaigns[cid], at_us)
            if t.credited is not None:
                credit_at, expires_at, credit_text, expires_text = t.credited
            else:
                credit_at = crediting.credit_at_us(t.schedule, t.delay, at, at_us)
                expires_at = crediting.expires_at_us(credit_at, t.validity)
                credit_text, expires_text = format_instant(credit_at), format_instant(expires_at)
            funding, credit = t.funding, t.account(wallet, cid)
            sequence += 1
            digest = chain_hash_of(digest, sequence, pid, cid, version, award_reason, funding, credit, points, at_us)
            postings.append((sequence, pid, cid, version, award_reason, funding, credit, points, at_us, digest))
            deltas[funding] = deltas.get(funding, 0) - points
            deltas[credit] = deltas.get(credit, 0) + points
            awarded += points
            awards.append(
                (
                    pid,
                    cid,
                    version,
                    wallet,
                    points,
                    0 if t.immediate else points,
                    0,
                    award.capped_by,
                    window_key(t.period, at),
                    credit_at,
                )
            )
            if t.immediate:
                lots.append((lot_id(pid, cid), wallet, cid, pid, credit_at, expires_at, points, points, 0))
            answer_awards.append(award_answer_of(award, t.status, credit_text, expires_text))
        answers.append(
            {
                "id": pid,
                "sequence": payment,
                "type": "purchase",
                "wallet_id": wallet,
                "merchant_id": merchant,
                "terminal_id": body.terminal_id,
                "occurred_at": occurred_text,
                "accepted_at": accepted_at,
                "amount": body.amount,
                "points_used": body.points_used,
                "points_awarded": awarded,
                "awards": answer_awards,
            }
        )
    return PostedRun(postings, awards, lots, deltas, answers, instants, sequence, digest)


# -- the budget's burn by hour -------------------------------------------------------------------

BURN_HOUR_US = 3_600_000_000  # a bucket: one hour of posting time, from a whole UTC (and Tokyo) hour
_BURNS = {rules.AWARD: 0, rules.GRANT: 0, rules.CLAWBACK: 1}  # issued, or clawed back
BURN_REASONS = frozenset(_BURNS)
_CAMPAIGN, _REASON, _AMOUNT, _AT = map(POSTING_COLUMNS.index, ("campaign_id", "reason", "amount", "posted_at_us"))


def burn_hour(posted_at_us: int) -> int:
    """The start of the hour bucket holding a posting made at `posted_at_us`."""
    return posted_at_us - posted_at_us % BURN_HOUR_US


def campaign_burn(
    postings: Sequence[Sequence[Any]], burn: dict[tuple[str, int], list[int]] | None = None
) -> dict[tuple[str, int], list[int]]:
    """Points each campaign issued (its awards and grants) and clawed back, by the hour they
    were posted: `(campaign id, hour start) -> [issued, clawed back]`, from postings in
    `POSTING_COLUMNS` order (a posting without a campaign counts nowhere). The rule the
    database's `campaign_burn` meters follow (its trigger `posting_burn` adds each posting as it
    is inserted); reconciliation holds the meters to it. Added into `burn` if given."""
    burn = {} if burn is None else burn
    burns = _BURNS.get
    for posting in postings:
        side = burns(posting[_REASON])
        if side is None or posting[_CAMPAIGN] is None:
            continue
        at = posting[_AT]
        key = (posting[_CAMPAIGN], at - at % BURN_HOUR_US)
        meter = burn.get(key)
        if meter is None:
            meter = burn[key] = [0, 0]
        meter[side] += posting[_AMOUNT]
    return burn
