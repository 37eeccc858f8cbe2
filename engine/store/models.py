"""SQLAlchemy 2 typed models of the ledger and its configuration.

Instants are stored as integer microseconds since the epoch (`*_at_us`) so
that SQLite and PostgreSQL compare them identically and exactly. Amounts and
points are BigInteger. Constraints mirror the ledger invariants: a posting
moves a positive amount between two different accounts, and on PostgreSQL
(and SQLite) triggers refuse any UPDATE or DELETE of a posting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine.wallet_book import LOT_COLUMNS

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    if TYPE_CHECKING:
        # Every model maps a plain Table (DeclarativeBase says FromClause, which also covers
        # classes mapped to a select or a join); the bulk helpers need a Table's name and columns.
        __table__: ClassVar[Table]


class LedgerHead(Base):
    """One row: the sequencer. Every writer locks it, so acceptance order,
    the posting chain and every cap are decided by one writer at a time."""

    __tablename__ = "ledger_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_payment_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    last_posting_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    # Payments are chained too, over their stored request and answer, so an
    # edited request is as detectable as an edited posting.
    last_payment_hash: Mapped[str] = mapped_column(
        String(64), default="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    catalog_version: Mapped[int] = mapped_column(BigInteger, default=0)
    # Units of work committed under the lock, each adding one whatever it changed: a group
    # decided ahead of its write is written only if no other unit came in between (see
    # `engine.store.pipeline`).
    lock_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # No unit of work stamps an instant before this, the end of what is closed: the last settled
    # period's end, the last signed day's end (`UnitOfWork.now_us`, `stamp_at`). A process whose
    # clock is behind another's stamps after what that one closed; the import cannot post into it.
    stamp_floor_us: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # No live unit of work stamps an instant before this: the latest instant a payment was accepted
    # at or a catalog change or grant dated at (each dated past it: `ledger.date_catalog_change`),
    # so acceptance order and instants agree on what was in force across hosts whose clocks differ.
    order_floor_us: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The payment from which acceptance instants never go back along the chain (the last payment
    # when migration `20261219_ordered_from` ran, 0 for a ledger made since): reconciliation's
    # `payments_accepted_in_order` checks the chain from it.
    ordered_from_sequence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # This ledger's incarnation, random: made by migration `20261215_ledger_id` and made anew by
    # every `setapay restore`. What is kept beside the database (the answers cached in Redis) is
    # kept under it, so a restored copy never replays an answer for a sale it does not hold.
    ledger_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class MerchantRow(Base):
    __tablename__ = "merchant"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    record_json: Mapped[str] = mapped_column(Text)
    bank_account_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    updated_at_us: Mapped[int] = mapped_column(BigInteger)
    # A changed payout account awaiting confirmation by another key (SPEC §9.6): the key
    # that made the change and when; payouts are held while it is set.
    bank_change_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bank_change_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The merchant's number in the ward's payout files (顧客コード1, ten digits), one more than the
    # last merchant's, given at creation and never changed (migration `20261216_customer_code`).
    customer_code: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("uq_merchant_customer_code", "customer_code", unique=True),)


class CampaignRow(Base):
    __tablename__ = "campaign"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    current_version: Mapped[int] = mapped_column(Integer)
    # Net points issued (awards and grants minus clawbacks): the budget's meter.
    issued_net: Mapped[int] = mapped_column(BigInteger, default=0)
    # The current version's budget (null: none), kept here so the database itself
    # refuses a meter above it, whatever code writes the meter.
    budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("issued_net >= 0", name="issued_net_nonnegative"),
        CheckConstraint("budget IS NULL OR issued_net <= budget", name="issued_within_budget"),
    )


class CampaignBurnRow(Base):
    """Points a campaign issued (awards and grants) and clawed back in one hour of posting time
    (`hour_us`, the hour's start), so the budget's totals and burn read one row an hour, not every
    posting. Written by the database alone: the trigger `posting_burn` on `posting` (migration
    `20261217_campaign_burn`) adds each award, grant and clawback as it is inserted; no Python
    writes it. Reconciliation recomputes each row from the postings of its hour
    (`engine.posting_columns.campaign_burn`)."""

    __tablename__ = "campaign_burn"
    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour_us: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    issued: Mapped[int] = mapped_column(BigInteger)
    clawed_back: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("issued >= 0", name="issued_nonnegative"),
        CheckConstraint("clawed_back >= 0", name="clawed_back_nonnegative"),
    )


class CampaignVersionRow(Base):
    __tablename__ = "campaign_version"
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_json: Mapped[str] = mapped_column(Text)
    created_at_us: Mapped[int] = mapped_column(BigInteger)


class TerminalRow(Base):
    __tablename__ = "terminal"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), index=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    # SPEC §9.2: base64 of the raw 32-byte Ed25519 key; set, every request of the terminal's keys is signed.
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class SignatureNonceRow(Base):
    """A nonce a terminal signed with, refused again until `expires_at_us` (SPEC §9.2; without Redis)."""

    __tablename__ = "signature_nonce"
    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at_us: Mapped[int] = mapped_column(BigInteger, index=True)


class ApiKeyRow(Base):
    __tablename__ = "api_key"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    terminal_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Key lifecycle (SPEC §9.3): optional expiry, first revocation, last use (at most once a minute).
    expires_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_used_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    # The pages' sign-out: every page session of the key made at or before it is over.
    sessions_ended_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'finance', 'merchant', 'terminal', 'app')", name="role_known"),
    )


class PaymentRow(Base):
    """An accepted purchase or refund, in acceptance order (`sequence`)."""

    __tablename__ = "payment"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(String(8))
    terminal_id: Mapped[str] = mapped_column(String(64))
    merchant_id: Mapped[str] = mapped_column(String(64))
    wallet_id: Mapped[str] = mapped_column(String(64))
    occurred_at_us: Mapped[int] = mapped_column(BigInteger)
    accepted_at_us: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    points_used: Mapped[int] = mapped_column(BigInteger)
    original_id: Mapped[str | None] = mapped_column(ForeignKey("payment.id"), nullable=True)
    # Purchases only: the cumulative refunded amount (rating state of refunds).
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    request_json: Mapped[str] = mapped_column(Text)
    response_json: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))
    # Whether request_json lists items, so a re-rate parses only those requests (NULL: not known).
    has_items: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # The payment app's receipt (SPEC §9.1): its app and id, accepted once per app.
    receipt_app_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    receipt_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The idempotency key the terminal sent it under, and that request's hash: an accepted
    # payment's answer is remembered on its own row (`response_json`), not copied into
    # `idempotency_key` (migration `20261209_payment_keys`). NULL for payments accepted
    # without a remembered key (the history import) and for those accepted before.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    __table_args__ = (
        UniqueConstraint("receipt_app_id", "receipt_jti", name="uq_payment_receipt"),
        # A terminal's keys, one payment each; partial, so the import's payments cost no entry.
        Index(
            "uq_payment_terminal_key",
            "terminal_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("points_used >= 0 AND points_used <= amount", name="points_used_within_amount"),
        CheckConstraint("refunded_amount >= 0 AND refunded_amount <= amount", name="refund_within_amount"),
        CheckConstraint("type IN ('purchase', 'refund')", name="type_known"),
        Index("ix_payment_merchant_sequence", "merchant_id", "sequence"),
        # Refunds only: a purchase has no original, and costs no entry.
        Index(
            "ix_payment_original_id",
            "original_id",
            postgresql_where=text("original_id IS NOT NULL"),
            sqlite_where=text("original_id IS NOT NULL"),
        ),
    )


class AwardRow(Base):
    """Points one payment earned from one campaign. The payment and the campaign it names exist:
    enforced by triggers checking each statement's new rows at once (migration
    `20261207_award_references`), not by foreign keys, which PostgreSQL checks row by row.

    Once credited, the award's points are a lot (`engine.wallet_book.Lot`) kept on the award
    row itself (`lot_*`, migration `20261213_award_lots`): its id `<payment_id>:<campaign_id>`,
    its source the payment, its points the award's (one credited after part of the award was
    clawed back while pending starts with fewer remaining), credited at `credit_at_us`. NULL while the
    points are pending, when they all went to repay debt, and for awards credited before that
    revision, whose lots are rows of `point_lot`. `WALLET_LOT` reads both as one."""

    __tablename__ = "award"
    payment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_version: Mapped[int] = mapped_column(Integer)
    wallet_id: Mapped[str] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(BigInteger)
    pending: Mapped[int] = mapped_column(BigInteger)
    clawed_back: Mapped[int] = mapped_column(BigInteger, default=0)
    capped_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    window_key: Mapped[int] = mapped_column(BigInteger)
    credit_at_us: Mapped[int] = mapped_column(BigInteger)
    lot_expires_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lot_remaining: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lot_expired: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (
        CheckConstraint("points > 0", name="points_positive"),
        CheckConstraint("pending >= 0 AND pending <= points", name="pending_within_points"),
        CheckConstraint("clawed_back >= 0 AND clawed_back <= points", name="clawed_back_within_points"),
        CheckConstraint(
            "(lot_expires_at_us IS NULL AND lot_remaining IS NULL AND lot_expired IS NULL)"
            " OR (lot_expires_at_us IS NOT NULL AND lot_remaining IS NOT NULL AND lot_expired IS NOT NULL"
            " AND lot_remaining >= 0 AND lot_expired >= 0)",
            name="lot_whole",
        ),
        # A wallet's spendable lots kept on awards, and the lots coming to expiry; partial, so an
        # award's lot costs index entries only while it holds points.
        Index(
            "ix_award_lot_wallet",
            "wallet_id",
            postgresql_where=text("lot_remaining > 0"),
            sqlite_where=text("lot_remaining > 0"),
        ),
        Index(
            "ix_award_lot_expires_at_us",
            "lot_expires_at_us",
            postgresql_where=text("lot_remaining > 0"),
            sqlite_where=text("lot_remaining > 0"),
        ),
        # A wallet's pending points by crediting date (GET /v1/wallets/{id}/points); partial,
        # so credited awards cost no index entry.
        Index(
            "ix_award_wallet_pending",
            "wallet_id",
            "credit_at_us",
            postgresql_where=text("pending > 0"),
            sqlite_where=text("pending > 0"),
        ),
    )


class WalletWindowUsageRow(Base):
    """Points a wallet earned from a campaign in one cap window. Keyed wallet first: a group
    reads the rows of its wallets by one index probe each (`bulk.ReadBatch.where_each`)."""

    __tablename__ = "wallet_window_usage"
    campaign_id: Mapped[str] = mapped_column(String(64))
    wallet_id: Mapped[str] = mapped_column(String(64))
    window_key: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        PrimaryKeyConstraint("wallet_id", "campaign_id", "window_key"),
        CheckConstraint("points >= 0", name="points_nonnegative"),
    )


class AccountRow(Base):
    """Cached balance of one account; always equal to the sum of its postings."""

    __tablename__ = "account"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    wallet_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    campaign_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    merchant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class PostingRow(Base):
    """One movement of a positive amount from one account to another. Never
    updated or deleted; hash-chained in `sequence` order."""

    __tablename__ = "posting"
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    payment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    campaign_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    campaign_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(String(24))
    debit_account_id: Mapped[str] = mapped_column(String(200))
    credit_account_id: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    posted_at_us: Mapped[int] = mapped_column(BigInteger, index=True)
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("debit_account_id <> credit_account_id", name="accounts_differ"),
        # A wallet's history (engine/store/history.py): its accounts' postings by descending
        # sequence; partial, so postings of merchants and campaigns alone cost no index entry.
        *(
            Index(
                f"ix_posting_{side}_wallet",
                f"{side}_account_id",
                "sequence",
                postgresql_where=text(f"{side}_account_id LIKE 'wallet:%'"),
                sqlite_where=text(f"{side}_account_id LIKE 'wallet:%'"),
            )
            for side in ("debit", "credit")
        ),
    )


class IdempotencyRow(Base):
    """A remembered answer that is not an accepted payment's: a business decline, scoped to the
    terminal that sent the key, a grant, scoped to the finance key, or an admin's creation (a key, a
    webhook endpoint), scoped to the admin key, its secret sealed (`engine.store.remembered`). An
    accepted payment's answer is remembered on its own `payment` row (its `idempotency_key`, `request_hash` and
    `response_json`), for as long as the ledger keeps it; rows here from before that
    (migration `20261209_payment_keys`) still answer until the purge. Purging these rows after the
    retention loses nothing of the ledger."""

    __tablename__ = "idempotency_key"
    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(Integer)
    response_json: Mapped[str] = mapped_column(Text)
    payment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Indexed for the purge of answers past the retention (engine/store/lifecycle.py).
    created_at_us: Mapped[int] = mapped_column(BigInteger, index=True)


class PointLotRow(Base):
    """Credited points of one grant (or of an award credited before migration
    `20261213_award_lots`; an award's lot is now kept on its row), spent earliest-expiring first."""

    __tablename__ = "point_lot"
    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    wallet_id: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(64))
    credited_at_us: Mapped[int] = mapped_column(BigInteger)
    expires_at_us: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expired: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (
        CheckConstraint("points > 0", name="points_positive"),
        CheckConstraint("remaining >= 0", name="remaining_nonnegative"),
        CheckConstraint("expired >= 0", name="expired_nonnegative"),
        Index("ix_point_lot_wallet_remaining", "wallet_id", "remaining"),
        Index("ix_point_lot_expires_at_us", "expires_at_us"),
    )


# Every lot, as one relation: `point_lot`'s rows and the lots kept on awards (a view, migration
# `20261213_award_lots`; not in `Base.metadata`, so no table is made of it), with `point_lot`'s
# columns. Reads only: a lot is written where it lives (`engine.store.books`). Its filters on
# wallet, remaining points and expiry reach both sides' indexes; its id is computed on the
# awards' side, so a look-up by id goes to each table by its own key (`books.lot_expiry`).
WALLET_LOT = Table(
    "wallet_lot",
    MetaData(),
    *(
        Column(name, String(120) if name == "id" else String(64) if name.endswith("_id") else BigInteger)
        for name in LOT_COLUMNS
    ),
)


class RedemptionLegRow(Base):
    """Which lot a redemption took points from, so a refund returns them with their expiry."""

    __tablename__ = "redemption_leg"
    payment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    lot_id: Mapped[str] = mapped_column(String(120))
    campaign_id: Mapped[str] = mapped_column(String(64))
    points: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (CheckConstraint("points > 0", name="points_positive"),)


class WalletDebtRow(Base):
    __tablename__ = "wallet_debt"
    wallet_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (CheckConstraint("points >= 0", name="points_nonnegative"),)


class GrantRow(Base):
    """Points granted by finance outside purchases, against a campaign's budget."""

    __tablename__ = "point_grant"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet_id: Mapped[str] = mapped_column(String(64), index=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id"))
    campaign_version: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    granted_at_us: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (CheckConstraint("points > 0", name="points_positive"),)


class LifecycleRunRow(Base):
    """A crediting or expiry run: what it was asked and what it posted."""

    __tablename__ = "lifecycle_run"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    as_of_us: Mapped[int] = mapped_column(BigInteger)
    started_at_us: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(BigInteger)


class SettlementRunRow(Base):
    """One settled period: closed for good once written."""

    __tablename__ = "settlement_run"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period_start_us: Mapped[int] = mapped_column(BigInteger, unique=True)
    period_end_us: Mapped[int] = mapped_column(BigInteger)
    period_kind: Mapped[str] = mapped_column(String(16))
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    last_posting_sequence: Mapped[int] = mapped_column(BigInteger)
    statement_json: Mapped[str] = mapped_column(Text)
    csv_text: Mapped[str] = mapped_column(Text)
    zengin_file: Mapped[bytes] = mapped_column(LargeBinary)
    __table_args__ = (CheckConstraint("period_end_us > period_start_us", name="period_ordered"),)


class SettlementLineRow(Base):
    __tablename__ = "settlement_line"
    run_id: Mapped[str] = mapped_column(ForeignKey("settlement_run.id"), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    coin_sales: Mapped[int] = mapped_column(BigInteger)
    coin_refunds: Mapped[int] = mapped_column(BigInteger)
    points_redeemed: Mapped[int] = mapped_column(BigInteger)
    points_returned: Mapped[int] = mapped_column(BigInteger)
    merchant_funded_points: Mapped[int] = mapped_column(BigInteger)
    fee: Mapped[int] = mapped_column(BigInteger)
    carried_in: Mapped[int] = mapped_column(BigInteger)
    net_payout: Mapped[int] = mapped_column(BigInteger)
    payout_status: Mapped[str] = mapped_column(String(16))
    __table_args__ = (
        CheckConstraint(
            "payout_status IN ('pending', 'paid', 'failed', 'nothing_due', 'held_bank_change')",
            name="payout_status_known",
        ),
    )


class CloseoutRow(Base):
    __tablename__ = "closeout"
    terminal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    business_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    submitted_at_us: Mapped[int] = mapped_column(BigInteger)
    # The terminal's merchant when the closeout was submitted: its day is that merchant's sales
    # at the terminal (a terminal moved since sold elsewhere before). Null: closed out before it
    # was kept, compared with every sale of the terminal that day.
    merchant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ChainHeadRow(Base):
    """The posting chain head at the end of a business day, signed by the ward's key."""

    __tablename__ = "chain_head"
    business_date: Mapped[str] = mapped_column(String(10), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    signed_json: Mapped[str] = mapped_column(Text)


class MerchantVersionRow(Base):
    """A merchant record as it was from `created_at_us` on: re-rating and simulation
    use the version in force when a payment was accepted, as for campaigns."""

    __tablename__ = "merchant_version"
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchant.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_json: Mapped[str] = mapped_column(Text)
    created_at_us: Mapped[int] = mapped_column(BigInteger)


class PaymentAppRow(Base):
    """A payment app whose receipts the engine accepts (SPEC §9.1)."""

    __tablename__ = "payment_app"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    revoked_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AppSecretRow(Base):
    """One receipt secret of an app, sealed like bank details; a rotated-out secret
    stays valid until `valid_until_us`."""

    __tablename__ = "app_secret"
    app_id: Mapped[str] = mapped_column(ForeignKey("payment_app.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    valid_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditHeadRow(Base):
    """One row: the audit chain's head. `record` locks it, so appends are linear and gapless."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditLogRow(Base):
    """One change that can move money or widen access (SPEC §9.5). Never updated or
    deleted (triggers refuse it); hash-chained in `sequence` order."""

    __tablename__ = "audit_log"
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at_us: Mapped[int] = mapped_column(BigInteger, index=True)
    actor_key_id: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    before_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    after_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_audit_log_target_sequence", "target", "sequence"),)


class EventRow(Base):
    """One event of SPEC §10 (engine/events.py), written in the same transaction as the change it
    describes (an outbox). `id` is the feed's order: every writer of events holds the sequencer
    lock from the insert to the commit, so ids are taken in commit order and a reader that pages
    by `id > after` never skips one committed later with a smaller id."""

    __tablename__ = "event"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(32))
    wallet_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Unique where set: the event is said once (a lot's expiry warning, a budget threshold).
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    data_json: Mapped[str] = mapped_column(Text)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_event_type_id", "type", "id"),)


class WebhookEndpointRow(Base):
    """A webhook endpoint an admin registered: its URL, the event types it wants, its signing
    secret sealed like bank details, and `last_event_id`, how far its deliveries were fanned out."""

    __tablename__ = "webhook_endpoint"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_types_json: Mapped[str] = mapped_column(Text)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    deleted_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class WebhookDeliveryRow(Base):
    """One event owed to one endpoint. `pending` until delivered (a 2xx), or `failed` when the
    retry window ended first; `leased_until_us` is set while a worker is sending it."""

    __tablename__ = "webhook_delivery"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoint.id"))
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), ForeignKey("event.id"))
    wallet_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at_us: Mapped[int] = mapped_column(BigInteger)
    leased_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_attempt_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    finished_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_endpoint_event"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status_known"),
        Index("ix_webhook_delivery_status_next", "status", "next_attempt_at_us"),
        Index("ix_webhook_delivery_endpoint_wallet", "endpoint_id", "wallet_id", "status", "id"),
    )
