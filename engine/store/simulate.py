"""What-if simulation: rate a historical window under a draft campaign, writing nothing.

The purchases that occurred in [from, to), and the refunds in that window of
those purchases, are rated again in acceptance order with the kernel: the
draft replaces the live campaign of its id (or joins the live ones when the
id is new) in every era, and every other campaign and merchant is the
version that was in force when the payment was accepted. Rating starts from
zero state — budgets, wallet caps and refunds count only what happens inside
the window — and grants are left out, so the figures say what the window's
traffic costs under the draft. The database is only read (one read-only
transaction); nothing is posted or stored.

The answer: points by campaign (awarded, clawed back, net, awards capped by
each cap), by merchant class and by Asia/Tokyo day (net points per
campaign), and the draft's budget exhaustion instant — the occurred_at of
the award that met its budget — if the budget was met.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from engine.model import Campaign, Merchant
from engine.rating import _kernel_py as k
from engine.rating.columns import CAPPED_BY, window_keys_us
from engine.store import rerate
from engine.timeutil import format_instant

CAPS = [name for name in CAPPED_BY.values() if name]


def simulate(engine: Engine, draft: Campaign, from_us: int, to_us: int, kernel: str | None = None) -> dict[str, Any]:
    """Rate the window [from_us, to_us) under `draft` with the live campaigns as they were."""
    assert from_us < to_us, "an empty window"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with engine.connect() as conn:
        everything = _cache_for(engine).get(conn)
        window = (everything.occurred_at_us >= from_us) & (everything.occurred_at_us < to_us)
        history = everything.select(window)
        # Refunds count only when their purchase is in the window (the original is known there).
        history = history.select((history.kind == k.KIND_PURCHASE) | (history.original >= 0))
        versions = rerate.load_versions(conn)
        conn.rollback()
    timings["load"] = time.perf_counter() - started

    def in_force(instant: int) -> tuple[list[Campaign], list[Merchant]]:
        campaigns, merchants = versions.in_force(instant)
        return [c for c in campaigns if c.id != draft.id] + [draft], merchants

    rated = rerate.rate_history(history, versions, override=in_force, engine=kernel, grants=False)
    timings["encode"], timings["rate"] = rated.timings_s["encode"], rated.timings_s["rate"]
    mark = time.perf_counter()
    result = _aggregate(history, rated, draft)
    timings["aggregate"] = time.perf_counter() - mark
    result.update(
        {
            "campaign_id": draft.id,
            "from": format_instant(from_us),
            "to": format_instant(to_us),
            "timings_s": {name: round(v, 4) for name, v in timings.items()},
        }
    )
    return result


class HistoryCache:
    """The decoded payment history of one database, kept between simulations.

    Accepted payments never change (the payment hash chain would show it), so
    the history only grows: each simulation tops it up with the payments
    accepted since the last one instead of decoding the whole history again.
    If the database no longer ends where the cache does (restored, or
    another database), the cache starts over.
    """

    def __init__(self) -> None:
        self.history: rerate.History | None = None
        self.last_hash: str | None = None
        self.lock = threading.Lock()

    def get(self, conn: Connection) -> rerate.History:
        with self.lock:
            if self.history is not None and len(self.history):
                last = int(self.history.sequence[-1])
                held = conn.execute(text("SELECT hash FROM payment WHERE sequence = :s"), {"s": last}).scalar()
                if held != self.last_hash:
                    self.history = None
            last = int(self.history.sequence[-1]) if self.history is not None and len(self.history) else 0
            new = rerate.load_history(conn, f"sequence > {last}")
            rerate.load_items(conn, new)
            self.history = new if self.history is None else rerate.extend(self.history, new)
            if len(self.history):
                self.last_hash = conn.execute(
                    text("SELECT hash FROM payment WHERE sequence = :s"), {"s": int(self.history.sequence[-1])}
                ).scalar()
            return self.history


_caches: dict[str, HistoryCache] = {}


def _cache_for(engine: Engine) -> HistoryCache:
    return _caches.setdefault(engine.url.render_as_string(hide_password=False), HistoryCache())


def _aggregate(history: rerate.History, rated: rerate.Rated, draft: Campaign) -> dict[str, Any]:
    ids = rated.campaign_ids
    G = len(ids)
    N = len(history)
    is_purchase = history.kind == k.KIND_PURCHASE
    accepted = rated.status == k.STATUS_ACCEPTED
    # Net points of each payment for each campaign: awards of purchases, minus clawbacks of refunds.
    net = -rated.clawback.copy()
    awarded = np.zeros((N, G), np.int64)
    purchases = np.flatnonzero(is_purchase)
    awarded[purchases] = rated.award[rated.row[purchases]]
    net += awarded

    capped = np.zeros((N, G), np.int8)
    capped[purchases] = rated.capped[rated.row[purchases]]
    by_campaign: dict[str, dict[str, Any]] = {}
    for g, cid in enumerate(ids):
        got = awarded[:, g] > 0
        by_campaign[cid] = {
            "awards": int(got.sum()),
            "points_awarded": int(awarded[:, g].sum()),
            "points_clawed_back": int(rated.clawback[:, g].sum()),
            "points_net": int(net[:, g].sum()),
            "capped": {name: int(((capped[:, g] == code) & got).sum()) for code, name in CAPPED_BY.items() if name},
        }

    # Merchant class of each payment, from the merchant record in force in its era.
    classes = sorted({m.merchant_class for _, _, merchants in rated.catalogs.values() for m in merchants})
    class_index = {c: i for i, c in enumerate(classes)}
    class_of = np.full(N, -1, np.int64)
    for era, (_, _, merchants) in rated.catalogs.items():
        by_id = {m.id: class_index[m.merchant_class] for m in merchants}
        table = np.array([by_id.get(name, -1) for name in history.merchant_names], np.int64)
        here = rated.era == era
        class_of[here] = table[history.merchant[here]]
    by_class: dict[str, dict[str, int]] = {}
    for i, name in enumerate(classes):
        totals = net[class_of == i].sum(axis=0)
        by_class[name] = {cid: int(v) for cid, v in zip(ids, totals) if v}

    days = window_keys_us(history.occurred_at_us, "day")
    day_keys, day_of = np.unique(days, return_inverse=True)
    per_day = np.zeros((len(day_keys), G), np.int64)
    np.add.at(per_day, day_of, net)
    by_day = {
        str(dt.date(1970, 1, 1) + dt.timedelta(days=int(d))): {cid: int(v) for cid, v in zip(ids, row) if v}
        for d, row in zip(day_keys, per_day)
    }

    exhausted_at = None
    if draft.budget is not None and draft.id in ids:
        running = np.cumsum(net[:, ids.index(draft.id)])
        met = np.flatnonzero((running >= draft.budget) & (awarded[:, ids.index(draft.id)] > 0))
        if met.size:
            exhausted_at = format_instant(int(history.occurred_at_us[met[0]]))
    return {
        "transactions": {
            "purchases": int(is_purchase.sum()),
            "refunds": int((~is_purchase).sum()),
            "declined": int((~accepted).sum()),
        },
        "by_campaign": by_campaign,
        "by_merchant_class": by_class,
        "by_day": by_day,
        "budget": draft.budget,
        "budget_exhausted_at": exhausted_at,
    }
