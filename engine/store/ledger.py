"""The ledger's unit of work: every change that posts runs in one, under the sequencer lock.

`Ledger.unit_of_work()` is the one way into a posting transaction, for the
money path (`Ledger.submit`) and for everything else that posts (crediting,
expiry, grants, settlement runs, payout results). It opens the session and
its transaction, takes the sequencer lock (the `ledger_head` row: FOR UPDATE
on PostgreSQL, BEGIN IMMEDIATE on SQLite), and hands out a `UnitOfWork`: the
session, the `CatalogSnapshot` of the locked catalog version, and a
`PostingWriter` that hash-chains postings and writes them, with the rows that
go with them, in one batch before the commit. `Ledger.read_view()` is its
read-only twin for readers that want the same catalog without the lock.

`Ledger.submit` rates a group of requests inside one unit of work: it answers
remembered idempotency keys, loads exactly the rating state the group needs,
rates the whole group with one kernel call, and writes payments, awards,
postings, cached balances, cap usage, budget meters and idempotent answers
before committing. Nothing is acknowledged before that commit, and because
every writer of every process holds the same lock while it rates, caps and
budgets stay exact and the acceptance sequence stays gapless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import os
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import crediting, metrics, posting_columns
from engine import ledger_rules as rules
from engine.clock import Clock, SystemClock
from engine.errors import decline
from engine.events import points_expired
from engine.model import Campaign, Merchant, Purchase, Refund, campaign_order
from engine.quotes import award_answer
from engine.rating import (
    AwardState,
    Catalog,
    Outcome,
    PurchaseState,
    RatingState,
    build_catalog,
    rate,
    window_key,
)
from engine.rating._kernel_py import share_target
from engine.rating.columns import Event, campaigns_met
from engine.receipts import Receipt
from engine.store import bulk, db
from engine.store import events as outbox
from engine.store.books import AWARD_LOT_COLUMNS, LOT_ON_AWARD, lot_values, queue_books, save_books
from engine.store.models import (
    AccountRow,
    ApiKeyRow,
    AwardRow,
    CampaignRow,
    CampaignVersionRow,
    IdempotencyRow,
    MerchantRow,
    PaymentAppRow,
    PaymentRow,
    PostingRow,
    RedemptionLegRow,
    TerminalRow,
    WalletWindowUsageRow,
)
from engine.timeutil import format_instant, to_us
from engine.wallet_book import Lot, WalletBook, expire_due, expiry_posting, lot_id

Row = dict[str, Any]  # one row to write, or one answer's JSON body

# A payment row's columns, as `PostingWriter` keeps and writes its rows (tuples): the hashed ones
# first, in the order the payment hash takes them, so a row's first values are what it hashes.
PAYMENT_COLUMNS = (
    *rules.PAYMENT_HASHED_FIELDS,
    "refunded_amount",
    "has_items",
    "receipt_app_id",
    "receipt_jti",
    "idempotency_key",
    "request_hash",
    "hash",
)
_payment_values = operator.itemgetter(
    *(PAYMENT_COLUMNS.index(c) for c in ("id", "type", "merchant_id", "wallet_id", "amount", "points_used"))
)
_payment_receipt = operator.itemgetter(PAYMENT_COLUMNS.index("receipt_app_id"), PAYMENT_COLUMNS.index("receipt_jti"))

# Runs of plain purchases post as columns (`engine.posting_columns`); off, every purchase
# posts through `PostingWriter.purchase`, the reference the columns are tested against.
COLUMNAR_PURCHASES = True
PAYMENT_ID_BYTES = 10  # a payment id's random part: 20 hex digits after its millisecond's 12


@dataclasses.dataclass(slots=True)
class Submission:
    """One purchase or refund as a terminal sent it, already validated."""

    terminal_id: str
    idempotency_key: str
    request_hash: str
    body: Purchase | Refund
    request_json: str
    merchant_id: str | None = None  # the terminal's merchant, resolved under the lock
    receipt: Receipt | None = None  # the payment app's verified receipt (the API requires one)
    payment_id: str | None = None  # the id it gets if accepted (the import's are derived); else a new time-ordered one
    # The API key that sent it (None: the import's) and the key's expiry (None: never), checked
    # again when it is posted: a key revoked, or expired, after the request was let in posts nothing.
    key_id: str | None = None
    key_expires_at_us: int | None = None

    @property
    def receipt_key(self) -> tuple[str, str] | None:
        return (self.receipt.app_id, self.receipt.jti) if self.receipt is not None else None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its fields, the receipt's among them: how the API process hands each
        submission to the committer child. With `Record.__reduce__`, 5.0 against 8.6 us a
        submission to pickle and unpickle, the ways of pydantic, of a dataclass with slots and of
        a named tuple (docs/BENCHMARKS.md)."""
        receipt = self.receipt
        return (
            _submission_of,
            (
                self.terminal_id,
                self.idempotency_key,
                self.request_hash,
                self.body,
                self.request_json,
                self.merchant_id,
                None if receipt is None else receipt.app_id,
                None if receipt is None else receipt.jti,
                None if receipt is None else receipt.original_jti,
                None if receipt is None else receipt.secret_until_us,
                self.payment_id,
                self.key_id,
                self.key_expires_at_us,
            ),
        )


def _submission_of(
    terminal_id: str,
    idempotency_key: str,
    request_hash: str,
    body: Purchase | Refund,
    request_json: str,
    merchant_id: str | None,
    app_id: str | None,
    jti: str | None,
    original_jti: str | None,
    secret_until_us: int | None,
    payment_id: str | None,
    key_id: str | None,
    key_expires_at_us: int | None,
) -> Submission:
    receipt = None if app_id is None or jti is None else Receipt(app_id, jti, original_jti, secret_until_us)
    return Submission(
        terminal_id,
        idempotency_key,
        request_hash,
        body,
        request_json,
        merchant_id,
        receipt,
        payment_id,
        key_id,
        key_expires_at_us,
    )


class Result:
    """A submission's outcome: its HTTP status and answer body, whether it replays a remembered
    answer, and whether it is remembered at all (scope failures are not business outcomes).

    Across the committer child's pipe the body travels as its JSON (orjson; `__reduce__`) and
    stays JSON on the other side until something reads `body`: the API process writes most
    answers out as they came (`body_json`, `json_value`), ~3 us a purchase it no longer spends
    parsing an answer to serialise it again (docs/BENCHMARKS.md, issue 11)."""

    __slots__ = ("status", "_body", "_json", "replayed", "remember")

    def __init__(self, status: int, body: Row, replayed: bool = False, remember: bool = True) -> None:
        self.status = status
        self._body: Row | None = body
        self._json: bytes | None = None
        self.replayed = replayed
        self.remember = remember

    @classmethod
    def of_json(cls, status: int, body_json: bytes, replayed: bool = False, remember: bool = True) -> Result:
        """A result whose body is `body_json` (an object's JSON, as orjson writes it)."""
        result = cls.__new__(cls)
        result.status, result._body, result._json = status, None, body_json
        result.replayed, result.remember = replayed, remember
        return result

    @property
    def body(self) -> Row:
        """The body as objects, parsed from its JSON at the first read. From then on the objects
        are the body (a caller may change them): its JSON is let go. A result is read by one
        thread at a time (the request's), as every result is."""
        body = self._body
        if body is None:
            body_json = self._json
            if body_json is None:  # another reader parsed it meanwhile (set before its JSON went)
                return self._body  # type: ignore[return-value]
            body = self._body = orjson.loads(body_json)
            self._json = None
        return body

    @property
    def body_json(self) -> bytes:
        """The body as JSON bytes: as it came, else written now (orjson's; the standard library's
        for a body orjson refuses)."""
        body_json = self._json
        if body_json is not None:
            return body_json
        try:
            return orjson.dumps(self._body)
        except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, say
            return json.dumps(self._body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    def json_value(self) -> Any:
        """The body to place inside a larger answer written by orjson: its JSON as it is when
        the body came as JSON (an `orjson.Fragment`), else the body."""
        body_json = self._json
        return orjson.Fragment(body_json) if body_json is not None else self.body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (self.status, self.body, self.replayed, self.remember) == (
            other.status,
            other.body,
            other.replayed,
            other.remember,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        fields = f"status={self.status!r}, body={self.body!r}, replayed={self.replayed!r}, remember={self.remember!r}"
        return f"Result({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its body as JSON (orjson): how the committer child answers the API process,
        ~3 us a result cheaper than pickling the body's dicts (docs/BENCHMARKS.md). The body comes
        out as the API renders it anyway (orjson, `api.idempotency`): tuples as lists. A body
        orjson refuses (an integer beyond 64 bits) is pickled as it is."""
        body_json = self._json
        if body_json is None:
            try:
                body_json = orjson.dumps(self._body)
            except TypeError:  # orjson.JSONEncodeError
                return (Result, (self.status, self._body, self.replayed, self.remember))
        return (Result.of_json, (self.status, body_json, self.replayed, self.remember))


def replay_answer(remembered_hash: str, status: int, response_json: str | bytes, request_hash: str) -> Result:
    """The answer remembered under an idempotency key, for a request hashing to `request_hash`:
    the stored status and body, replayed, for the same request; `idempotency_key_reused` else.
    `response_json`: as stored (text, parsed: older rows were written by the standard library),
    or as a result holds it now (`Result.body_json`, kept as it is)."""
    if remembered_hash != request_hash:
        return Result(*decline("idempotency_key_reused"))
    if isinstance(response_json, bytes):
        return Result.of_json(status, response_json, replayed=True)
    return Result(status, json.loads(response_json), replayed=True)


@dataclasses.dataclass(frozen=True, eq=False)
class CatalogSnapshot:
    """The catalog one `ledger_head.catalog_version` names, as the ledger rates and posts against it.

    Loaded once per version and shared by every unit of work of the process until
    the version moves (each change of merchants, campaigns or terminals bumps it),
    so it is read-only: nothing may change it in place. Two snapshots are equal only
    when they are the same one (comparing the kernel's arrays would be ambiguous).
    """

    version: int  # the ledger_head.catalog_version it was loaded for
    campaigns: Mapping[str, Campaign]  # campaign id -> its current version
    merchants: Mapping[str, Merchant]  # merchant id -> merchant, in id order
    merchant_by_terminal: Mapping[str, str]  # terminal id -> the merchant it posts for
    # Revoked terminal keys: their requests post nothing (a revocation a group's catalog holds was
    # committed before the group's decision: `Keys.revoke` moves the catalog's version under the
    # sequencer lock). A key's expiry comes with each request (`Submission.key_expires_at_us`).
    revoked_keys: frozenset[str] = frozenset()
    revoked_apps: frozenset[str] = frozenset()  # payment apps whose receipts post nothing (`Apps.revoke`)
    # The kernel's catalogs built so far, by the campaigns they hold (`rating_for`).
    _ratings: dict[tuple[str, ...], Catalog] = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def _ordered(self) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
        """Every campaign's rank in evaluation order, and their windows in that order."""
        ordered = sorted(self.campaigns.values(), key=campaign_order)
        return {c.id: i for i, c in enumerate(ordered)}, [(c.id, to_us(c.starts_at), to_us(c.ends_at)) for c in ordered]

    def rating_for(self, bodies: Iterable[Purchase | Refund]) -> Catalog:
        """The rating kernel's catalog for a group of `bodies`: the campaigns whose window
        (`[starts_at, ends_at)`) holds an instant between its first and last purchase's
        `occurred_at`. No other campaign can award any of its purchases (the kernel skips a
        campaign outside its window), and a refund takes back its original's awards whatever
        campaigns the catalog holds, so the outcomes are those of a catalog of every campaign;
        but a group is rated, and its state read, for the few campaigns that can apply, not
        for every campaign the ward ever ran (nor against their item tags together). Built
        once per set of campaigns."""
        times = [to_us(b.occurred_at) for b in bodies if b.type == "purchase"]
        rank, windows = self._ordered
        ids = campaigns_met(windows, min(times), max(times)) if times else ()
        catalog = self._ratings.get(ids)
        if catalog is None:
            if len(self._ratings) >= _RATINGS_KEPT:
                self._ratings.clear()
            catalog = self._ratings[ids] = build_catalog(
                list(self.merchants.values()), [self.campaigns[cid] for cid in ids], rank
            )
        return catalog


# Refusals of a request that passed its checks on arrival but whose key or receipt's app ended
# before it was posted (not remembered: the terminal sees what a new request would get).
KEY_ENDED = "the API key was revoked or expired before the request was posted"
APP_REVOKED = "the receipt's payment app was revoked before the request was posted"
SECRET_ENDED = "the secret that signed the receipt was rotated out and ended before the request was posted"

# Transactions `Ledger.submit` takes for one group whose receipts' earlier uses were declined.
RECEIPT_ROUNDS_MAX = 4
# Transactions `Ledger.submit` takes for one group at most, whatever leaves some of it to the next
# round (refunds returning points past their end too: one such refund of a wallet a round).
ROUNDS_MAX = 16


class StampBehindFloor(RuntimeError):
    """A unit of work was to stamp an instant before the head's `stamp_floor_us` (only the history
    import names its instants: a settlement run or signed chain heads closed its lines' instants
    while it ran). Nothing of the unit is written."""

    def __init__(self, at_us: int, floor_us: int) -> None:
        super().__init__(f"stamp {at_us} is before the ledger's floor {floor_us}")
        self.at_us = at_us
        self.floor_us = floor_us


class StampBehindLedger(StampBehindFloor):
    """The history import was to stamp a group before the ledger's last payment, which another
    writer (an API taking payments during the import) accepted after the import's previous group:
    history posted after it would interleave with it. Nothing of the unit is written."""


# The acceptance instant of the ledger's last payment, read with a history group's reads.
_LAST_ACCEPTED_SQL = (
    "SELECT p.accepted_at_us FROM payment p JOIN ledger_head h ON p.sequence = h.last_payment_sequence WHERE h.id = 1"
)


_RATINGS_KEPT = 64  # kernel catalogs a CatalogSnapshot keeps (groups near a campaign's edge make a few)


class UnitOfWork:
    """One posting transaction of the ledger, under the sequencer lock; see `Ledger.unit_of_work`.

    - `session`: the transaction's session, for whatever else the change reads and
      writes (the ledger commits it when the `with` block ends, rolls it back on an
      exception);
    - `catalog`: the `CatalogSnapshot` of the locked head's catalog version, loaded
      on first use (most runs that only move existing points never need it);
    - `writer(at_us, books)`: the `PostingWriter` that chains and writes postings;
    - `last_posting_sequence`, `last_hash`: the posting chain's head as it stands,
      including what a writer has posted so far.

    Every instant a unit of work stamps comes from `now_us()` (or, for the history import's
    past instants, `stamp_at`), inside it, after the lock: a settlement run relies on every
    later posting carrying a later stamp. `now_us()` is the clock's instant, but never before
    the head's `stamp_floor_us`, the end of what is closed: the last settled period's end, the
    last signed day's end (and a catalog change dated past it: `date_catalog_change`). So a
    process whose clock is behind the one that settled or signed (another host, a cron job) still
    stamps after what that one closed.
    """

    def __init__(self, session: Session, head: SequencerHead, ledger: Ledger) -> None:
        self.session = session
        self._head = head
        # The chains' heads as plain values while the unit posts; written to the row once, at its end.
        self._chain = _Chain(
            head.last_posting_sequence, head.last_hash, head.last_payment_sequence, head.last_payment_hash
        )
        self._ledger = ledger
        self._catalog: CatalogSnapshot | None = None
        self._writers: list[PostingWriter] = []
        self._floor = head.stamp_floor_us  # written back when the unit ends (`_write_head`)

    def now_us(self) -> int:
        """The instant this unit stamps: the clock's now, or the head's stamp floor or order
        floor (`date_catalog_change`) if the clock is behind it (see the class)."""
        return max(self._ledger.clock.now_us(), self._floor, self._head.order_floor_us)

    def date_change(self) -> int:
        """The instant a grant made in this unit is dated: past every payment before it, and no
        payment after it stamped before it (`date_catalog_change`)."""
        self._head.order_floor_us = self._order_floor()
        return date_catalog_change(self.session, self._head, self.now_us())

    def _order_floor(self) -> int:
        """The head's order floor as this unit leaves it: at least the instant of the payments it
        accepted (`date_catalog_change`). A unit that accepted none leaves it as it was."""
        floor = self._head.order_floor_us
        if self._chain.payment_sequence != self._head.last_payment_sequence:
            floor = max(floor, *(writer.at_us for writer in self._writers))
        return floor

    def stamp_at(self, at_us: int) -> int:
        """`at_us` (the history import's past instant), unless it is before the head's floor (a
        period settled or a day signed up to there): `StampBehindFloor`."""
        if at_us < self._floor:
            raise StampBehindFloor(at_us, self._floor)
        return at_us

    def raise_floor(self, at_us: int) -> None:
        """No stamp before `at_us` from now on: a settled period's end, a signed day's end."""
        self._floor = max(self._floor, at_us)

    @property
    def stamp_floor_us(self) -> int:
        return self._floor

    @property
    def catalog(self) -> CatalogSnapshot:
        if self._catalog is None:
            self._catalog = self._ledger._catalog_snapshot(self.session, self._head.catalog_version)
        return self._catalog

    @property
    def last_posting_sequence(self) -> int:
        return self._chain.posting_sequence

    @property
    def last_hash(self) -> str:
        return self._chain.posting_hash

    def writer(
        self, at_us: int, books: dict[str, WalletBook] | None = None, remember_keys: bool = True
    ) -> PostingWriter:
        """A writer whose postings are stamped `at_us`; `books` are the wallet books
        (`engine.store.books.load_books`) of every wallet whose points it moves. With
        `remember_keys`, each payment row carries its idempotency key and request hash, which
        remembers its answer; without, they are NULL (the import remembers no key)."""
        self.stamp_at(at_us)
        writer = PostingWriter(self, at_us, {} if books is None else books, remember_keys)
        self._writers.append(writer)
        return writer

    def _check_flushed(self) -> None:
        # A posting advances the chain's head at once; one never flushed would leave
        # a gap in the sequence and a head hash no stored posting carries.
        for writer in self._writers:
            assert not writer.pending, "a PostingWriter posted but was never flushed"

    def _write_head(self) -> None:
        """The head row as the unit leaves it, in one statement: the chains' heads, and one more
        unit of work counted under the lock (`lock_version`)."""
        chain = self._chain
        bulk.driver_run(
            self.session,
            _WRITE_HEAD_SQL,
            (
                chain.posting_sequence,
                chain.posting_hash,
                chain.payment_sequence,
                chain.payment_hash,
                self._floor,
                self._order_floor(),
            ),
        )


@dataclasses.dataclass
class _Chain:
    """The heads of the posting chain and the payment chain inside a unit of work."""

    posting_sequence: int
    posting_hash: str
    payment_sequence: int
    payment_hash: str


@dataclasses.dataclass
class GroupEffects:
    """What a decided group changes that the next group's decisions read: the final values of
    the wallet-window usage it loaded and of every budget meter, the books of its wallets, the
    answers it remembers, the receipts its payments carry, and its purchases and the originals
    it refunded as a refund of them reads them. The posting pipeline lays them over a snapshot
    that does not see the group yet."""

    usage: dict[tuple[str, str, int], int] = dataclasses.field(default_factory=dict)
    spend: dict[str, int] = dataclasses.field(default_factory=dict)
    books: dict[str, WalletBook] = dataclasses.field(default_factory=dict)
    remembered: dict[tuple[str, str], tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    receipts: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    # Of the purchases it posted and the originals it refunded, those asked for, as
    # `Ledger._queue_originals` reads them: built on demand (a group refunds few of them).
    originals: Callable[[AbstractSet[str]], dict[str, Row]] = lambda wanted: {}
    # Whether a submission was left to the next round for a receipt's first use here (not
    # accepted): only such rounds count against `RECEIPT_ROUNDS_MAX`. A round that left only
    # transactions waiting for returned points past their end to expire (`_after_due_returns`)
    # does not (each round decides at least its first submission).
    receipt_waiting: bool = False

    def lay_over(
        self,
        state: RatingState,
        books: dict[str, WalletBook],
        usage_keys: set[tuple[str, str, int]],
        spending: set[str],
    ) -> None:
        """Make `state` and `books`, read before this group committed, what they are after it.

        Values are absolute, so laying them over a snapshot that already sees the group
        changes nothing. Every book takes this group's debts (each book holds its wallet's
        debts in full). The book of a wallet that spends (`spending`, read with its lots) keeps
        the lots read (those this group did not touch) and takes this group's version of every
        lot the group held (touched, added, or read with it), as copies saved only if changed
        again; any other book holds no lots, as read after the group."""
        for key in usage_keys & self.usage.keys():
            state.usage[key] = self.usage[key]
        state.spend.update(self.spend)
        for wallet_id in books.keys() & self.books.keys():
            before = self.books[wallet_id]
            lots = dict(books[wallet_id].lots)
            if wallet_id in spending:
                for lot in before.lots.values():
                    lots[lot.id] = dataclasses.replace(lot, new=False, dirty=False)
            books[wallet_id] = WalletBook(wallet_id, list(lots.values()), dict(before.debts))


@dataclasses.dataclass
class _Remembered:
    """The answers remembered under a group's keys (`Ledger._queue_remembered`): `rows` of
    (terminal, key, request hash, status, answer JSON) once the batch ran. A key has one or the
    other; were it in both, the payment's row comes last, so that a mapping of them keeps it."""

    payments: bulk.Read
    declines: bulk.Read

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return self.declines.rows + [(t, k, h, 201, answer) for t, k, h, answer in self.payments.rows]


@dataclasses.dataclass
class _GroupReads:
    """A group's reads queued on one `ReadBatch` (`Ledger._queue_group_reads`), rows once it ran."""

    batch: bulk.ReadBatch
    remembered: _Remembered
    originals: Callable[[], dict[str, Row]]
    original_ids: set[str]
    receipts: bulk.Read
    # The rating state and books, an overlay laid over them; None: read after the originals.
    state: Callable[[GroupEffects | None], tuple[RatingState, dict[str, WalletBook]]] | None
    # The budget-threshold events the outbox holds (`outbox.queue_said`); None: looked up if crossed.
    said: outbox.Said | None = None
    # The kernel's catalog `state` was queued for (`CatalogSnapshot.rating_for` the group).
    rating: Catalog | None = None
    # A history group's (`accepted_at_us` given): the acceptance of the ledger's last payment.
    last_accepted: bulk.Read | None = None


# Posting sequence and hash, payment sequence and hash, catalog version, lock version, stamp floor,
# order floor.
Head = tuple[int, str, int, str, int, int, int, int]
_HEAD_COLUMNS = (
    "last_posting_sequence, last_hash, last_payment_sequence, last_payment_hash, catalog_version, lock_version,"
    " stamp_floor_us, order_floor_us"
)
_HEAD_SQL = f"SELECT {_HEAD_COLUMNS} FROM ledger_head WHERE id = 1"
_CATALOG_VERSION_SQL = "SELECT catalog_version FROM ledger_head WHERE id = 1"  # readers: which catalog


@dataclasses.dataclass(slots=True)
class SequencerHead:
    """The `ledger_head` row as a transaction under the sequencer lock read it: plain values, read
    and written by plain statements on the driver's connection (`bulk.driver_run`), not an ORM
    object (its select and the flush that wrote it back were a third of a small group's fixed
    cost on SQLite; docs/BENCHMARKS.md). Fields in `Head`'s order."""

    last_posting_sequence: int
    last_hash: str
    last_payment_sequence: int
    last_payment_hash: str
    catalog_version: int
    lock_version: int
    stamp_floor_us: int
    order_floor_us: int


_HEAD_FOR_UPDATE_SQL = _HEAD_SQL + " FOR UPDATE"
# A unit of work's end (`UnitOfWork._write_head`): the chains' heads and the count of units.
_WRITE_HEAD_SQL = (
    "UPDATE ledger_head SET last_posting_sequence = %s, last_hash = %s, last_payment_sequence = %s,"
    " last_payment_hash = %s, lock_version = lock_version + 1, stamp_floor_us = %s, order_floor_us = %s WHERE id = 1"
)
# `lock_sequencer`: lock, count the unit and read the head in one statement (a row UPDATE locks it
# as FOR UPDATE does), with or without a new catalog version.
_LOCK_SQL = {
    changed: "UPDATE ledger_head SET lock_version = lock_version + 1"
    + (", catalog_version = catalog_version + 1" if changed else "")
    + f" WHERE id = 1 RETURNING {_HEAD_COLUMNS}"
    for changed in (False, True)
}


def validity_of_versions(
    session: Session, versions: set[tuple[str, int]], known: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """The `validity_months` of each (campaign, version) stored (every writer of versions stores
    each; one missing is left out), kept in `known`: a stored version never changes, so each is
    read once per `known`."""
    missing = sorted(versions - known.keys())
    if missing:
        for row in bulk.select_where_tuples(
            session,
            CampaignVersionRow.__table__,
            ["campaign_id", "version", "record_json"],
            ["campaign_id", "version"],
            missing,
        ):
            known[(row[0], row[1])] = Campaign.model_validate_json(row[2]).validity_months
    return {v: known[v] for v in versions if v in known}


def _locked_head(session: Session) -> SequencerHead:
    """The head, read under the sequencer lock: PostgreSQL locks its row (FOR UPDATE); on SQLite
    the transaction's `BEGIN IMMEDIATE` already holds the database's one writer lock."""
    sql = _HEAD_FOR_UPDATE_SQL if session.get_bind().dialect.name == "postgresql" else _HEAD_SQL
    return SequencerHead(*bulk.driver_run(session, sql)[0])


class RowWriter(Protocol):
    """Where a group decided ahead is written: `write_rows` in a transaction of its own."""

    def write(self, base: Head, end: Head, statements: list[tuple[str, Any]]) -> bool: ...


# The group path's statements (probes by key over arrays, writes from `unnest`) have one good plan
# whatever their arrays hold, but for a group of a few PostgreSQL plans them anew at every
# execution: a generic plan of an array of unknown length is costed at 100 elements, more than the
# custom plan of a few, so the prepared statement keeps planning (~20-60 us each, ~0.2 ms a group of
# one; at ~25 a group and in batches it takes the generic plan itself; `docs/BENCHMARKS.md`). In
# the transactions of groups decided ahead and of their writes, prepared statements take their
# generic plan; for that transaction only.
GENERIC_PLANS_SQL = "SET LOCAL plan_cache_mode = force_generic_plan"

# The head moved from `base` to `end` in one statement: the row lock is the sequencer lock (as
# `_locked_head`'s FOR UPDATE), and a head that is not `base` (re-read once a writer holding the
# lock commits) matches no row. The catalog version stays (a group never moves it).
_MOVE_HEAD_SQL = (
    "UPDATE ledger_head SET last_posting_sequence = %s, last_hash = %s, last_payment_sequence = %s,"
    " last_payment_hash = %s, lock_version = %s, stamp_floor_us = %s, order_floor_us = %s WHERE id = 1"
    " AND last_posting_sequence = %s"
    " AND last_hash = %s AND last_payment_sequence = %s AND last_payment_hash = %s AND catalog_version = %s"
    " AND lock_version = %s AND stamp_floor_us = %s AND order_floor_us = %s RETURNING id"
)


def write_rows(session: Session, base: Head, end: Head, statements: list[tuple[str, Any]]) -> bool:
    """In `session`'s transaction (PostgreSQL): take the sequencer lock and, if the head is `base`,
    move it to `end` and send a decided group's statements (`bulk.WriteBatch.statements`); False,
    with nothing written, if the head is another. The caller commits. One statement locks,
    checks and moves the head (`_MOVE_HEAD_SQL`), on the driver's connection: no ORM flush; the
    transaction's `GENERIC_PLANS_SQL` goes in the same round trip."""
    assert end[4] == base[4], "a group decided ahead never moves the catalog version"
    raw = bulk.raw_connection(session)
    with raw.pipeline():  # the setting goes with the head's move: one round trip
        raw.execute(GENERIC_PLANS_SQL)
        moving = raw.execute(_MOVE_HEAD_SQL, (*end[:4], end[5], end[6], end[7], *base))
    if moving.fetchone() is None:
        return False
    batch = bulk.WriteBatch(session)
    batch.statements = list(statements)
    batch.send()
    return True


_DATE_CHANGE_SQL = "UPDATE ledger_head SET order_floor_us = %s WHERE id = 1"


def date_catalog_change(session: Session, head: SequencerHead, clock_us: int) -> int:
    """Under the sequencer lock (`head` as `lock_sequencer` returned it): the instant a catalog
    change (or a grant: `UnitOfWork.date_change`) is dated, and the head's order floor moved to it.

    The re-rate takes the campaign and merchant versions, and the grants, in force at a payment's
    acceptance instant; live, a payment is rated under what was in force when its group was
    decided, in acceptance order. The two agree only if every change is dated after every payment
    before it and before every payment after it, whichever host's clock stamps them. The order
    floor (`ledger_head.order_floor_us`) is the latest instant a payment was accepted at or a
    change was dated at; every live stamp is at least it (`UnitOfWork.now_us`), so acceptance
    instants never go back along the chain, and a change is dated at the clock's instant but past
    the order floor and the stamp floor (payments stamped at the floor by a clock behind it,
    helper-83). Two hosts whose clocks differ by a second dated a change before a payment the other
    stamped earlier in the chain, or stamped a payment rated under a change before the change's
    instant, and the re-rate named payments whose live award was right (helper-107; dated past
    only the last payment, a change still came before an earlier payment stamped by the host
    ahead, helper-110). The history import's named past instants are not held to the order floor:
    it enters the program's versions with its clock set back first, then the payments between them."""
    dated = max(clock_us, head.stamp_floor_us + 1, head.order_floor_us + 1)
    bulk.driver_run(session, _DATE_CHANGE_SQL, (dated,))
    head.order_floor_us = dated
    return dated


def lock_sequencer(session: Session, catalog_changed: bool = False) -> SequencerHead:
    """Take the sequencer lock for `session`'s transaction (PostgreSQL: an UPDATE of the head row
    locks it; SQLite: its `BEGIN IMMEDIATE` already is the lock) and count the transaction as one
    more unit of work under it (`lock_version`), whatever else it changes: a group decided ahead
    of its write (`Ledger.decide_ahead`) is written only if no unit came in between. With
    `catalog_changed`, the catalog's version moves too (`engine.store.config`). One statement;
    the head as it now stands. Every writer takes the lock here or in `Ledger.unit_of_work`
    (which reads the head at its start and counts itself at its end, with the chains' heads)."""
    return SequencerHead(*bulk.driver_run(session, _LOCK_SQL[catalog_changed])[0])


@dataclasses.dataclass(eq=False)
class DecidedGroup:
    """A group decided ahead, outside the lock (`Ledger.decide_ahead`), waiting to be written
    (`Ledger.write_decided`): its results, its rows, the head it is chained after and the
    head once written, its effects, and the group it was decided over (if any)."""

    submissions: list[Submission]
    options: dict[str, Any]  # `Ledger.submit`'s keyword arguments, to decide it again under the lock
    results: list[Result]
    batch: bulk.WriteBatch
    base: Head
    end: Head
    effects: GroupEffects
    after: DecidedGroup | None  # decided over this group's effects (it was not written yet)
    written: bool = False  # written exactly as decided

    @property
    def writes_nothing(self) -> bool:
        """Answered from committed rows only: nothing to write, no chain or catalog moved, and not
        laid over a group still being written. Such answers are final without the lock."""
        return self.after is None and not self.batch.statements and self.end[:5] == self.base[:5]


@dataclasses.dataclass(frozen=True)
class ReadView:
    """A read-only look at the ledger, without the sequencer lock; see `Ledger.read_view`.

    `session` to read in, `catalog` the `CatalogSnapshot` of the head's catalog version."""

    session: Session
    catalog: CatalogSnapshot


class Ledger:
    """Storage-backed engine operations; one instance per process."""

    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self._catalog: CatalogSnapshot | None = None
        self._validity: dict[tuple[str, int], int] = {}  # (campaign, version) -> validity_months
        self._reader = db.reader(engine)  # transactions that only read (SQLite: DEFERRED, no writer lock)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")  # quotes on PostgreSQL
        self.snapshots = db.HeldConnection(self._autocommit)  # groups decided ahead (`decide_ahead`)

    def close(self) -> None:
        """Close the connection kept for groups decided ahead (the process's shutdown)."""
        self.snapshots.close()

    # -- units of work -----------------------------------------------------

    @contextlib.contextmanager
    def unit_of_work(self, catalog: CatalogSnapshot | None = None) -> Iterator[UnitOfWork]:
        """A posting transaction: open a session and its transaction, take the sequencer
        lock, yield the `UnitOfWork`; commit when the block ends, roll back on an exception.

        Whatever the block reads under the lock is what the block's writes are decided
        against: every writer of every process takes this lock first and holds it to
        its commit, so postings, payments and their sequences are one linear chain.
        With `catalog`, the unit posts against that catalog instead of the head's (the
        history import: what was in force at a past instant).
        """
        with self._transaction() as session, self._locked(session, catalog) as unit:
            yield unit

    @contextlib.contextmanager
    def read_view(self, session: Session | None = None) -> Iterator[ReadView]:
        """A `ReadView` for readers: the head is read without the sequencer lock, and the
        catalog is the one its version names. With `session`, read in it (the caller owns
        it); else in a new read-only session (`db.reader`: on SQLite a DEFERRED transaction,
        one snapshot that never waits for the writer), closed (never committed) when the
        block ends."""
        if session is not None:
            yield self._read_view(session)
            return
        with Session(self._reader) as own:
            yield self._read_view(own)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _locked(self, session: Session, catalog: CatalogSnapshot | None = None) -> Iterator[UnitOfWork]:
        unit = UnitOfWork(session, _locked_head(session), self)
        if catalog is not None:
            unit._catalog = catalog
        yield unit
        unit._check_flushed()
        unit._write_head()

    def _read_view(self, session: Session) -> ReadView:
        (version,) = bulk.driver_run(session, _CATALOG_VERSION_SQL)[0]  # read, not locked
        return ReadView(session, self._catalog_snapshot(session, version))

    def quote(self, purchase: Purchase, wallet_state: bool = True) -> tuple[Outcome, CatalogSnapshot]:
        """Rate `purchase` as `submit` would rate it now, alone, against the committed state: the
        same state loading and kernel, in a read-only snapshot (`REPEATABLE READ, READ ONLY` on
        PostgreSQL, a DEFERRED transaction on SQLite) that takes no sequencer lock and writes
        nothing. The outcome and the catalog it used.

        Usually against the process's catalog, the head's catalog version read beside the
        state: on PostgreSQL one pipeline that opens and ends its own snapshot, one round trip
        besides the pool's ping. When the process has no catalog yet, or the head names another
        version (another process changed a campaign), the quote is made again in one snapshot
        that reads the head, loads its catalog, then the state.

        Without `wallet_state`, the purchase is rated as if its wallet had no history (no
        window usage, no balance): per-wallet caps bite as for a first purchase, the same for
        every wallet, so the answer tells nothing of the wallet's earnings (what a terminal,
        which reads no wallet, is shown)."""
        if not wallet_state:
            purchase = purchase.model_copy(update={"wallet_id": NO_WALLET})
        events: list[Event] = [("quote", purchase)]
        catalog = self._catalog
        if catalog is not None:
            outcome = self._quote_against(catalog, events)
            if outcome is not None:
                return outcome, catalog
        with Session(self._reader) as session:
            reads = bulk.ReadBatch(session)
            reads.setting("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            reads.run()
            catalog = self._read_view(session).catalog
            rating = catalog.rating_for([purchase])
            state, books = self._load_state(session, rating, events, {})
            session.rollback()
        _expire_due(state, books, self.clock.now_us())
        return rate(rating, events, state)[0], catalog

    def _quote_against(self, catalog: CatalogSnapshot, events: list[Event]) -> Outcome | None:
        """The quote against `catalog`; None when the head names another catalog version."""
        pg = self.engine.dialect.name == "postgresql"
        # PostgreSQL: the driver in autocommit, the snapshot opened and ended inside the pipeline.
        with Session(self._autocommit if pg else self._reader) as session:
            reads = bulk.ReadBatch(session)
            reads.setting("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            reads.closing("ROLLBACK")
            head = reads.query(_CATALOG_VERSION_SQL)
            rating = catalog.rating_for([body for _, body in events])
            state, books = self._load_state(session, rating, events, {}, reads)
            session.rollback()
        if head.rows[0][0] != catalog.version:
            return None
        _expire_due(state, books, self.clock.now_us())  # in memory: a quote writes nothing
        return rate(rating, events, state)[0]

    # -- the sequencer -----------------------------------------------------

    def _catalog_snapshot(self, session: Session, version: int) -> CatalogSnapshot:
        # Read and published once: threads (quotes, readers, the group committer) share it.
        catalog = self._catalog
        if catalog is None or catalog.version != version:
            campaigns = [
                Campaign.model_validate_json(row.record_json)
                for row in session.execute(
                    select(CampaignVersionRow)
                    .join(CampaignRow, CampaignRow.id == CampaignVersionRow.campaign_id)
                    .where(CampaignVersionRow.version == CampaignRow.current_version)
                ).scalars()
            ]
            merchants = [
                Merchant.from_stored(row.record_json)
                for row in session.execute(select(MerchantRow).order_by(MerchantRow.id)).scalars()
            ]
            terminals = {r.id: r.merchant_id for r in session.execute(select(TerminalRow.id, TerminalRow.merchant_id))}
            revoked_keys = session.execute(
                select(ApiKeyRow.id).where(ApiKeyRow.role == "terminal", ApiKeyRow.revoked_at_us.is_not(None))
            )
            revoked_apps = session.execute(select(PaymentAppRow.id).where(PaymentAppRow.revoked_at_us.is_not(None)))
            catalog = CatalogSnapshot(
                version=version,
                campaigns={c.id: c for c in campaigns},
                merchants={m.id: m for m in merchants},
                merchant_by_terminal=terminals,
                revoked_keys=frozenset(revoked_keys.scalars()),
                revoked_apps=frozenset(revoked_apps.scalars()),
            )
            published = self._catalog
            # Versions only grow: a reader's snapshot taken before a change (the reconciliation's)
            # reads an older catalog, which must not replace the newer one everyone decides against.
            if published is None or published.version < version:
                self._catalog = catalog
        return catalog

    def validity_of_versions(self, session: Session, versions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The `validity_months` of each (campaign, version) stored (`validity_of_versions`)."""
        return validity_of_versions(session, versions, self._validity)

    # -- the money path ----------------------------------------------------

    @staticmethod
    def new_payment_ids(n: int, accepted_at_us: int) -> list[str]:
        """`n` new payment ids for payments accepted at `accepted_at_us`: `tx_`, the acceptance
        millisecond in 12 hex digits, then 80 random bits (a UUIDv7's 48-bit millisecond first,
        RFC 9562 §5.7).

        Time-ordered so that the payment's, its awards' and its lots' primary keys grow at their
        indexes' right edge instead of landing on a random page of an ever larger index
        (docs/BENCHMARKS.md, issue 11). The stamp is the answer's `accepted_at` (what it tells
        whoever holds an id: docs/ARCHITECTURE.md, *The unit of work*); the random part says
        nothing of volumes (the answer's `sequence` does). The random parts are drawn from the
        operating system in one call for a whole group: a call per payment released the
        interpreter lock a thousand times a group, and in a busy server each release waited for
        it to come back."""
        drawn = os.urandom(PAYMENT_ID_BYTES * n).hex()
        width = 2 * PAYMENT_ID_BYTES
        stamp = f"tx_{accepted_at_us // 1000:012x}"
        return [stamp + drawn[k : k + width] for k in range(0, width * n, width)]

    def submit(
        self,
        submissions: list[Submission],
        *,
        accepted_at_us: int | None = None,
        catalog: CatalogSnapshot | None = None,
        remember_answers: bool = True,
    ) -> list[Result]:
        """Accept, decline or replay each submission in order.

        The history import (`engine.store.importer`) posts past payments: it stamps the group
        `accepted_at_us` instead of the clock's now, rates it against `catalog` (what was in
        force then) instead of the head's, and with `remember_answers=False` no answer is
        remembered under its idempotency key: a bad row of the file writes nothing, and an
        imported payment is imported once by its receipt (its payment row keeps its answer;
        a remembered answer stamped in the past would go at the next purge anyway).

        A group is one transaction, except for a receipt used again in the group under
        another idempotency key: whether that later use is `receipt_already_used` depends
        on whether the earlier one is accepted. When it is, the later use is declined in
        the same transaction; when the earlier one is declined, the later use is rated in
        a next transaction (a loop, each round deciding at least its first submission).
        After `RECEIPT_ROUNDS_MAX` rounds the uses still waiting answer 409 `receipt_in_use`,
        not remembered (a retry is decided then): one request repeating a receipt the ledger
        declines cannot make the ledger take a round per use, each re-reading the rest. Nor can
        anything else make it take more than `ROUNDS_MAX`: a wallet's refunds returning points
        into a lot past its end are decided one a round (`_after_due_returns`), and a thousand
        refunds of one purchase took a thousand transactions under the lock (helper-89's probe:
        57 s, every request of the process waiting); those still waiting then answer 409
        `wallet_in_use`, not remembered. (The history import, which remembers no answer, is not
        held to it: its file is the operator's, posted with the API stopped, and a line refused
        so could not be imported again.)
        """
        results: list[Result | None] = [None] * len(submissions)
        todo = list(range(len(submissions)))
        receipt_rounds = rounds = 0
        while todo:
            if receipt_rounds == RECEIPT_ROUNDS_MAX or (remember_answers and rounds == ROUNDS_MAX):
                code = "receipt_in_use" if receipt_rounds == RECEIPT_ROUNDS_MAX else "wallet_in_use"
                for i in todo:
                    results[i] = Result(*decline(code), remember=False)
                break
            group = [submissions[i] for i in todo]
            decided, receipt_waiting = self._submit_one(group, accepted_at_us, catalog, remember_answers)
            for i, result in zip(todo, decided):
                results[i] = result
            receipt_rounds += receipt_waiting  # `GroupEffects.receipt_waiting`
            rounds += 1
            todo = [i for i in todo if results[i] is None]
        self.count_declines(results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    @staticmethod
    def count_declines(results: list[Result]) -> None:
        for result in results:
            if result.status >= 400 and not result.replayed:
                metrics.DECLINES.labels(code=str(result.body.get("code"))).inc()

    def _submit_one(
        self,
        submissions: list[Submission],
        accepted_at_us: int | None = None,
        catalog: CatalogSnapshot | None = None,
        remember_answers: bool = True,
    ) -> tuple[list[Result | None], bool]:
        """Accept, decline or replay each submission in order, in one transaction; None for
        a submission left to the next round (its receipt's earlier use here was not accepted, or
        it waits for points a refund returned past their end to expire); and whether any waits
        for a receipt (`GroupEffects.receipt_waiting`)."""
        keys = {(s.terminal_id, s.idempotency_key) for s in submissions}
        with self._transaction() as session:
            if remember_answers and session.get_bind().dialect.name == "postgresql":
                # A group of pure retries needs no lock: a remembered answer is committed and final.
                remembered = self._remembered(session, keys)
                if len(remembered) == len(keys):
                    rows = [remembered[(s.terminal_id, s.idempotency_key)] for s in submissions]
                    return [replay_answer(r[2], r[3], r[4], s.request_hash) for r, s in zip(rows, submissions)], False
            with self._locked(session, catalog) as unit:
                results, batch, effects = self._decide_group(unit, submissions, keys, accepted_at_us, remember_answers)
                batch.send()
                return results, effects.receipt_waiting

    def _queue_group_reads(
        self,
        batch: bulk.ReadBatch,
        catalog: CatalogSnapshot | None,
        submissions: list[Submission],
        keys: set[tuple[str, str]],
        remember_answers: bool,
        look_up_receipts: bool = True,
        stamped: bool = False,
    ) -> _GroupReads:
        """Queue on `batch` every read deciding `submissions` needs, to go in one round trip on
        PostgreSQL: remembered answers, receipts used, the originals of refunds and, for a
        group without refunds, the rating state of every purchase (of retries too: which are
        retries is known once the answers are read, and reading their wallets costs less than a
        second round trip) against `catalog` (None: not known yet, the state is read later), and
        the budget-threshold events said already (`outbox.queue_said`: nothing is read after the
        pipeline that ends a snapshot). A group with refunds reads its state once its originals,
        whose wallets it needs, are read. A group `stamped` at a past instant (the history
        import's) reads the ledger's last payment's acceptance too."""
        original_ids = {s.body.original_id for s in submissions if isinstance(s.body, Refund)}
        receipt_keys = {receipt for s in submissions if look_up_receipts and (receipt := s.receipt_key) is not None}
        reads = _GroupReads(
            batch,
            # Without remembered answers (the import), keys identify nothing: none is looked up.
            self._queue_remembered(batch, keys if remember_answers else set()),
            self._queue_originals(batch, original_ids),
            original_ids,
            self._queue_used_receipts(batch, receipt_keys),
            None,
        )
        if stamped:
            reads.last_accepted = batch.query(_LAST_ACCEPTED_SQL)
        if catalog is not None:
            reads.said = outbox.queue_said(batch, catalog.campaigns)
            if not original_ids:
                bodies = [s.body for s in submissions]
                reads.rating = catalog.rating_for(bodies)
                reads.state = self._queue_state(batch, reads.rating, bodies, {})
        return reads

    def _decide_group(
        self,
        unit: UnitOfWork,
        submissions: list[Submission],
        keys: set[tuple[str, str]],
        accepted_at_us: int | None = None,
        remember_answers: bool = True,
        overlay: GroupEffects | None = None,
        keep_effects: bool = False,
        look_up_receipts: bool = True,
        reads: _GroupReads | None = None,
    ) -> tuple[list[Result | None], bulk.WriteBatch, GroupEffects]:
        """`_submit_one` inside `unit`: each submission's result, the batch of rows that posts
        them (queued, not sent on PostgreSQL) and, with `keep_effects`, what the group leaves
        behind (else empty: the money path under the lock does not pay for them).

        Under the sequencer lock, `unit` reads the state as it stands. The posting pipeline
        (`engine.store.pipeline`) also decides a group in a read-only snapshot that may not see
        the group before it yet: `overlay` is that group's effects, laid over what is read.
        `reads`: the group's reads (`_queue_group_reads`), run already; else they are run here."""
        session = unit.session
        terminals = unit.catalog.merchant_by_terminal
        results: list[Result | None] = [None] * len(submissions)

        if reads is None:
            reads = self._queue_group_reads(
                bulk.ReadBatch(session),
                unit.catalog,
                submissions,
                keys,
                remember_answers,
                look_up_receipts,
                accepted_at_us is not None,
            )
            reads.batch.run()

        # 1. Remembered keys answer first (looked up again under the lock); a key twice
        # in one group answers like a retry.
        remembered = {(row[0], row[1]): row for row in reads.remembered.rows} if remember_answers else {}
        if overlay is not None:
            remembered.update((k, overlay.remembered[k]) for k in keys & overlay.remembered.keys())
        first_in_group: dict[tuple[str, str], int] = {}
        fresh: list[int] = []
        for i, s in enumerate(submissions):
            key = (s.terminal_id, s.idempotency_key)
            row = remembered.get(key)
            if row is not None:
                results[i] = replay_answer(row[2], row[3], row[4], s.request_hash)
            elif key in first_in_group:
                continue  # answered after the group is rated, from the first one's result
            else:
                first_in_group[key] = i
                fresh.append(i)

        # 2. References the rating kernel cannot see: originals and their merchant.
        originals = reads.originals()
        if overlay is not None and reads.original_ids:
            originals.update(overlay.originals(reads.original_ids))  # its final state, over what was read
        used_receipts = {(row[0], row[1]) for row in reads.receipts.rows}
        receipt_keys = {receipt for i in fresh if (receipt := submissions[i].receipt_key) is not None}
        if overlay is not None:
            used_receipts |= receipt_keys & overlay.receipts
        claimed: dict[tuple[str, str], int] = {}  # receipt -> its first fresh use in this group
        deferred: dict[int, int] = {}  # a later use of a receipt -> that first use
        next_round: set[int] = set()  # decided in a next round (`_after_due_returns`)
        events: list[Event] = []
        payment_ids: dict[int, str] = {}
        accepted_at = unit.now_us() if accepted_at_us is None else unit.stamp_at(accepted_at_us)
        if reads.last_accepted is not None and reads.last_accepted.rows:
            last = reads.last_accepted.rows[0][0]
            if accepted_at < last:  # a payment accepted since the import's last group: not the import's
                raise StampBehindLedger(accepted_at, last)
        new_ids = iter(self.new_payment_ids(sum(submissions[i].payment_id is None for i in fresh), accepted_at))
        revoked_keys, revoked_apps = unit.catalog.revoked_keys, unit.catalog.revoked_apps
        for i in fresh:
            s = submissions[i]
            s.merchant_id = terminals.get(s.terminal_id)
            if s.merchant_id is None or (s.body.type == "purchase" and s.body.merchant_id != s.merchant_id):
                results[i] = Result(*decline("forbidden", "a terminal posts only for its own merchant"), remember=False)
                continue
            if s.key_id is not None and (
                s.key_id in revoked_keys or (s.key_expires_at_us is not None and s.key_expires_at_us <= accepted_at)
            ):
                results[i] = Result(*decline("unauthenticated", KEY_ENDED), remember=False)
                continue
            if s.receipt is not None:
                if s.receipt.app_id in revoked_apps:
                    results[i] = Result(*decline("receipt_invalid", APP_REVOKED), remember=False)
                    continue
                ends = s.receipt.secret_until_us  # valid while `until > now`, as `Apps.live_secrets`
                if ends is not None and ends <= accepted_at:
                    results[i] = Result(*decline("receipt_invalid", SECRET_ENDED), remember=False)
                    continue
            if s.body.type == "refund":
                original = originals.get(s.body.original_id)
                if original is None:
                    results[i] = self._decline("original_not_found", s)
                    continue
                if original["merchant_id"] != s.merchant_id:
                    results[i] = self._decline("refund_merchant_mismatch", s)
                    continue
                if s.receipt is not None and (original["receipt_app_id"], original["receipt_jti"]) != (
                    s.receipt.app_id,
                    s.receipt.original_jti,
                ):
                    results[i] = Result(
                        *decline("receipt_mismatch", "the receipt's original_jti is not the purchase's receipt"),
                        remember=False,
                    )
                    continue
            receipt_key = s.receipt_key
            if receipt_key in used_receipts:
                results[i] = self._decline("receipt_already_used", s)
                continue
            if receipt_key is not None:
                if receipt_key in claimed:
                    deferred[i] = claimed[receipt_key]
                    continue
                claimed[receipt_key] = i
            payment_ids[i] = s.payment_id if s.payment_id is not None else next(new_ids)
            events.append((payment_ids[i], s.body))

        answer_json: dict[str, str]  # payment id -> its answer, serialised once for its payment row
        effects = GroupEffects()
        if events:
            # Rated against the catalog of the campaigns the whole group can meet: the one its
            # state was read for, so every window usage the kernel can consult was read.
            if reads.state is not None:
                assert reads.rating is not None
                catalog = reads.rating
                state, books = reads.state(overlay)
            else:
                catalog = unit.catalog.rating_for(s.body for s in submissions)
                state, books = self._load_state(session, catalog, events, originals, overlay=overlay)
            expired = _expire_due(state, books, accepted_at)
            if reads.original_ids:
                # A purchase spending points after a refund of its wallet returned some into a lot
                # already past its end: decided in the next round, once they have left.
                waiting = _after_due_returns(events, originals, books, accepted_at)
                if waiting:
                    next_round = {i for i, pid in payment_ids.items() if pid in waiting}
                    events = [event for event in events if event[0] not in waiting]
            usage_before, spend_before = dict(state.usage), dict(state.spend)
            pending_before = {
                (pid, cid): a.pending for pid, p in state.purchases.items() for cid, a in p.awards.items()
            }
            with metrics.KERNEL_SECONDS.time():
                outcomes = rate(catalog, events, state)
            writer = unit.writer(accepted_at, books, remember_answers)
            for wallet_id, lot, points in expired:  # first: they left before anything was spent
                writer.post(expiry_posting(wallet_id, lot, points))
            by_payment = dict(zip((pid for pid, _ in events), outcomes))
            # Runs of plain purchases (no points spent, no debt) post as columns; anything
            # else posts alone, after the run before it, so the chains keep acceptance order.
            run: list[tuple[int, str, Submission, Outcome]] = []

            def post_run() -> None:
                answers = writer.plain_purchases([(pid, s, outcome) for _, pid, s, outcome in run])
                for (i, *_), answer in zip(run, answers):
                    results[i] = Result(201, answer)
                run.clear()

            for i in fresh:
                if results[i] is not None or i in deferred or i in next_round:
                    continue
                s = submissions[i]
                outcome = by_payment[payment_ids[i]]
                if outcome.declined:
                    results[i] = self._decline(outcome.declined, s)
                    continue
                if COLUMNAR_PURCHASES and writer.is_plain(s.body):
                    run.append((i, payment_ids[i], s, outcome))
                    continue
                post_run()
                if s.body.type == "purchase":
                    results[i] = Result(201, writer.purchase(payment_ids[i], s, outcome, state))
                else:
                    results[i] = Result(
                        201,
                        writer.refund(payment_ids[i], s, outcome, state, originals[s.body.original_id], pending_before),
                    )
            post_run()
            batch = writer.flush(state, usage_before, spend_before, send=False)
            answer_json = writer.answers_json
            outbox.queue_group(
                batch,
                results,
                spend_before,
                state.spend,
                unit.catalog.campaigns,
                accepted_at,
                reads.said,
                [
                    points_expired(w, lot.id, lot.campaign_id, points, accepted_at)
                    for w, lot, points in (*expired, *writer.expired_on_return)
                ],
            )
            if keep_effects:
                effects.usage, effects.spend, effects.books = state.usage, state.spend, writer.books
                effects.originals = functools.partial(writer.as_originals, originals)
        else:
            batch = bulk.WriteBatch(session)
            answer_json = {}

        # 3. A receipt's later uses: declined if its first use here was accepted, else left
        # to the next round. Then duplicates of keys inside the group, and remember every answer.
        for i, first_use in deferred.items():
            first_result = results[first_use]
            if first_result is not None and first_result.status == 201:
                results[i] = self._decline("receipt_already_used", submissions[i])
            elif first_result is not None:
                effects.receipt_waiting = True  # its first use was declined: decided next round
        for i, s in enumerate(submissions):
            first = first_in_group.get((s.terminal_id, s.idempotency_key))
            if results[i] is not None or first is None or first == i:
                continue
            done = results[first]
            if done is not None:
                base = submissions[first]
                results[i] = replay_answer(base.request_hash, done.status, done.body_json, s.request_hash)
        # An accepted payment's answer is remembered on its payment row (`PostingWriter._payment_row`,
        # serialised once there); a decline's in an `idempotency_key` row.
        remember = []
        for key, i in first_in_group.items():
            r = results[i]
            if r is None or not r.remember or not remember_answers:
                continue
            if r.status == 201:
                if keep_effects:
                    stored = answer_json[r.body["id"]]
                    effects.remembered[key] = (*key, submissions[i].request_hash, 201, stored)
                continue
            remember.append(
                dict(
                    terminal_id=key[0],
                    key=key[1],
                    request_hash=submissions[i].request_hash,
                    response_status=r.status,
                    response_json=orjson.dumps(r.body).decode(),
                    payment_id=None,
                    created_at_us=accepted_at,
                )
            )
            if keep_effects:
                kept = remember[-1]
                effects.remembered[key] = (*key, kept["request_hash"], kept["response_status"], kept["response_json"])
        batch.insert(IdempotencyRow.__table__, remember)
        if keep_effects:
            for i, r in enumerate(results):
                if r is not None and r.status == 201 and not r.replayed:
                    receipt_key = submissions[i].receipt_key
                    if receipt_key is not None:
                        effects.receipts.add(receipt_key)
        return results, batch, effects

    # -- deciding ahead (the posting pipeline, `engine.store.pipeline`) ------

    def decide_ahead(
        self,
        submissions: list[Submission],
        *,
        accepted_at_us: int | None,
        catalog: CatalogSnapshot | None = None,
        remember_answers: bool = True,
        after: DecidedGroup | None = None,
        receipts_unused: bool = False,
    ) -> DecidedGroup | None:
        """Decide a group as `submit` would, without the lock and without writing: in a
        `REPEATABLE READ, READ ONLY` snapshot (PostgreSQL) that reads the head with the state.
        With `after`, a group decided before and perhaps not written yet: when the snapshot
        does not see it, its effects are laid over what is read and this group is chained after
        it. None when the group must be decided under the lock instead (another writer moved
        the head past `after`, or a receipt is used twice in the group: two rounds).

        `accepted_at_us` None stamps the group with the clock's instant read once the snapshot
        holds (after its head was read), as `submit` reads it after the lock: a unit of work that
        committed before that instant is in the snapshot, its head the one the write checks, and
        one that commits after it moves that head (its `lock_version`), so the write is refused.
        An instant read before the snapshot could precede a unit the snapshot already sees (a
        settlement run), and the group would be written after the run with an earlier stamp.

        With `receipts_unused`, the caller knows no payment carries any of the group's receipts
        (the history import's first run: none from its source before it, each payment id once
        in its file), and they are not looked up. Should one be used all the same, the
        database's unique receipt key refuses the group's write, and it is decided again under
        the lock, where they are."""
        options: dict[str, Any] = dict(
            accepted_at_us=accepted_at_us, catalog=catalog, remember_answers=remember_answers
        )
        keys = {(s.terminal_id, s.idempotency_key) for s in submissions}
        # The snapshot opened, its head and the group's reads in one pipeline (one round trip),
        # the driver in autocommit; and for a group whose state is read with them (no refunds,
        # a catalog to read it against), the snapshot ended in it too.
        with self.snapshots.session() as session:
            batch = bulk.ReadBatch(session)
            batch.setting("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            batch.setting(GENERIC_PLANS_SQL)
            head = batch.query(_HEAD_SQL)
            known = catalog or self._catalog
            reads = self._queue_group_reads(
                batch, known, submissions, keys, remember_answers, not receipts_unused, accepted_at_us is not None
            )
            if reads.state is not None:
                batch.closing("ROLLBACK")
            try:
                batch.run()
                seen: Head = tuple(head.rows[0])
                overlay: GroupEffects | None = None
                # A group that moved no head (declines only) looks the same written or not: its
                # effects (absolute values, answers as remembered) are laid over either way.
                if after is None:
                    base = seen
                elif seen == after.base:
                    base, overlay = after.end, after.effects
                elif seen == after.end:
                    base, after = seen, None  # the snapshot sees it written
                else:
                    return None
                if reads.state is not None and catalog is None and base[4] != known.version:  # type: ignore[union-attr]
                    return None  # the catalog changed: read in a snapshot already ended; under the lock
                unit = UnitOfWork(session, SequencerHead(*base), self)
                unit._catalog = catalog if catalog is not None else known if reads.state is not None else None
                results, batch_out, effects = self._decide_group(
                    unit,
                    submissions,
                    keys,
                    accepted_at_us,
                    remember_answers,
                    overlay,
                    keep_effects=True,
                    look_up_receipts=not receipts_unused,
                    reads=reads,
                )
            finally:
                session.rollback()  # ends the snapshot unless the pipeline did (then nothing is sent)
        if any(r is None for r in results):
            return None
        unit._check_flushed()
        chain = unit._chain
        end = (
            chain.posting_sequence,
            chain.posting_hash,
            chain.payment_sequence,
            chain.payment_hash,
            base[4],
            base[5] + 1,  # its write is a unit of work under the lock
            unit.stamp_floor_us,
            unit._order_floor(),
        )
        return DecidedGroup(submissions, options, results, batch_out, base, end, effects, after)  # type: ignore[arg-type]

    def write_decided(self, decided: DecidedGroup, writer: RowWriter | None = None) -> bool:
        """Write a group decided ahead and commit, if the head under the lock is the one it was
        chained after and the group it was decided over was written as decided; False (nothing
        written) else. A unique key refusing a row (a key or receipt taken meanwhile) raises.
        With `writer`, `write_rows` runs there (`engine.store.write_process`: another process),
        else on a connection of this ledger's engine."""
        if decided.after is not None and not decided.after.written:
            return False
        if writer is not None:
            written = writer.write(decided.base, decided.end, decided.batch.statements)
        else:
            with Session(self.engine) as session, session.begin():
                written = write_rows(session, decided.base, decided.end, decided.batch.statements)
        if not written:
            return False
        decided.written = True
        self.count_declines(decided.results)
        return True

    def wrote(self, decided: DecidedGroup) -> bool:
        """Whether a group decided ahead whose write raised was committed all the same: its
        first accepted payment is stored with the answer decided (one commit wrote all of it),
        or, in a group that accepted none, every decline it remembered is stored as decided (all
        a group of declines writes: should another request with the same key and body have
        stored one, its answer is the one this group gives). A group that remembered nothing
        cannot tell, and is taken as not written.

        It waits for the sequencer lock first (and writes nothing under it): a write whose
        client died after sending COMMIT may still be committing, holding that lock, and a
        read before it ends would take the group as not written and have it posted again,
        every first answer coming back as a replay."""
        fresh = [(s, r) for s, r in zip(decided.submissions, decided.results) if not r.replayed]
        accepted = next((r.body for _, r in fresh if r.status == 201), None)
        # Without an accepted payment, every decline the group remembered must be stored as
        # decided (a key's row could also come from another process's request with that key).
        declined = {
            (s.terminal_id, s.idempotency_key): (s.request_hash, r.status, r.body)
            for s, r in fresh
            if r.status >= 400 and r.remember
        }
        if accepted is None and (not declined or not decided.options.get("remember_answers", True)):
            return False
        with Session(self.engine) as session, session.begin():
            _locked_head(session)
            if accepted is not None:
                stored = session.execute(
                    select(PaymentRow.response_json).where(PaymentRow.id == accepted["id"])
                ).scalar()
                if stored is None or json.loads(stored) != accepted:
                    return False
            else:
                remembered = self._remembered(session, set(declined))
                if any(
                    (row := remembered.get(key)) is None or (row[2], row[3], json.loads(row[4])) != expected
                    for key, expected in declined.items()
                ):
                    return False
        decided.written = True
        self.count_declines(decided.results)
        return True

    @classmethod
    def _remembered(cls, session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
        reads = bulk.ReadBatch(session)
        read = cls._queue_remembered(reads, keys)
        reads.run()
        return {(row[0], row[1]): row for row in read.rows}

    @staticmethod
    def _queue_remembered(reads: bulk.ReadBatch, keys: set[tuple[str, str]]) -> _Remembered:
        """Queue the look-up of the answers remembered under these (terminal, key): on the
        payments accepted under them, and in `idempotency_key` (declines, and payments accepted
        before their rows carried their keys)."""
        tuples = sorted(keys)
        return _Remembered(
            reads.where_tuples(
                PaymentRow.__table__,
                ["terminal_id", "idempotency_key", "request_hash", "response_json"],
                ["terminal_id", "idempotency_key"],
                tuples,
            ),
            reads.where_tuples(
                IdempotencyRow.__table__,
                ["terminal_id", "key", "request_hash", "response_status", "response_json"],
                ["terminal_id", "key"],
                tuples,
            ),
        )

    def remembered_answer(self, terminal_id: str, key: str, request_hash: str) -> Result | None:
        """The answer remembered under (terminal, key) for this very request, as a replay; None when
        nothing is remembered or another request used the key. Reads committed rows; takes no lock."""
        with Session(self._reader) as session:
            row = self._remembered(session, {(terminal_id, key)}).get((terminal_id, key))
        if row is None or row[2] != request_hash:
            return None
        return Result(row[3], json.loads(row[4]), replayed=True)

    @staticmethod
    def _queue_used_receipts(reads: bulk.ReadBatch, receipt_keys: set[tuple[str, str]]) -> bulk.Read:
        """Queue the look-up of which of these (app, jti) an accepted transaction carries already."""
        return reads.where_tuples(PaymentRow.__table__, list(_RECEIPT), list(_RECEIPT), sorted(receipt_keys))

    @staticmethod
    def _decline(code: str, s: Submission) -> Result:
        return Result(*decline(code))  # the status is the error catalog's (engine/errors.py)

    @staticmethod
    def _queue_originals(reads: bulk.ReadBatch, ids: set[str]) -> Callable[[], dict[str, Row]]:
        """Queue the reads of the purchases `ids` a group refunds (what refunding needs of each:
        merchant, wallet, amounts, receipt, awards, redemption legs); the originals found, once
        `reads` has run."""
        wanted = sorted(ids)
        payments = reads.where_in(
            PaymentRow.__table__,
            ["id", "merchant_id", "wallet_id", "amount", "points_used", "refunded_amount", *_RECEIPT],
            "id",
            wanted,
            extra="type = 'purchase'",
        )
        awards = reads.where_in(
            AwardRow.__table__,
            ["payment_id", "campaign_id", "campaign_version", "points", "pending", "window_key"],
            "payment_id",
            wanted,
        )
        legs = reads.where_in(
            RedemptionLegRow.__table__, ["payment_id", "position", "lot_id", "points"], "payment_id", wanted
        )

        def build() -> dict[str, Row]:
            out: dict[str, Row] = {}
            for pid, merchant_id, wallet_id, amount, points_used, refunded, app_id, jti in payments.rows:
                out[pid] = dict(
                    merchant_id=merchant_id,
                    wallet_id=wallet_id,
                    amount=amount,
                    points_used=points_used,
                    refunded=refunded,
                    receipt_app_id=app_id,
                    receipt_jti=jti,
                    awards={},
                    redemption_legs=[],
                )
            for pid, cid, version, points, pending, window in sorted(awards.rows, key=lambda a: (a[0], a[1])):
                if pid in out:
                    out[pid]["awards"][cid] = AwardState(cid, version, points, pending, window)
            for pid, _, lot, points in sorted(legs.rows, key=lambda leg: (leg[0], leg[1])):
                if pid in out:
                    out[pid]["redemption_legs"].append((lot, points))
            return out

        return build

    def _load_state(
        self,
        session: Session,
        catalog: Catalog,
        events: list[Event],
        originals: dict[str, Row],
        reads: bulk.ReadBatch | None = None,
        overlay: GroupEffects | None = None,
    ) -> tuple[RatingState, dict[str, WalletBook]]:
        """The rating state and wallet books `events` need, read in one round trip on PostgreSQL
        (with whatever `reads` already holds), and `overlay`'s laid over them."""
        reads = reads or bulk.ReadBatch(session)
        build = self._queue_state(reads, catalog, [body for _, body in events], originals)
        reads.run()  # one round trip on PostgreSQL
        return build(overlay)

    def _queue_state(
        self, reads: bulk.ReadBatch, catalog: Catalog, bodies: Sequence[Purchase | Refund], originals: dict[str, Row]
    ) -> Callable[[GroupEffects | None], tuple[RatingState, dict[str, WalletBook]]]:
        """Queue on `reads` the reads of the rating state and wallet books that transactions
        `bodies` need (a refund's original among `originals`); once `reads` has run, the state
        and books, with an overlay's effects laid over them.

        The state may hold more than a group rates (`_decide_group` queues it for every purchase
        of a group before it knows which are retries): the usage of more windows, the books of
        more wallets. Rating reads the state of its own transactions only, and the writer
        writes what changed only; a wallet read as spending (its lots read, an overlay's lots
        laid over them) is so throughout."""
        state = RatingState(balance={})
        usage_keys: set[tuple[str, str, int]] = set()
        wallets: set[str] = set()
        spending: set[str] = set()  # wallets whose balance the kernel checks or a refund may take back
        periods = [(c.id, c.per_wallet_cap_period) for c in catalog.campaigns]
        for body in bodies:
            if body.type == "purchase":
                wallet_id = body.wallet_id
                wallets.add(wallet_id)
                if body.points_used:
                    spending.add(wallet_id)
                at = to_us(body.occurred_at)
                for cid, period in periods:
                    usage_keys.add((cid, wallet_id, window_key(period, at)))
            else:
                o = originals[body.original_id]
                if body.original_id in state.purchases:
                    continue
                wallets.add(o["wallet_id"])
                spending.add(o["wallet_id"])
                awards = {
                    cid: AwardState(cid, a.campaign_version, a.points, a.pending, a.window_key)
                    for cid, a in sorted(o["awards"].items(), key=lambda kv: _order(catalog, kv[0]))
                }
                for cid, a in awards.items():
                    usage_keys.add((cid, o["wallet_id"], a.window_key))
                state.purchases[body.original_id] = PurchaseState(
                    o["wallet_id"], o["merchant_id"], o["amount"], o["points_used"], o["refunded"], awards
                )
        lot_ids: set[str] = set()
        for body in bodies:
            if body.type == "refund":
                o = originals[body.original_id]
                lot_ids.update(lot for lot, _ in o["redemption_legs"])
                lot_ids.update(lot_id(body.original_id, cid) for cid in o["awards"])
        # Only the books of spending wallets hold their lots; any other wallet's balance is
        # never consulted by the kernel (it checks balances of redemptions only) and its
        # book and its kernel balance both leave out the same lots, so they stay equal.
        # A wallet's usage rows by one probe of the (wallet, campaign, window) key each, not one
        # per campaign; rows of windows or campaigns not asked for are left out below.
        usage = reads.where_each(
            WalletWindowUsageRow.__table__,
            ["campaign_id", "wallet_id", "window_key", "points"],
            "wallet_id",
            sorted({wallet_id for _, wallet_id, _ in usage_keys}),
            among={
                "campaign_id": sorted({campaign_id for campaign_id, _, _ in usage_keys}),
                "window_key": sorted({key for _, _, key in usage_keys}),
            },
        )
        spend = reads.query("SELECT id, issued_net FROM campaign")
        build_books = queue_books(reads, wallets, lot_ids, spending)

        def build(overlay: GroupEffects | None) -> tuple[RatingState, dict[str, WalletBook]]:
            for cid, wid, wkey, points in usage.rows:
                if (cid, wid, wkey) in usage_keys:
                    state.usage[(cid, wid, wkey)] = points
            for campaign_id, issued_net in spend.rows:
                state.spend[campaign_id] = issued_net
            books = build_books()
            if overlay is not None:
                overlay.lay_over(state, books, usage_keys, spending)
            state.balance = {w: books[w].spendable() for w in wallets}
            return state, books

        return build


def _expire_due(state: RatingState, books: Mapping[str, WalletBook], at_us: int) -> list[tuple[str, Lot, int]]:
    """Expire the lots of `books` due by `at_us` (`wallet_book.expire_due`), so the kernel checks
    redemptions against the points still valid then: the lots, as (wallet, lot, points), whose
    expiry a posting at `at_us` posts first (a quote, which writes nothing, leaves them)."""
    expired = expire_due(books, at_us)
    if expired and state.balance is not None:
        for wallet_id in {wallet_id for wallet_id, _, _ in expired}:
            if wallet_id in state.balance:
                state.balance[wallet_id] = books[wallet_id].spendable()
    return expired


def _after_due_returns(
    events: list[Event], originals: Mapping[str, Row], books: Mapping[str, WalletBook], at_us: int
) -> set[str]:
    """The purchases of `events` that spend points, and the refunds (whose clawbacks take lots
    earliest-expiring first), after a refund, earlier in the group, of their wallet returned points
    into a lot already past its end at `at_us`: the kernel's balance (one number a wallet) would
    count those points as spendable, and they expire at once; such a transaction is decided in
    the next round (`Ledger.submit`), where its wallet's due lots expire first. Their keys
    (payment ids)."""
    returning: set[str] = set()
    waiting: set[str] = set()
    for key, body in events:
        if body.type == "refund":
            wallet_id = originals[body.original_id]["wallet_id"]
            if wallet_id in returning:  # its clawback would take those points before valid ones
                waiting.add(key)
                continue
            lots = books[wallet_id].lots
            legs = originals[body.original_id]["redemption_legs"]
            if any((lot := lots.get(leg)) is not None and lot.expires_at_us <= at_us for leg, _ in legs):
                returning.add(wallet_id)
        elif body.points_used and body.wallet_id in returning:
            waiting.add(key)
    return waiting


def _order(catalog: Catalog, campaign_id: str) -> tuple[int, str]:
    rank = catalog.rank
    return (rank[campaign_id], "") if campaign_id in rank else (len(rank), campaign_id)


_RECEIPT = ("receipt_app_id", "receipt_jti")  # a payment's receipt: unique among payments

# The wallet of a quote rated without any wallet's state: no stored wallet has it (a wallet id
# is never empty, `engine.limits.ID_PATTERN`), so no usage, lot or debt row is read for it.
NO_WALLET = ""


class PostingWriter:
    """Turns what a unit of work decides into postings, rows and balance deltas, then writes them.

    Obtained from `UnitOfWork.writer`, never constructed: the unit of work decides
    which writer posts (a columnar one can take this one's place behind the same
    calls) and checks at its end that every writer that posted was flushed.

    - `post(posting)`: append one posting to the chain: the next sequence, chained to
      the head's hash, stamped `at_us`, and its amount moved between the two
      accounts' cached balances;
    - `new_lot(source_id, wallet_id, campaign_id, credit_at_us)` and
      `credit_points(book, lot, points, payment_id)`: points just posted into
      available(w, c) go into a lot (repaying the wallet's debt first);
    - `drain(book)`: post what a wallet book decided between its campaign buckets;
    - `purchase(...)`, `refund(...)`: the money path's rows for one accepted payment;
    - `flush()`: queue everything and send it; once, before the unit of work ends.
    """

    def __init__(self, unit: UnitOfWork, at_us: int, books: dict[str, WalletBook], remember_keys: bool = True) -> None:
        self.at_us = at_us  # the instant every posting, payment and lot of this writer carries
        self.books = books  # wallet -> its lots and debt, kept current in acceptance order
        self.remember_keys = remember_keys  # payment rows carry their idempotency key (`UnitOfWork.writer`)
        self.flushed = False
        # Not the unit itself: it keeps its writers, and the cycle would keep a group's books
        # and rows alive until the cyclic collector walks them.
        self._unit = weakref.ref(unit)
        self._chain = unit._chain
        self._batch = bulk.WriteBatch(unit.session)
        self._redemption_legs: list[Row] = []
        self._payments: list[tuple[Any, ...]] = []  # PAYMENT_COLUMNS
        self.answers_json: dict[str, str] = {}  # payment id -> its answer as stored on its payment row
        self._awards: list[tuple[Any, ...]] = []  # posting_columns.AWARD_COLUMNS
        self._award_updates: list[Row] = []
        self._refunded_updates: dict[str, int] = {}
        self._postings: list[tuple[Any, ...]] = []  # posting_columns.POSTING_COLUMNS
        self._deltas: dict[str, int] = defaultdict(int)
        # Points a refund returned into a lot already past its end, expired by the refund itself
        # (`refund`): (wallet, lot, points), for their `points_expired` events.
        self.expired_on_return: list[tuple[str, Lot, int]] = []

    @property
    def pending(self) -> bool:
        """Whether this writer posted or recorded a payment that is not flushed yet."""
        return not self.flushed and bool(self._postings or self._payments)

    @property
    def campaigns(self) -> Mapping[str, Campaign]:
        unit = self._unit()
        assert unit is not None, "a PostingWriter posts inside its unit of work"
        return unit.catalog.campaigns

    def post(self, posting: rules.Posting) -> None:
        chain = self._chain
        chain.posting_sequence += 1
        sequence = chain.posting_sequence
        digest = chain.posting_hash = rules.chain_hash(chain.posting_hash, sequence, posting, self.at_us)
        self._postings.append((sequence, *posting.columns(), self.at_us, digest))
        self._deltas[posting.debit_account_id] -= posting.amount
        self._deltas[posting.credit_account_id] += posting.amount

    def drain(self, book: WalletBook) -> None:
        """Post what the wallet book decided (settlements between its campaign buckets)."""
        for posting in book.postings:
            self.post(posting)
        book.postings.clear()

    def new_lot(
        self,
        source_id: str,
        wallet_id: str,
        campaign_id: str,
        credit_at_us: int,
        validity_months: int | None = None,
        on_award: bool = False,
    ) -> Lot:
        """A new, empty lot of `source_id`'s points of `campaign_id`, credited at `credit_at_us`
        and expiring after `validity_months` (by default the current campaign version's:
        crediting passes the validity of the version that awarded the points, the one the
        purchase's answer promised); `credit_points` fills it. An award's lot (`on_award`, its
        source a payment) is stored on the award's row."""
        campaign = self.campaigns.get(campaign_id)
        validity = validity_months if validity_months is not None else campaign.validity_months if campaign else 6
        return Lot(
            lot_id(source_id, campaign_id),
            wallet_id,
            campaign_id,
            source_id,
            credit_at_us,
            crediting.expires_at_us(credit_at_us, validity),
            0,
            0,
            new=True,
            on_award=on_award,
        )

    def credit_points(self, book: WalletBook, lot: Lot, points: int, payment_id: str | None) -> None:
        """Points just posted into available(w, c): repay debt, then fill the lot."""
        lot.points += points if lot.new else 0
        book.inflow(lot, points, payment_id)
        self.drain(book)

    def award_credited(self, payment_id: str, campaign_id: str) -> None:
        """A crediting run moved the award's pending points to available (its lot set by
        `new_lot` and `credit_points`): no points of it are pending any more."""
        self._award_updates.append(dict(p_id=payment_id, c_id=campaign_id, pending=0, clawed=0))

    def _next_sequence(self) -> int:
        self._chain.payment_sequence += 1
        return self._chain.payment_sequence

    def purchase(self, pid: str, s: Submission, outcome: Outcome, state: RatingState) -> Row:
        """Post an accepted purchase `pid` as the kernel rated it; its answer."""
        body = s.body
        assert isinstance(body, Purchase), body
        campaigns = self.campaigns
        sequence = self._next_sequence()
        at = to_us(body.occurred_at)
        book = self.books[body.wallet_id]
        if body.coin:
            self.post(
                rules.Posting(
                    rules.COIN_SALE, rules.COIN_CLEARING, rules.payable_account(body.merchant_id), body.coin, pid
                )
            )
        for position, (lot, amount) in enumerate(book.consume(body.points_used) if body.points_used else []):
            self.post(
                rules.Posting(
                    rules.REDEMPTION,
                    rules.available_account(body.wallet_id, lot.campaign_id),
                    rules.payable_account(body.merchant_id),
                    amount,
                    pid,
                    lot.campaign_id,
                )
            )
            self._redemption_legs.append(
                dict(payment_id=pid, position=position, lot_id=lot.id, campaign_id=lot.campaign_id, points=amount)
            )
        awards = []
        for award in outcome.awards:
            campaign = campaigns[award.campaign_id]
            credit_at = crediting.credit_at_us(
                campaign.credit.schedule, campaign.credit.delay_business_days, at, self.at_us
            )
            immediate = campaign.credit.schedule == "immediate"
            target = (rules.available_account if immediate else rules.pending_account)(
                body.wallet_id, award.campaign_id
            )
            self.post(
                rules.Posting(
                    rules.AWARD,
                    rules.funding_account(award.campaign_id),
                    target,
                    award.points,
                    pid,
                    award.campaign_id,
                    award.campaign_version,
                )
            )
            if immediate:
                lot = self.new_lot(pid, body.wallet_id, award.campaign_id, credit_at, on_award=True)
                self.credit_points(book, lot, award.points, pid)
            self._awards.append(
                (
                    pid,
                    award.campaign_id,
                    award.campaign_version,
                    body.wallet_id,
                    award.points,
                    0 if immediate else award.points,
                    0,
                    award.capped_by,
                    state.purchases[pid].awards[award.campaign_id].window_key,
                    credit_at,
                )
            )
            awards.append(
                award_answer(award, immediate, credit_at, crediting.expires_at_us(credit_at, campaign.validity_months))
            )
        response = {
            "id": pid,
            "sequence": sequence,
            "type": "purchase",
            "wallet_id": body.wallet_id,
            "merchant_id": body.merchant_id,
            "terminal_id": body.terminal_id,
            "occurred_at": body.occurred_at.isoformat(),
            "accepted_at": format_instant(self.at_us),
            "amount": body.amount,
            "points_used": body.points_used,
            "points_awarded": outcome.points_awarded,
            "awards": awards,
        }
        self._payments.append(self._payment_row(pid, sequence, s, body.wallet_id, at, None, response))
        return response

    def is_plain(self, body: Purchase | Refund) -> bool:
        """Whether `body` is a plain purchase (no points spent, its wallet owes none): one that
        `plain_purchases` may post."""
        return body.type == "purchase" and not body.points_used and not self.books[body.wallet_id].debts

    def plain_purchases(self, run: list[tuple[str, Submission, Outcome]]) -> list[Row]:
        """Post accepted plain purchases (`is_plain`) in acceptance order as columns
        (`engine.posting_columns`); their answers."""
        if not run:
            return []
        chain = self._chain
        posted = posting_columns.plain_purchases(
            [(pid, s.body, outcome.awards) for pid, s, outcome in run],  # type: ignore[misc]  # is_plain: purchases
            self.campaigns,
            self.at_us,
            chain.payment_sequence,
            chain.posting_sequence,
            chain.posting_hash,
        )
        chain.posting_sequence, chain.posting_hash = posted.posting_sequence, posted.posting_hash
        self._postings += posted.postings
        self._awards += posted.awards
        for account, delta in posted.deltas.items():
            self._deltas[account] += delta
        books = self.books
        for row in posted.lots:
            lot = Lot(*row)
            lot.new = lot.on_award = True
            book = books[lot.wallet_id]
            book.lots[lot.id] = lot
            book.touch(lot)
        payments, payment_row = self._payments, self._payment_row
        for (pid, s, _), answer, at in zip(run, posted.answers, posted.occurred_at_us):
            # Numbered by the run, after the payment chain's head (`_next_sequence`, once a run).
            sequence = answer["sequence"]
            payments.append(payment_row(pid, sequence, s, answer["wallet_id"], at, None, answer))
        assert sequence == chain.payment_sequence + len(run), (sequence, chain.payment_sequence, len(run))
        chain.payment_sequence = sequence
        return posted.answers

    def refund(
        self,
        pid: str,
        s: Submission,
        outcome: Outcome,
        state: RatingState,
        original: Row,
        pending_before: dict[tuple[str, str], int],
    ) -> Row:
        """Post an accepted refund `pid` of `original` as the kernel rated it; its answer.
        `pending_before` (purchase, campaign) -> pending points is kept current across the group."""
        body = s.body
        assert isinstance(body, Refund), body
        sequence = self._next_sequence()
        oid = body.original_id
        wallet_id, merchant_id = original["wallet_id"], original["merchant_id"]
        book = self.books[wallet_id]
        purchase_state = state.purchases[oid]
        # Running totals, not the group's final state: two refunds of one purchase may share a group.
        refunded_at_start: int = original["refunded"]
        refunded_before = self._refunded_updates.get(oid, refunded_at_start)
        coin_refunded = body.amount - outcome.points_returned
        if coin_refunded:
            self.post(
                rules.Posting(
                    rules.COIN_REFUND, rules.payable_account(merchant_id), rules.COIN_CLEARING, coin_refunded, pid
                )
            )
        if outcome.points_returned:
            used = original["points_used"]
            returned_before = share_target(used, refunded_before, original["amount"])
            # Returned points go back to the lots they were taken from, with their expiry; those
            # returned into a lot already past its end expire once all are back.
            past_end: list[tuple[Lot, int]] = []
            for returned_lot_id, amount in rules.split_in_order(
                original["redemption_legs"], returned_before, outcome.points_returned
            ):
                lot = book.lots[returned_lot_id]
                self.post(
                    rules.Posting(
                        rules.POINTS_RETURN,
                        rules.payable_account(merchant_id),
                        rules.available_account(wallet_id, lot.campaign_id),
                        amount,
                        pid,
                        lot.campaign_id,
                    )
                )
                if lot.expires_at_us <= self.at_us:
                    past_end.append((lot, amount))
                else:
                    self.credit_points(book, lot, amount, pid)
            for lot, amount in past_end:
                self._expire_returned(book, lot, amount, state)
        for clawback in outcome.clawbacks:
            cid = clawback.campaign_id
            award_state = purchase_state.awards[cid]
            # Pending points are cancelled first (as the kernel decided), then available ones.
            from_pending = min(clawback.points, pending_before[(oid, cid)])
            pending_before[(oid, cid)] -= from_pending
            from_available = clawback.points - from_pending
            version = award_state.campaign_version
            if from_pending:
                self.post(
                    rules.Posting(
                        rules.CLAWBACK,
                        rules.pending_account(wallet_id, cid),
                        rules.funding_account(cid),
                        from_pending,
                        pid,
                        cid,
                        version,
                    )
                )
            if from_available:
                book.claw_available(cid, from_available, lot_id(oid, cid), pid)
                self.drain(book)
                self.post(
                    rules.Posting(
                        rules.CLAWBACK,
                        rules.available_account(wallet_id, cid),
                        rules.funding_account(cid),
                        from_available,
                        pid,
                        cid,
                        version,
                    )
                )
            self._award_updates.append(
                dict(p_id=oid, c_id=cid, pending=pending_before[(oid, cid)], clawed=clawback.points)
            )
        self._refunded_updates[oid] = refunded_before + body.amount
        response = {
            "id": pid,
            "sequence": sequence,
            "type": "refund",
            "original_id": oid,
            "wallet_id": wallet_id,
            "merchant_id": merchant_id,
            "terminal_id": s.terminal_id,
            "occurred_at": body.occurred_at.isoformat(),
            "accepted_at": format_instant(self.at_us),
            "amount": body.amount,
            "points_used": 0,
            "points_awarded": 0,
            "awards": [],
            "clawbacks": [{"campaign_id": c.campaign_id, "points": c.points} for c in outcome.clawbacks],
            "points_clawed_back": outcome.points_clawed_back,
            "points_returned": outcome.points_returned,
            "coin_refunded": coin_refunded,
        }
        self._payments.append(self._payment_row(pid, sequence, s, wallet_id, to_us(body.occurred_at), oid, response))
        return response

    def _payment_row(
        self, pid: str, sequence: int, s: Submission, wallet_id: str, at: int, original_id: str | None, response: Row
    ) -> tuple[Any, ...]:
        """The payment row (`PAYMENT_COLUMNS`) of `pid`, answered `response`, chained to the
        payment chain's head."""
        body, receipt, chain = s.body, s.receipt, self._chain
        self.answers_json[pid] = answer_text = orjson.dumps(response).decode()
        hashed = (  # rules.PAYMENT_HASHED_FIELDS
            sequence,
            pid,
            body.type,
            s.terminal_id,
            s.merchant_id,
            wallet_id,
            at,
            self.at_us,
            body.amount,
            getattr(body, "points_used", 0),
            original_id,
            s.request_json,
            answer_text,
        )
        chain.payment_hash = digest = rules.payment_hash_of(chain.payment_hash, hashed)
        remember = self.remember_keys
        return hashed + (
            0,
            getattr(body, "items", None) is not None,
            None if receipt is None else receipt.app_id,
            None if receipt is None else receipt.jti,
            s.idempotency_key if remember else None,
            s.request_hash if remember else None,
            digest,
        )

    def _expire_returned(self, book: WalletBook, lot: Lot, points: int, state: RatingState) -> None:
        """`points` a refund just returned into `lot`, already past its end: returned with that
        expiry (SPEC §4) and expired at once, after its other returns (a wallet's history shows
        one return, then the expiry) and before its clawbacks; they repay no debt
        and no clawback takes them (points past their expiry are not available). A clawback took
        them first (helper-92), and they repaid a wallet's earlier debt (helper-96): either way a
        wallet owed less for points that were leaving. The kernel, which rated the round before
        this, counted them in the wallet's balance; it is lowered by as much (the wallet's later
        spends and refunds of the round wait for the next: `_after_due_returns`)."""
        self.post(expiry_posting(book.wallet_id, lot, points))
        lot.expired += points
        book.touch(lot)
        self.expired_on_return.append((book.wallet_id, lot, points))
        if state.balance is not None and book.wallet_id in state.balance:
            state.balance[book.wallet_id] -= points

    def as_originals(self, refunded: Mapping[str, Row], wanted: AbstractSet[str]) -> dict[str, Row]:
        """Of the purchases this writer posted and the originals (`refunded`, as read before) it
        refunded, those in `wanted`, as `Ledger._queue_originals` reads them once this writer's
        rows are stored. Only reads what the writer holds: callable after `flush`."""
        out: dict[str, Row] = {}
        if not wanted:
            return out
        for row in self._payments:
            pid, kind, merchant_id, wallet_id, amount, points_used = _payment_values(row)
            if kind == "purchase" and pid in wanted:
                receipt_app_id, receipt_jti = _payment_receipt(row)
                out[pid] = dict(
                    merchant_id=merchant_id,
                    wallet_id=wallet_id,
                    amount=amount,
                    points_used=points_used,
                    refunded=0,
                    receipt_app_id=receipt_app_id,
                    receipt_jti=receipt_jti,
                    awards={},
                    redemption_legs=[],
                )
        for pid, cid, version, _, points, pending, _, _, window, _ in self._awards:
            if pid in out:
                out[pid]["awards"][cid] = AwardState(cid, version, points, pending, window)
        for leg in sorted(self._redemption_legs, key=lambda leg: (leg["payment_id"], leg["position"])):
            if leg["payment_id"] in out:
                out[leg["payment_id"]]["redemption_legs"].append((leg["lot_id"], leg["points"]))
        for oid, amount in self._refunded_updates.items():
            if oid not in wanted:
                continue
            before = refunded[oid]
            awards = {
                cid: AwardState(cid, a.campaign_version, a.points, a.pending, a.window_key)
                for cid, a in before["awards"].items()
            }
            out[oid] = {**before, "refunded": amount, "awards": awards}
        for u in self._award_updates:  # in order: the last one of an award is its final state
            if u["p_id"] not in out:
                continue
            awards = out[u["p_id"]]["awards"]
            awards[u["c_id"]] = dataclasses.replace(awards[u["c_id"]], pending=u["pending"])
        return out

    def flush(
        self,
        state: RatingState | None = None,
        usage_before: Mapping[tuple[str, str, int], int] | None = None,
        spend_before: Mapping[str, int] | None = None,
        send: bool = True,
    ) -> bulk.WriteBatch:
        """Queue everything this writer decided and send it; once. With `send=False` the
        batch is returned unsent, for the caller to queue more into and send.

        `state`, with the usage and budget meters as they were before rating, is given
        when a group was rated (`Ledger.submit`): the changed meters are written too."""
        assert not self.flushed, "a PostingWriter flushes once"
        self.flushed = True
        if state is not None:
            assert state.balance is not None and usage_before is not None and spend_before is not None
            # The kernel decided redemptions on net balances; the wallet books posted here must agree.
            for wallet_id, book in self.books.items():
                assert book.spendable() == state.balance[wallet_id], (
                    wallet_id,
                    book.spendable(),
                    state.balance[wallet_id],
                )
        batch = self._batch
        award_lots, award_lots_changed = save_books(batch, self.books)
        batch.insert(RedemptionLegRow.__table__, self._redemption_legs)
        batch.insert_tuples(PaymentRow.__table__, PAYMENT_COLUMNS, self._payments)
        # The awards written here carry their lots as the books hold them now (spent or clawed
        # back since, in this group, as the case may be).
        awards = [a + lot_values(award_lots.pop((a[0], a[1]), None)) for a in self._awards]
        batch.insert_tuples(AwardRow.__table__, AWARD_LOT_COLUMNS, awards)
        # Every award row this unit changes is updated once, whatever changed on it: a lot set
        # (credited by a crediting run), spent, clawed back or expired; pending and clawed-back
        # points (a refund's clawback, a crediting run).
        changes: dict[tuple[str, str], Row] = {
            key: dict(zip(LOT_ON_AWARD, lot_values(lot))) for key, lot in award_lots.items()
        }
        for key, values in award_lots_changed.items():
            changes.setdefault(key, {}).update(values)
        for u in self._award_updates:  # in order: two refunds of one purchase sum their clawbacks
            change = changes.setdefault((u["p_id"], u["c_id"]), {})
            change["pending"] = u["pending"]
            if u["clawed"]:
                change["clawed_back"] = change.get("clawed_back", 0) + u["clawed"]
        batch.update(
            AwardRow.__table__,
            ["payment_id", "campaign_id"],
            [{"payment_id": pid, "campaign_id": cid, **values} for (pid, cid), values in changes.items()],
            add=("clawed_back",),
        )
        batch.update(
            PaymentRow.__table__, ["id"], [dict(id=oid, refunded_amount=r) for oid, r in self._refunded_updates.items()]
        )
        batch.insert_tuples(PostingRow.__table__, posting_columns.POSTING_COLUMNS, self._postings)
        moved = sorted((a, d) for a, d in self._deltas.items() if d)
        if moved:
            ids, balances = zip(*moved)
            parts = zip(*map(rules.account_part_values, ids))  # kind, wallet, campaign, merchant columns
            batch.upsert_columns(
                AccountRow.__table__,
                ["id", *rules.ACCOUNT_PART_COLUMNS, "balance"],
                [ids, *parts, balances],
                key=["id"],
                add="balance",
            )
        if state is not None:
            assert usage_before is not None and spend_before is not None
            # Changed ones only, before sorting: most of a group's keys earned nothing.
            before = usage_before.get
            changed = [(key, v) for key, v in state.usage.items() if v != before(key, 0)]
            changed.sort()
            if changed:
                keys, points = zip(*changed)
                batch.upsert_columns(
                    WalletWindowUsageRow.__table__,
                    ["campaign_id", "wallet_id", "window_key", "points"],
                    [*zip(*keys), points],
                    key=["campaign_id", "wallet_id", "window_key"],
                    replace="points",
                )
            batch.update(
                CampaignRow.__table__,
                ["id"],
                [dict(id=cid, issued_net=v) for cid, v in state.spend.items() if v != spend_before.get(cid)],
            )
        if send:
            batch.send()
        return batch
