"""encode and decode alone (`engine.rating.columns`), per group of plain purchases: the part of
`rating.rate` around the kernel that the committer spends in Python.

A group as the ledger rates it: `--group` plain purchases (no items, no points used) of distinct
wallets against the campaigns of `bench/ingest.py`'s ward (monthly and whole-campaign wallet
caps), with instants spread over `--instants` distinct values (1: one instant, as
`bench/group_phases.py` sends them). The ledger has asked every instant's microseconds and
window keys before it rates (`Ledger._queue_state`), so the caches are warm here too; the
collector is tuned as in a serving process (`engine.collector.tune`).

    .venv/bin/python bench/rating_codec.py [--group 1000] [--repeat 200] [--instants 1000]

Last line: `rating_codec engine=<kernel> encode_us=<median> kernel_us=<median> decode_us=<median>`, a group.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import collector, rating  # noqa: E402
from engine.demo import ward  # noqa: E402
from engine.model import Purchase  # noqa: E402
from engine.rating.columns import Event, decode, encode  # noqa: E402
from engine.rating.state import window_key  # noqa: E402
from engine.timeutil import TOKYO, to_us  # noqa: E402


def group(size: int, instants: int) -> tuple[rating.Catalog, list[Event], rating.RatingState]:
    today = dt.datetime.now(TOKYO).replace(hour=12, minute=0, second=0, microsecond=0)
    merchants, campaigns = ward(7, today.date())
    catalog = rating.build_catalog(merchants, campaigns)
    events: list[Event] = []
    for i in range(size):
        m = merchants[i % len(merchants)]
        at = today + dt.timedelta(seconds=i % instants)
        events.append(
            (
                f"P{i:07d}",
                Purchase(
                    wallet_id=f"W{(i * 104729) % 50_000}",
                    merchant_id=m.id,
                    terminal_id="T1",
                    occurred_at=at,
                    amount=500 + (i * 37) % 9500,
                ),
            )
        )
    balance: dict[str, int] = {}
    for _, ev in events:  # as Ledger._queue_state reads them
        assert isinstance(ev, Purchase)
        us = to_us(ev.occurred_at)
        for c in catalog.campaigns:
            window_key(c.per_wallet_cap_period, us)
        balance[ev.wallet_id] = 0
    return catalog, events, rating.RatingState(balance=balance)


def fresh(state: rating.RatingState) -> rating.RatingState:
    return rating.RatingState(
        dict(state.usage),
        dict(state.spend),
        dict(state.purchases),
        None if state.balance is None else dict(state.balance),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--instants", type=int, default=1000)
    args = parser.parse_args()
    catalog, events, state = group(args.group, args.instants)
    collector.tune()  # as the committer runs
    times: dict[str, list[float]] = {"encode": [], "kernel": [], "decode": []}
    for _ in range(args.repeat):
        s = fresh(state)
        t0 = time.perf_counter()
        cols, ctx = encode(catalog, events, s)
        t1 = time.perf_counter()
        rating.rate_columns(cols)
        t2 = time.perf_counter()
        decode(catalog, cols, ctx, s)
        t3 = time.perf_counter()
        times["encode"].append(t1 - t0)
        times["kernel"].append(t2 - t1)
        times["decode"].append(t3 - t2)
    print(
        f"rating_codec engine={rating.ENGINE} "
        + " ".join(f"{k}_us={statistics.median(v) * 1e6:.0f}" for k, v in times.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
