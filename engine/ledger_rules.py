"""Ledger rules of SPEC §5 as pure functions: accounts, postings, the hash chain.

A posting moves a positive integer amount from one account (`debit`) to
another (`credit`): the debit account's balance goes down, the credit
account's goes up, so the sum of all balances is zero by construction.

Accounts:
- `campaign:<id>:funding`            source of a campaign's points (goes negative as it issues)
- `campaign:<id>:expired`            points that expired unused
- `wallet:<id>:<campaign>:pending`   awarded, not yet credited
- `wallet:<id>:<campaign>:available` credited, spendable; negative is debt
- `merchant:<id>:payable`            what the ward owes the merchant
- `merchant:<id>:payout`             payouts handed to the bank, awaiting its result
- `coin:clearing`                    coin paid by wallets (the app's prepaid float)
- `ward:fees`                        settlement fees the ward keeps
- `bank:payouts`                     payouts the bank confirmed paid
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from collections.abc import Mapping, Sequence

_sha256 = hashlib.sha256
GENESIS_HASH = _sha256(b"").hexdigest()
COIN_CLEARING = "coin:clearing"

# Reasons, a closed set: reconciliation groups postings by them.
AWARD = "award"
CLAWBACK = "clawback"
COIN_SALE = "coin_sale"
COIN_REFUND = "coin_refund"
REDEMPTION = "redemption"
POINTS_RETURN = "points_return"
CREDIT = "credit"
EXPIRY = "expiry"
GRANT = "grant"
DEBT_SETTLEMENT = "debt_settlement"
SETTLEMENT_FEE = "settlement_fee"
MERCHANT_FUNDING = "merchant_funding"
PAYOUT = "payout"
PAYOUT_PAID = "payout_paid"
PAYOUT_FAILED = "payout_failed"
REASONS = (
    AWARD,
    CLAWBACK,
    COIN_SALE,
    COIN_REFUND,
    REDEMPTION,
    POINTS_RETURN,
    CREDIT,
    EXPIRY,
    GRANT,
    DEBT_SETTLEMENT,
    SETTLEMENT_FEE,
    MERCHANT_FUNDING,
    PAYOUT,
    PAYOUT_PAID,
    PAYOUT_FAILED,
)
WARD_FEES = "ward:fees"
BANK_PAYOUTS = "bank:payouts"


def funding_account(campaign_id: str) -> str:
    return f"campaign:{campaign_id}:funding"


def expired_account(campaign_id: str) -> str:
    return f"campaign:{campaign_id}:expired"


def pending_account(wallet_id: str, campaign_id: str) -> str:
    return f"wallet:{wallet_id}:{campaign_id}:pending"


def available_account(wallet_id: str, campaign_id: str) -> str:
    return f"wallet:{wallet_id}:{campaign_id}:available"


def payable_account(merchant_id: str) -> str:
    return f"merchant:{merchant_id}:payable"


def payout_account(merchant_id: str) -> str:
    """Payouts handed to the bank and not yet confirmed paid or failed."""
    return f"merchant:{merchant_id}:payout"


ACCOUNT_PART_COLUMNS = ("kind", "wallet_id", "campaign_id", "merchant_id")


def account_part_values(account_id: str) -> tuple[str, str | None, str | None, str | None]:
    """Kind and owners of an account id (`ACCOUNT_PART_COLUMNS`), for the account table's columns."""
    parts = account_id.split(":")
    if parts[0] == "wallet":
        return "wallet_" + parts[3], parts[1], parts[2], None
    if parts[0] == "campaign":
        return "campaign_" + parts[2], None, parts[1], None
    if parts[0] == "merchant":
        return "merchant_" + parts[2], None, None, parts[1]
    assert account_id in (COIN_CLEARING, WARD_FEES, BANK_PAYOUTS), account_id
    return account_id.replace(":", "_"), None, None, None


def account_parts(account_id: str) -> dict[str, str | None]:
    """`account_part_values` by column name."""
    return dict(zip(ACCOUNT_PART_COLUMNS, account_part_values(account_id)))


@dataclasses.dataclass(frozen=True)
class Posting:
    reason: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    payment_id: str | None = None
    campaign_id: str | None = None
    campaign_version: int | None = None

    def columns(self) -> tuple[str | None, str | None, int | None, str, str, str, int]:
        """(payment, campaign, campaign version, reason, debit, credit, amount): the posting's
        own columns, between its sequence and its stamp."""
        return (
            self.payment_id,
            self.campaign_id,
            self.campaign_version,
            self.reason,
            self.debit_account_id,
            self.credit_account_id,
            self.amount,
        )

    def __post_init__(self) -> None:
        assert self.amount > 0, self
        assert self.debit_account_id != self.credit_account_id, self
        assert self.reason in REASONS, self.reason


def chain_hash_of(
    previous_hash: str,
    sequence: int,
    payment_id: str | None,
    campaign_id: str | None,
    campaign_version: int | None,
    reason: str,
    debit_account_id: str,
    credit_account_id: str,
    amount: int,
    posted_at_us: int,
) -> str:
    """SHA-256 over the previous hash and a posting's canonical bytes (its fields, unit-separated).

    One f-string, not a join of the fields' texts: a run of purchases chains one posting after
    another through here (an int formats as `str` writes it)."""
    version = "" if campaign_version is None else campaign_version
    return _sha256(
        f"{previous_hash}{sequence}\x1f{payment_id or ''}\x1f{campaign_id or ''}\x1f{version}\x1f{reason}"
        f"\x1f{debit_account_id}\x1f{credit_account_id}\x1f{amount}\x1f{posted_at_us}".encode()
    ).hexdigest()


def chain_hash(previous_hash: str, sequence: int, posting: Posting, posted_at_us: int) -> str:
    return chain_hash_of(previous_hash, sequence, *posting.columns(), posted_at_us)


def split_in_order(legs: list[tuple[str, int]], start: int, amount: int) -> list[tuple[str, int]]:
    """The part [start, start + amount) of the concatenated legs, leg by leg.

    Points returned by successive refunds go back to the buckets the purchase
    took them from, in the same order, so the sum over refunds is exact.
    """
    out = []
    position = 0
    for campaign_id, leg in legs:
        lo, hi = max(start, position), min(start + amount, position + leg)
        if hi > lo:
            out.append((campaign_id, hi - lo))
        position += leg
    assert sum(a for _, a in out) == amount
    return out


PAYMENT_HASHED_FIELDS = (
    "sequence",
    "id",
    "type",
    "terminal_id",
    "merchant_id",
    "wallet_id",
    "occurred_at_us",
    "accepted_at_us",
    "amount",
    "points_used",
    "original_id",
    "request_json",
    "response_json",
)


_hashed_values = operator.itemgetter(*PAYMENT_HASHED_FIELDS)  # a payment's hashed values, in that order


def payment_hash(previous_hash: str, payment: Mapping[str, object]) -> str:
    """SHA-256 over the previous payment's hash and this payment's immutable fields.

    The stored request and answer are part of it, so re-rating from stored
    requests rests on requests nobody can have edited unnoticed.
    """
    return payment_hash_of(previous_hash, _hashed_values(payment))


def payment_hash_of(previous_hash: str, values: Sequence[object]) -> str:
    """`payment_hash` over the values of PAYMENT_HASHED_FIELDS, in that order: unit-separated,
    None as an empty field (one f-string, as `chain_hash_of`: every payment is hashed here)."""
    (
        sequence,
        payment_id,
        kind,
        terminal_id,
        merchant_id,
        wallet_id,
        occurred_at_us,
        accepted_at_us,
        amount,
        points_used,
        original_id,
        request_json,
        response_json,
    ) = values
    return _sha256(
        f"{previous_hash}{'' if sequence is None else sequence}"
        f"\x1f{'' if payment_id is None else payment_id}\x1f{'' if kind is None else kind}"
        f"\x1f{'' if terminal_id is None else terminal_id}\x1f{'' if merchant_id is None else merchant_id}"
        f"\x1f{'' if wallet_id is None else wallet_id}\x1f{'' if occurred_at_us is None else occurred_at_us}"
        f"\x1f{'' if accepted_at_us is None else accepted_at_us}\x1f{'' if amount is None else amount}"
        f"\x1f{'' if points_used is None else points_used}\x1f{'' if original_id is None else original_id}"
        f"\x1f{'' if request_json is None else request_json}"
        f"\x1f{'' if response_json is None else response_json}".encode()
    ).hexdigest()
