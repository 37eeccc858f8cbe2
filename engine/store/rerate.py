"""Full re-rate for reconciliation, and the history rater it shares with simulation.

Every stored purchase and refund is rated again, in acceptance order, under
the campaign versions and merchant records that were in force when it was
accepted (a version is in force from its `created_at_us`), with the grants
made before it counted against the budgets, and the result is compared with
the ledger: each award (points, capped_by, campaign version), each refund's
clawbacks and returned points (from the postings), and each award's
clawed-back total. A campaign version changed after the fact, a merchant
version changed after the fact, an altered stored request or an altered
award all show up as mismatches naming the payment.

The history is loaded as columns (binary COPY on PostgreSQL), segmented into
catalog eras (the stretches of acceptance order between two configuration
changes), and each era is rated with one kernel call on columns built by the
vectorized encoder; the state (wallet-window usage, budget spend, awards and
refunded amounts of earlier purchases) carries from one era to the next in
arrays. Stored requests are parsed only where they list items; every other
request is compared with its payment row by the database's own JSON
functions (PostgreSQL) and parsed in Python only where it differs, or
wherever the database cannot say (SQLite, or a request that is not JSON).
Balance checks are left out: redemptions were decided against balances that
crediting and expiry runs also moved, and an accepted purchase is what it is.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from engine.model import Campaign, Merchant, StoredTransaction, campaign_order
from engine.rating import ENGINES, build_catalog, rate_columns
from engine.rating import _kernel_py as k
from engine.rating.columns import CAPPED_BY, STATUS_CODES, Catalog, campaigns_met, purchase_windows
from engine.rating.vectorized import Batch, Opening, assemble, slot_keys
from engine.store.db import psycopg_connection
from engine.timeutil import to_us

# Stored requests as they were accepted, those of older builds included (`StoredPurchase`).
_transaction = TypeAdapter(StoredTransaction)
I64 = np.int64
MISMATCH_ROWS_MAX = 100
CAPPED_CODE = {name: code for code, name in CAPPED_BY.items()}

# Query parameters by name.
Params = Mapping[str, Any]
# A purchase's items as rated: (amount, tags) each.
Items = list[tuple[int, tuple[str, ...]]]
# What was in force at an instant: (campaigns, merchants).
InForce = Callable[[int], tuple[list[Campaign], list[Merchant]]]
# An era's catalog and what it was built from: (catalog, campaigns in force, merchants in force).
EraCatalog = tuple[Catalog, list[Campaign], list[Merchant]]
# Told the number of payments rated after each era.
Progress = Callable[[int], object]
_Record = TypeVar("_Record")


# -- loading ------------------------------------------------------------------


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _int_columns(conn: Connection, sql: str, names: list[str], params: Params | None = None) -> dict[str, np.ndarray]:
    """Integer columns of a query as numpy arrays (every value non-null and castable to bigint)."""
    if _is_pg(conn):
        # Binary COPY of bigint-only rows has a fixed layout, so numpy reads it in place.
        raw = psycopg_connection(conn)
        buffer = bytearray()
        with raw.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy:
            for chunk in copy:
                buffer += chunk
        header = 11 + 4 + 4 + struct.unpack_from(">I", buffer, 15)[0]
        dtype = np.dtype([("n", ">i2")] + [f for name in names for f in ((f"l_{name}", ">i4"), (name, ">i8"))])
        body = memoryview(buffer)[header : len(buffer) - 2]
        rows = np.frombuffer(body, dtype=dtype)
        # Every field must be a non-null bigint (CAST(... AS BIGINT) in the query), or the layout is off.
        assert all((rows[f"l_{name}"] == 8).all() for name in names), "a column is null or not bigint"
        return {name: rows[name].astype(I64) for name in names}
    fetched = conn.execute(text(sql), params or {}).fetchall()
    return {name: np.array([r[i] for r in fetched], I64) for i, name in enumerate(names)}


def _text_column(conn: Connection, sql: str, params: Params | None = None) -> list[str]:
    """Text columns of a query, in order: one line per row, columns joined by tabs."""
    if _is_pg(conn):
        raw = psycopg_connection(conn)
        buffer = bytearray()
        with raw.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
            for chunk in copy:
                buffer += chunk
        # Identifiers never hold tabs, newlines or backslashes (engine.model.Id), so no unescaping.
        return bytes(buffer).decode().split("\n")[:-1]
    return ["\t".join(r) for r in conn.execute(text(sql), params or {})]


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), I64, len(values))
    return codes, list(index)


@dataclasses.dataclass
class History:
    """Payments in acceptance order as arrays; strings coded (`merchant_names`, `wallet_names`)."""

    sequence: np.ndarray
    kind: np.ndarray
    occurred_at_us: np.ndarray
    accepted_at_us: np.ndarray
    amount: np.ndarray
    points_used: np.ndarray
    original: np.ndarray  # refunds: position of the original in this history, -1 none
    original_sequence: np.ndarray  # refunds: sequence of the original (wherever it is), -1 none
    has_items: np.ndarray  # 1, 0, or -1 (not known)
    merchant: np.ndarray
    wallet: np.ndarray
    merchant_names: list[str]
    wallet_names: list[str]
    items: dict[int, Items] = dataclasses.field(default_factory=dict)  # position -> [(amount, tags)]

    def __len__(self) -> int:
        return len(self.sequence)

    def select(self, keep: np.ndarray) -> History:
        """The payments where `keep` holds; refunds whose original is dropped lose it (-1)."""
        positions = np.flatnonzero(keep)
        new_position = np.full(len(self) + 1, -1, I64)
        new_position[positions] = np.arange(len(positions))
        original = np.where(self.original >= 0, new_position[self.original], -1)[positions]
        fields = {
            f.name: getattr(self, f.name)[positions]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        fields["original"] = original
        items = {int(new_position[p]): v for p, v in self.items.items() if new_position[p] >= 0}
        return History(**fields, merchant_names=self.merchant_names, wallet_names=self.wallet_names, items=items)


def load_history(conn: Connection, where: str = "", params: Params | None = None) -> History:
    """Payments (all, or those matching a SQL condition on `payment`) in acceptance order."""
    condition = f" WHERE {where}" if where else ""
    ints = _int_columns(
        conn,
        (
            "SELECT sequence, CAST(CASE WHEN type = 'refund' THEN 1 ELSE 0 END AS BIGINT), occurred_at_us, "
            "accepted_at_us, amount, points_used, "
            "CAST(CASE WHEN has_items IS NULL THEN -1 WHEN has_items THEN 1 ELSE 0 END AS BIGINT) "
            f"FROM payment{condition} ORDER BY sequence"
        ),
        ["sequence", "kind", "occurred_at_us", "accepted_at_us", "amount", "points_used", "has_items"],
        params,
    )
    # Both identifiers in one pass: `wallet<TAB>merchant` lines, split into one flat list.
    lines = _text_column(conn, f"SELECT wallet_id, merchant_id FROM payment{condition} ORDER BY sequence", params)
    flat = "\t".join(lines).split("\t") if lines else []
    wallet, wallet_names = _codes(flat[0::2])
    merchant, merchant_names = _codes(flat[1::2])
    pairs = _int_columns(
        conn,
        (
            f"SELECT p.sequence, o.sequence FROM (SELECT sequence, original_id FROM payment{condition}) p "
            "JOIN payment o ON o.id = p.original_id WHERE p.original_id IS NOT NULL"
        ),
        ["refund", "original"],
        params,
    )
    sequence = ints["sequence"]
    original = np.full(len(sequence), -1, I64)
    at = np.searchsorted(sequence, pairs["refund"])
    found = np.searchsorted(sequence, pairs["original"])
    found_ok = (
        (found < len(sequence)) & (sequence[np.minimum(found, len(sequence) - 1)] == pairs["original"])
        if len(sequence)
        else np.zeros(0, bool)
    )
    original[at[found_ok]] = found[found_ok]
    original_sequence = np.full(len(sequence), -1, I64)
    original_sequence[at] = pairs["original"]
    return History(
        sequence=sequence,
        kind=ints["kind"].astype(np.int8),
        occurred_at_us=ints["occurred_at_us"],
        accepted_at_us=ints["accepted_at_us"],
        amount=ints["amount"],
        points_used=ints["points_used"],
        original=original,
        original_sequence=original_sequence,
        has_items=ints["has_items"],
        merchant=merchant,
        wallet=wallet,
        merchant_names=merchant_names,
        wallet_names=wallet_names,
    )


def extend(old: History, new: History) -> History:
    """`old` followed by `new` (payments accepted after it), with one code space for ids."""
    if not len(old):
        return new
    names = {"merchant": list(old.merchant_names), "wallet": list(old.wallet_names)}
    codes: dict[str, np.ndarray] = {}
    for field in ("merchant", "wallet"):
        index = {name: i for i, name in enumerate(names[field])}
        remap = np.array([index.setdefault(name, len(index)) for name in getattr(new, f"{field}_names")], I64)
        names[field] = list(index)
        codes[field] = np.concatenate(
            [getattr(old, field), remap[getattr(new, field)] if remap.size else getattr(new, field)]
        )
    fields = {
        f.name: np.concatenate([getattr(old, f.name), getattr(new, f.name)])
        for f in dataclasses.fields(old)
        if isinstance(getattr(old, f.name), np.ndarray)
    }
    fields.update(codes)
    sequence = fields["sequence"]
    original = np.full(len(sequence), -1, I64)
    refunds = np.flatnonzero(fields["original_sequence"] >= 0)
    found = np.searchsorted(sequence, fields["original_sequence"][refunds])
    ok = (found < len(sequence)) & (
        sequence[np.minimum(found, len(sequence) - 1)] == fields["original_sequence"][refunds]
    )
    original[refunds[ok]] = found[ok]
    fields["original"] = original
    items = dict(old.items)
    items.update({position + len(old): value for position, value in new.items.items()})
    return History(**fields, merchant_names=names["merchant"], wallet_names=names["wallet"], items=items)


def payment_ids(conn: Connection, sequences: Iterable[int]) -> dict[int, str]:
    ordered = sorted({int(s) for s in sequences})
    out: dict[int, str] = {}
    for start in range(0, len(ordered), 1000):
        chunk = ordered[start : start + 1000]
        marks = ", ".join(str(s) for s in chunk)  # integers only: nothing to quote
        for seq, pid in conn.execute(text(f"SELECT sequence, id FROM payment WHERE sequence IN ({marks})")):
            out[int(seq)] = pid
    return out


# -- configuration in force -----------------------------------------------------


@dataclasses.dataclass
class Versions:
    """Campaign and merchant versions and grants: what was in force at each instant."""

    campaigns: dict[str, list[tuple[int, Campaign]]]
    merchants: dict[str, list[tuple[int, Merchant]]]
    grants: list[tuple[int, str, int]]  # (granted_at_us, campaign_id, points), in time order

    def changes(self) -> np.ndarray:
        instants = {at for v in self.campaigns.values() for at, _ in v}
        instants |= {at for v in self.merchants.values() for at, _ in v}
        instants |= {at for at, _, _ in self.grants}
        return np.array(sorted(instants), I64)

    @staticmethod
    def _at(versions: list[tuple[int, _Record]], instant: int) -> _Record | None:
        current = None
        for at, record in versions:
            if at <= instant:
                current = record
        return current

    def in_force(self, instant: int) -> tuple[list[Campaign], list[Merchant]]:
        campaigns = [c for v in self.campaigns.values() if (c := self._at(v, instant)) is not None]
        merchants = [m for v in self.merchants.values() if (m := self._at(v, instant)) is not None]
        return campaigns, sorted(merchants, key=lambda m: m.id)


def load_versions(conn: Connection) -> Versions:
    campaigns: dict[str, list[tuple[int, Campaign]]] = {}
    for cid, at, record in conn.execute(
        text("SELECT campaign_id, created_at_us, record_json FROM campaign_version ORDER BY campaign_id, version")
    ):
        campaigns.setdefault(cid, []).append((int(at), Campaign.model_validate_json(record)))
    merchants: dict[str, list[tuple[int, Merchant]]] = {}
    for mid, at, record in conn.execute(
        text("SELECT merchant_id, created_at_us, record_json FROM merchant_version ORDER BY merchant_id, version")
    ):
        merchants.setdefault(mid, []).append((int(at), Merchant.from_stored(record)))
    grants = [
        (int(at), cid, int(points))
        for at, cid, points in conn.execute(
            text("SELECT granted_at_us, campaign_id, points FROM point_grant ORDER BY granted_at_us")
        )
    ]
    return Versions(campaigns, merchants, grants)


# -- items ----------------------------------------------------------------------


def load_items(conn: Connection, history: History) -> None:
    """Items of the payments whose stored request lists them (or may: `has_items` unknown)."""
    wanted = history.sequence[(history.has_items != 0) & (history.kind == k.KIND_PURCHASE)]
    if not wanted.size:
        return
    position = {int(s): i for i, s in zip(np.searchsorted(history.sequence, wanted), wanted.tolist())}
    if _is_pg(conn):
        rows = conn.execute(
            text("SELECT sequence, request_json FROM payment WHERE sequence = ANY(:s)"), {"s": wanted.tolist()}
        )
    else:
        lo, hi = int(wanted.min()), int(wanted.max())
        rows = conn.execute(
            text(
                "SELECT sequence, request_json FROM payment WHERE sequence BETWEEN :lo AND :hi AND has_items IS NOT 0"
            ),
            {"lo": lo, "hi": hi},
        )
    for seq, request in rows:
        if int(seq) not in position:
            continue
        try:
            items = json.loads(request).get("items")
        except (ValueError, AttributeError):
            continue  # reported by the request check
        if items:
            history.items[position[int(seq)]] = [(int(i["amount"]), tuple(i.get("tags") or ())) for i in items]


# -- rating a history -------------------------------------------------------------


@dataclasses.dataclass
class Rated:
    """What rating a history gave: per payment status, per purchase row and campaign the award."""

    campaign_ids: list[str]  # global campaign columns
    status: np.ndarray  # [N]
    row: np.ndarray  # [N] purchase row of a purchase, -1 for refunds
    award: np.ndarray  # [P, G]
    capped: np.ndarray  # [P, G] CAPPED_* code
    version: np.ndarray  # [P, G] campaign version that awarded
    clawback: np.ndarray  # [N, G] (refunds)
    returned: np.ndarray  # [N]
    spend: np.ndarray  # [G]
    eras: int  # eras of configuration rated (each in one or more rating units)
    era: np.ndarray  # [N] index into `catalogs` of the rating unit (in its era) each payment was rated in
    catalogs: dict[int, EraCatalog]  # rating unit -> (Catalog, campaigns in force, merchants in force)
    timings_s: dict[str, float]  # "encode" (catalogs, slots, columns, folding back) and "rate" (the kernel calls)


RATING_UNIT_US = 86_400_000_000  # the most acceptance time `rate_history` rates against one catalog


def _segments(history: History, changes: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, era) runs of acceptance order that share one configuration."""
    if not len(history):
        return []
    era = np.searchsorted(changes, history.accepted_at_us, side="right") - 1
    cuts = np.flatnonzero(np.diff(era)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(history)]])
    return [(int(a), int(b), int(era[a])) for a, b in zip(starts, ends)]


def rate_history(
    history: History,
    versions: Versions,
    override: InForce | None = None,
    engine: str | None = None,
    progress: Progress | None = None,
    grants: bool = True,
) -> Rated:
    """Rate `history` era by era from zero state.

    `override(instant) -> (campaigns, merchants)` replaces what was in force
    (the simulation swaps in a draft); grants made before a payment count
    against the budgets unless `grants` is False.
    """
    started = time.perf_counter()
    kernel_s = 0.0
    changes = versions.changes()
    in_force = override or versions.in_force
    # Rated in units of one era of configuration and at most a day (Asia/Tokyo or not, a
    # calendar day of microseconds) of acceptance, each against the campaigns in force whose
    # window holds an instant between the unit's first and last purchase's `occurred_at` (as
    # `CatalogSnapshot.rating_for` does a group): no other can award any of them, and the rest
    # are absent columns, never active, below. A unit's purchases so span at most a day and
    # `occurred_at`'s bounds, within which `Config` keeps the campaigns' item tags to 64
    # (`Config._check_tags_together`), and campaigns long ended cost it nothing.
    segments: list[tuple[int, int, int]] = []  # (start, end, unit) runs of acceptance order
    unit_era: list[int] = []
    units: dict[tuple[int, tuple[str, ...]], int] = {}
    catalogs: dict[int, EraCatalog] = {}
    eras: dict[int, tuple[list[Campaign], list[Merchant], list[tuple[str, int, int]]]] = {}  # + their windows
    days = history.accepted_at_us // RATING_UNIT_US
    for a, b, era in _segments(history, changes):
        if era not in eras:
            campaigns, merchants = in_force(int(changes[era]) if era >= 0 else -(1 << 62))
            eras[era] = (campaigns, merchants, [(c.id, to_us(c.starts_at), to_us(c.ends_at)) for c in campaigns])
        campaigns, merchants, campaign_windows = eras[era]
        cuts = (a + np.flatnonzero(np.diff(days[a:b])) + 1).tolist()
        for ca, cb in zip([a, *cuts], [*cuts, b]):
            at = history.occurred_at_us[ca:cb][history.kind[ca:cb] == k.KIND_PURCHASE]
            first, last = (int(at.min()), int(at.max())) if at.size else (1, 0)  # no purchase: no campaign
            met = campaigns_met(campaign_windows, first, last)
            unit = units.get((era, met))
            if unit is None:
                unit = units[(era, met)] = len(unit_era)
                unit_era.append(era)
                rated = [c for c in campaigns if c.id in met]
                catalogs[unit] = (build_catalog(merchants, rated), campaigns, merchants)
            if segments and segments[-1][2] == unit and segments[-1][1] == ca:
                segments[-1] = (segments[-1][0], cb, unit)
            else:
                segments.append((ca, cb, unit))
    campaign_ids = sorted({c.id for cat, *_ in catalogs.values() for c in cat.campaigns} | set(versions.campaigns))
    G = len(campaign_ids)
    gindex = {cid: g for g, cid in enumerate(campaign_ids)}
    N = len(history)
    is_purchase = history.kind == k.KIND_PURCHASE
    row_of = np.cumsum(is_purchase) - 1
    P = int(is_purchase.sum())
    purchase_position = np.flatnonzero(is_purchase)
    W = max(len(history.wallet_names), 1)

    # Column order of each unit: its campaigns in evaluation order, then the absent ones (never active).
    perms: dict[int, np.ndarray] = {}
    for unit, (cat, *_) in catalogs.items():
        present = [gindex[c.id] for c in cat.campaigns]
        absent = sorted(set(range(G)) - set(present))
        perms[unit] = np.array(present + absent, I64)

    # Item masks over one global tag vocabulary, remapped to each era's catalog bits.
    item_start = np.zeros(N + 1, np.int64)
    counts = np.zeros(N, np.int64)
    for pos, items in history.items.items():
        counts[pos] = len(items)
    np.cumsum(counts, out=item_start[1:])
    item_amount = np.zeros(int(item_start[-1]), I64)
    item_tags: list[tuple[str, ...]] = [()] * int(item_start[-1])
    for pos, items in history.items.items():
        for j, (amount, tags) in enumerate(items):
            item_amount[item_start[pos] + j] = amount
            item_tags[item_start[pos] + j] = tags

    # Slots: every (purchase, campaign in force) is keyed by its global campaign, wallet and window.
    keys = np.full((P, G), -1, I64)
    for a, b, unit in segments:
        cat = catalogs[unit][0]
        p = np.flatnonzero(is_purchase[a:b]) + a
        if not p.size or not cat.campaigns:
            continue
        windows = purchase_windows(cat, history.occurred_at_us[p])
        for ci, c in enumerate(cat.campaigns):
            keys[row_of[p], gindex[c.id]] = slot_keys(np.full(p.size, gindex[c.id]), history.wallet[p], windows[:, ci])
    valid = keys >= 0
    unique, inverse = np.unique(keys[valid], return_inverse=True)
    slot_g = np.full((P, G), -1, np.int32)
    slot_g[valid] = inverse
    usage = np.zeros(unique.size, I64)

    award = np.zeros((P, G), I64)
    capped = np.zeros((P, G), np.int8)
    version = np.zeros((P, G), np.int32)
    refunded = np.zeros(P, I64)
    accepted = np.zeros(P, np.int8)
    status = np.zeros(N, np.int8)
    clawback = np.zeros((N, G), I64)
    returned = np.zeros(N, I64)
    spend = np.zeros(G, I64)
    grant_list = versions.grants if grants else []
    granted = 0

    for a, b, unit in segments:
        cat = catalogs[unit][0]
        perm = perms[unit]
        era = unit_era[unit]
        instant = int(changes[era]) if era >= 0 else -(1 << 62)
        while granted < len(grant_list) and grant_list[granted][0] <= instant:
            _, cid, points = grant_list[granted]
            if cid in gindex:
                spend[gindex[cid]] += points
            granted += 1
        seg = slice(a, b)
        kind = history.kind[seg]
        purchase = kind == k.KIND_PURCHASE
        new_rows = row_of[a:b][purchase]
        first_new = int(new_rows[0]) if new_rows.size else P
        original = history.original[seg]
        refund_rows = np.where((~purchase) & (original >= 0), row_of[np.maximum(original, 0)], -1)
        prior = np.unique(refund_rows[(refund_rows >= 0) & (refund_rows < first_new)])
        R0 = prior.size
        local = np.where(refund_rows >= first_new, R0 + refund_rows - first_new, -1)
        local[(refund_rows >= 0) & (refund_rows < first_new)] = np.searchsorted(
            prior, refund_rows[(refund_rows >= 0) & (refund_rows < first_new)]
        )
        rows = np.concatenate([prior, new_rows])
        merchant_map = np.array([cat.merchant_index.get(m, -1) for m in history.merchant_names], np.int32)
        opening = Opening(
            r_wallet=history.wallet[purchase_position[prior]],
            r_amount=history.amount[purchase_position[prior]],
            r_points_used=history.points_used[purchase_position[prior]],
            r_refunded=refunded[prior],
            r_award=award[prior][:, perm].ravel(),
            r_pending=np.zeros(R0 * G, I64),
            r_window=np.zeros(R0 * G, I64),
            usage_campaign=np.zeros(0, I64),
            usage_wallet=np.zeros(0, I64),
            usage_window=np.zeros(0, I64),
            usage_points=np.zeros(0, I64),
            spend=spend[perm],
        )
        lo, hi = int(item_start[a]), int(item_start[b])
        masks = _masks(cat, item_tags[lo:hi])
        batch = Batch(
            kind=kind,
            merchant=merchant_map[history.merchant[seg]],
            wallet=history.wallet[seg],
            occurred_at_us=history.occurred_at_us[seg],
            amount=history.amount[seg],
            points_used=np.where(purchase, history.points_used[seg], 0),
            original_row=local,
            item_start=item_start[a : b + 1] - lo,
            item_amount=item_amount[lo:hi],
            item_mask=masks,
        )
        cols = assemble(cat, batch, opening, G, slot_g[rows][:, perm].ravel(), usage, wallets=W)
        cols.r_valid[:R0] = accepted[prior]
        mark = time.perf_counter()
        rate_columns(cols, engine)
        kernel_s += time.perf_counter() - mark

        # Fold the era's results back into the global arrays.
        C = len(cat.campaigns)
        r_award = cols.r_award.reshape(len(rows), G)
        award[np.ix_(rows, perm)] = r_award
        refunded[rows] = cols.r_refunded
        accepted[rows] = cols.r_valid
        spend[perm] = cols.spend
        status[seg] = cols.out_status
        out_capped = cols.out_capped.reshape(b - a, G)[purchase]
        capped[np.ix_(new_rows, perm)] = out_capped
        version[np.ix_(new_rows, perm[:C])] = np.array([c.version for c in cat.campaigns], np.int32)
        clawback[a:b][:, perm] = cols.out_clawback.reshape(b - a, G)
        returned[seg] = cols.out_returned
        if progress:
            progress(b - a)
    version[award == 0] = 0
    era_of = np.zeros(N, I64)  # each transaction's rating unit (its era's configuration)
    for a, b, unit in segments:
        era_of[a:b] = unit
    return Rated(
        campaign_ids,
        status,
        np.where(is_purchase, row_of, -1),
        award,
        capped,
        version,
        clawback,
        returned,
        spend,
        len(eras),
        era_of,
        catalogs,
        {"encode": time.perf_counter() - started - kernel_s, "rate": kernel_s},
    )


def _masks(catalog: Catalog, tags: list[tuple[str, ...]]) -> np.ndarray:
    bits = catalog.tag_bits
    if not bits or not tags:
        return np.zeros(len(tags), np.uint64)
    cache: dict[tuple[str, ...], int] = {}
    return np.fromiter(
        (
            cache.setdefault(t, sum(1 << bits[x] for x in set(t) if x in bits)) if t not in cache else cache[t]
            for t in tags
        ),
        np.uint64,
        len(tags),
    )


# -- stored requests against payment rows -------------------------------------------


# One JSON parse per request (json_to_record), not one per field: PostgreSQL re-parses `json`
# text at every ->> operator.
_PG_SUSPECTS = """
SELECT p.sequence FROM payment p, json_to_record(p.request_json::json) AS r(
    type text, amount numeric, points_used numeric, wallet_id text, merchant_id text, terminal_id text,
    occurred_at timestamptz, original_id text, items json)
WHERE r.type IS DISTINCT FROM p.type
   OR r.amount IS DISTINCT FROM p.amount
   OR r.occurred_at IS DISTINCT FROM timestamptz 'epoch' + p.occurred_at_us * interval '1 microsecond'
   OR (p.type = 'purchase' AND (
          coalesce(r.points_used, 0) IS DISTINCT FROM p.points_used
       OR r.wallet_id IS DISTINCT FROM p.wallet_id
       OR r.merchant_id IS DISTINCT FROM p.merchant_id
       OR r.terminal_id IS DISTINCT FROM p.terminal_id
       OR (p.has_items IS NOT NULL AND (coalesce(json_typeof(r.items), 'null') <> 'null') <> p.has_items)))
   OR (p.type = 'refund' AND r.original_id IS DISTINCT FROM p.original_id)
"""


def request_suspects(engine: Engine) -> list[int] | None:
    """Sequences whose stored request may differ from the row (PostgreSQL), or None: check every one in Python."""
    if engine.dialect.name != "postgresql":
        return None
    try:
        with engine.connect() as conn:
            return [int(s) for (s,) in conn.execute(text(_PG_SUSPECTS))]
    except Exception:  # noqa: BLE001 - a request that is not JSON stops the query: let Python say which
        return None


def check_requests(
    conn: Connection, history: History, suspects: list[int] | None = None
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Payments whose stored request differs from their row: problems, and the request's values by position.

    `suspects` (from `request_suspects`) narrows the Python check to those payments; None checks all.
    """
    condition = "" if suspects is None else f" WHERE sequence IN ({', '.join(map(str, suspects)) or 'NULL'})"
    problems: list[dict[str, Any]] = []
    values: dict[int, dict[str, Any]] = {}
    if suspects == []:
        return problems, values
    rows = conn.execute(
        text(
            "SELECT sequence, type, amount, points_used, wallet_id, merchant_id, terminal_id, occurred_at_us,"
            f" original_id, has_items, request_json FROM payment{condition} ORDER BY sequence"
        )
    )
    for seq, kind, amount, used, wallet, merchant, terminal, at, original, has_items, request in rows:
        try:
            body = _transaction.validate_json(request)
        except ValidationError:
            problems.append({"sequence": int(seq), "problem": "stored request is not a valid transaction"})
            continue
        request_fields: dict[str, Any] = {
            "type": body.type,
            "amount": body.amount,
            "occurred_at_us": to_us(body.occurred_at),
        }
        row_fields: dict[str, Any] = {"type": kind, "amount": amount, "occurred_at_us": at}
        if body.type == "purchase":
            request_fields |= {
                "points_used": body.points_used,
                "wallet_id": body.wallet_id,
                "merchant_id": body.merchant_id,
                "terminal_id": body.terminal_id,
            }
            row_fields |= {"points_used": used, "wallet_id": wallet, "merchant_id": merchant, "terminal_id": terminal}
            if has_items is not None:
                request_fields["has_items"] = body.items is not None
                row_fields["has_items"] = bool(has_items)
        else:
            request_fields["original_id"] = body.original_id
            row_fields["original_id"] = original
        differ = sorted(f for f in request_fields if request_fields[f] != row_fields[f])
        if differ:
            problems.append(
                {
                    "sequence": int(seq),
                    "problem": "stored request differs from the payment",
                    "fields": differ,
                    "request": {f: request_fields[f] for f in differ},
                    "payment": {f: row_fields[f] for f in differ},
                }
            )
            position = int(np.searchsorted(history.sequence, seq))
            if position < len(history) and history.sequence[position] == seq and body.type == kind:
                values[position] = request_fields
    return problems, values


def _apply_request_values(history: History, values: dict[int, dict[str, Any]]) -> None:
    """Rate from what the stored request says where it differs from its row."""
    merchants = {m: i for i, m in enumerate(history.merchant_names)}
    wallets = {w: i for i, w in enumerate(history.wallet_names)}
    for position, fields in values.items():
        history.amount[position] = fields["amount"]
        history.occurred_at_us[position] = fields["occurred_at_us"]
        if fields["type"] == "purchase":
            history.points_used[position] = fields["points_used"]
            if fields["merchant_id"] not in merchants:
                merchants[fields["merchant_id"]] = len(history.merchant_names)
                history.merchant_names.append(fields["merchant_id"])
            if fields["wallet_id"] not in wallets:
                wallets[fields["wallet_id"]] = len(history.wallet_names)
                history.wallet_names.append(fields["wallet_id"])
            history.merchant[position] = merchants[fields["merchant_id"]]
            history.wallet[position] = wallets[fields["wallet_id"]]


# -- the ledger's side ------------------------------------------------------------------


def _campaign_code(ids: list[str]) -> str:
    cases = " ".join(f"WHEN '{cid}' THEN {g}" for g, cid in enumerate(ids))  # ids are [A-Za-z0-9_.:-] only
    return f"CASE campaign_id {cases} ELSE -1 END" if ids else "-1"


def load_ledger(conn: Connection, history: History, campaign_ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Award rows and refund postings as arrays over (payment position, campaign column)."""
    capped = " ".join(f"WHEN '{name}' THEN {code}" for name, code in CAPPED_CODE.items() if name)
    award_code = _campaign_code(campaign_ids).replace("campaign_id", "a.campaign_id")
    awards = _int_columns(
        conn,
        (
            f"SELECT p.sequence, CAST({award_code} AS BIGINT), "
            "CAST(a.campaign_version AS BIGINT), a.points, CAST(CASE a.capped_by " + capped + " ELSE 0 END AS BIGINT), "
            "a.clawed_back "
            "FROM award a JOIN payment p ON p.id = a.payment_id"
        ),
        ["sequence", "campaign", "version", "points", "capped", "clawed_back"],
    )
    moves = _int_columns(
        conn,
        (
            f"SELECT p.sequence, CAST(CASE WHEN po.reason = 'clawback' THEN "
            f"{_campaign_code(campaign_ids).replace('campaign_id', 'po.campaign_id')} ELSE -2 END AS BIGINT), "
            "CAST(sum(po.amount) AS BIGINT) "
            "FROM posting po JOIN payment p ON p.id = po.payment_id "
            "WHERE po.reason IN ('clawback', 'points_return') GROUP BY 1, 2"
        ),
        ["sequence", "campaign", "points"],
    )
    for part in (awards, moves):
        part["position"] = np.searchsorted(history.sequence, part["sequence"])
    return {"awards": awards, "moves": moves}


# -- comparing -------------------------------------------------------------------------


def rerate_check(engine: Engine, progress: Progress | None = None, kernel: str | None = None) -> dict[str, Any]:
    """Re-rate everything; returns {"ok", "checked", "mismatches": [...], "mismatch_count", "timings_s"}."""
    from concurrent.futures import ThreadPoolExecutor

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool, engine.connect() as conn:
        # The database compares every stored request with its row (its own JSON parser, on its
        # own cores) while this process loads and decodes the columns.
        suspects = pool.submit(request_suspects, engine)
        history = load_history(conn)
        versions = load_versions(conn)
        load_items(conn, history)
        request_problems, request_values = check_requests(conn, history, suspects.result())
        timings["load"] = time.perf_counter() - started
        _apply_request_values(history, request_values)
        mark = time.perf_counter()
        rated = rate_history(history, versions, engine=kernel, progress=progress)
        timings["rate"] = time.perf_counter() - mark
        mark = time.perf_counter()
        ledger = load_ledger(conn, history, rated.campaign_ids)
        found = request_problems + _compare(history, rated, ledger)
        found.sort(key=lambda r: r["sequence"])
        ids = payment_ids(conn, [r["sequence"] for r in found[:MISMATCH_ROWS_MAX]])
        timings["compare"] = time.perf_counter() - mark
    mismatches = []
    for row in found[:MISMATCH_ROWS_MAX]:
        seq = row.pop("sequence")
        mismatches.append({"payment_id": ids.get(seq), **row})
    return {
        "ok": not found,
        "checked": len(history),
        "mismatches": mismatches,
        "mismatch_count": len(found),
        "eras": rated.eras,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _compare(history: History, rated: Rated, ledger: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    G = len(rated.campaign_ids)
    N = len(history)
    P = rated.award.shape[0]
    is_purchase = history.kind == k.KIND_PURCHASE
    purchase_position = np.flatnonzero(is_purchase)
    out: list[dict[str, Any]] = []

    declined = np.flatnonzero(rated.status != k.STATUS_ACCEPTED)
    for pos in declined.tolist():
        out.append(
            {
                "sequence": int(history.sequence[pos]),
                "problem": f"re-rating declines it: {STATUS_CODES[int(rated.status[pos])]}",
            }
        )

    # Awards: the ledger's rows as [P, G] matrices beside the re-rated ones.
    a = ledger["awards"]
    held_points = np.zeros((P, G), I64)
    held_capped = np.zeros((P, G), np.int8)
    held_version = np.zeros((P, G), np.int32)
    held_clawed = np.zeros((P, G), I64)
    stray = np.zeros(N, bool)  # an award row the re-rate cannot place
    ok = (a["position"] < N) & (a["campaign"] >= 0)
    ok[ok] &= history.sequence[a["position"][ok]] == a["sequence"][ok]
    ok[ok] &= is_purchase[a["position"][ok]]
    stray[a["position"][~ok & (a["position"] < N)]] = True
    rows = rated.row[a["position"][ok]]
    held_points[rows, a["campaign"][ok]] = a["points"][ok]
    held_capped[rows, a["campaign"][ok]] = a["capped"][ok]
    held_version[rows, a["campaign"][ok]] = a["version"][ok]
    held_clawed[rows, a["campaign"][ok]] = a["clawed_back"][ok]
    accepted_rows = rated.status[purchase_position] == k.STATUS_ACCEPTED
    differ = ((held_points != rated.award) | (held_capped != rated.capped) | (held_version != rated.version)).any(1)
    differ &= accepted_rows
    differ |= stray[purchase_position]
    for row in np.flatnonzero(differ).tolist():
        out.append(
            {
                "sequence": int(history.sequence[purchase_position[row]]),
                "problem": "awards differ",
                "rerated": _awards(rated, row, rated.award, rated.capped, rated.version),
                "ledger": _awards(rated, row, held_points, held_capped, held_version),
            }
        )

    # Clawbacks and returned points of each refund, from the postings.
    m = ledger["moves"]
    held_clawback = np.zeros((N, G), I64)
    held_returned = np.zeros(N, I64)
    placed = m["position"] < N
    placed[placed] &= history.sequence[m["position"][placed]] == m["sequence"][placed]
    claw = placed & (m["campaign"] >= 0)
    np.add.at(held_clawback, (m["position"][claw], m["campaign"][claw]), m["points"][claw])
    ret = placed & (m["campaign"] == -2)
    np.add.at(held_returned, m["position"][ret], m["points"][ret])
    refund = (~is_purchase) & (rated.status == k.STATUS_ACCEPTED)
    bad = refund & (((held_clawback != rated.clawback).any(1)) | (held_returned != rated.returned))
    bad |= (~refund) & ((held_clawback != 0).any(1) | (held_returned != 0))
    unknown = ~placed | (m["campaign"] == -1)
    for pos in np.flatnonzero(bad).tolist():
        ids = rated.campaign_ids
        out.append(
            {
                "sequence": int(history.sequence[pos]),
                "problem": "clawbacks differ",
                "rerated": {ids[g]: int(v) for g, v in enumerate(rated.clawback[pos]) if v},
                "ledger": {ids[g]: int(v) for g, v in enumerate(held_clawback[pos]) if v},
                "points_returned": {"rerated": int(rated.returned[pos]), "ledger": int(held_returned[pos])},
            }
        )
    for seq in sorted(set(m["sequence"][unknown].tolist())):
        out.append({"sequence": int(seq), "problem": "a clawback posting the re-rate cannot place"})

    # Each award's clawed-back total against the re-rated clawbacks of the refunds of its purchase.
    clawed = np.zeros((P, G), I64)
    refunds = np.flatnonzero(refund & (history.original >= 0))
    np.add.at(clawed, rated.row[history.original[refunds]], rated.clawback[refunds])
    for row in np.flatnonzero(((clawed != held_clawed) & accepted_rows[:, None]).any(1)).tolist():
        out.append(
            {
                "sequence": int(history.sequence[purchase_position[row]]),
                "problem": "clawed back differs",
                "rerated": {rated.campaign_ids[g]: int(v) for g, v in enumerate(clawed[row]) if v},
                "ledger": {rated.campaign_ids[g]: int(v) for g, v in enumerate(held_clawed[row]) if v},
            }
        )
    return out


def _awards(
    rated: Rated, row: int, points: np.ndarray, capped: np.ndarray, version: np.ndarray
) -> dict[str, list[int | str | None]]:
    return {
        rated.campaign_ids[g]: [int(points[row, g]), CAPPED_BY[int(capped[row, g])], int(version[row, g])]
        for g in np.flatnonzero(points[row]).tolist()
    }


def kernel_names() -> list[str]:
    return sorted(ENGINES)


__all__ = [
    "History",
    "Rated",
    "Versions",
    "check_requests",
    "load_history",
    "load_items",
    "load_versions",
    "rate_history",
    "rerate_check",
    "campaign_order",
]
