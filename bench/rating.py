"""Benchmark of the rating loop: the compiled kernel against its pure-Python twin.

Builds one month of Setagaya PAY traffic as numpy arrays and turns them into
columns with the shared vectorized encoder (`engine.rating.vectorized`;
building a million pydantic records would time the validator, not the loop):
1,000,000 transactions, about 2% of them refunds of earlier
purchases, over 100,000 wallets and 5,000 merchants, rated against a
realistic campaign set:

- a shop-class point-back (20% at 商店街 small shops, 15% other small shops,
  10% semi-large, 0% large) with a monthly wallet cap of 10,000 pt and a
  budget that runs out part-way through the month;
- an ethical-certification bonus (+5%, certifications that start mid-month);
- a local-produce (せたがやそだち) item-tag bonus credited by dekad;
- a two-day exclusive 商店街 festival that, where it applies, stops the rest.

Each engine rates its own copy of the same columns; the timings exclude the
copy. Both engines' arrays must be identical. The last line printed is
`kernel_tx_per_s=<int> twin_tx_per_s=<int> ratio=<float>`.

Run: .venv/bin/python bench/rating.py [--runs 9] [--twin-runs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import time
from collections.abc import Callable

import numpy as np

from engine import rating
from engine.model import Campaign, Merchant
from engine.rating import _kernel_py
from engine.rating.columns import Catalog, Columns, build_catalog
from engine.rating.vectorized import Batch, Opening, build_columns
from engine.timeutil import to_us

TRANSACTIONS = 1_000_000
WALLETS = 100_000
MERCHANTS = 5_000
REFUND_SHARE = 0.02
SEED = 20260601

JST = dt.timezone(dt.timedelta(hours=9))
MONTH_START = dt.datetime(2026, 6, 1, tzinfo=JST)
MONTH_END = dt.datetime(2026, 7, 1, tzinfo=JST)
LOCAL_TAG = "setagaya_sodachi"


def merchants(rng: np.random.Generator) -> list[Merchant]:
    classes = rng.choice(["small", "semi_large", "large"], size=MERCHANTS, p=[0.7, 0.2, 0.1])
    records = []
    for i, merchant_class in enumerate(classes):
        certifications = []
        if rng.random() < 0.1:
            # Certified from some day of the month on, so the instant matters.
            valid_from = MONTH_START + dt.timedelta(days=int(rng.integers(0, 30)))
            certifications.append(
                {
                    "scheme": "setagaya_ethical",
                    "valid_from": valid_from,
                    "valid_until": valid_from + dt.timedelta(days=365),
                }
            )
        records.append(
            Merchant.model_validate(
                {
                    "id": f"M{i:05d}",
                    "name": f"shop {i}",
                    "merchant_class": str(merchant_class),
                    "shotengai_id": f"S{i % 40:02d}" if merchant_class == "small" and rng.random() < 0.5 else None,
                    "ward_local": bool(rng.random() < 0.8),
                    "ethical_certifications": certifications,
                }
            )
        )
    return records


def campaigns() -> list[Campaign]:
    month = {"starts_at": MONTH_START, "ends_at": MONTH_END}
    return [
        Campaign.model_validate(
            {
                "id": "pointback_2026_06",
                "name": "せたがやPay 最大20%還元",
                **month,
                "tiers": [
                    {"match": {"merchant_classes": ["small"], "shotengai_member": True}, "rate_bp": 2_000},
                    {"match": {"merchant_classes": ["small"]}, "rate_bp": 1_500},
                    {"match": {"merchant_classes": ["semi_large"]}, "rate_bp": 1_000},
                    {"match": {"merchant_classes": ["large"]}, "rate_bp": 0},
                ],
                "per_wallet_cap": 10_000,
                "per_wallet_cap_period": "month",
                "budget": 150_000_000,
                "priority": 10,
            }
        ),
        Campaign.model_validate(
            {
                "id": "ethical_bonus_2026_06",
                "name": "エシカル消費 +5%",
                "funding_source": "climate_fund",
                **month,
                "tiers": [{"match": {"ethical_certified": True}, "rate_bp": 500}],
                "per_wallet_cap": 3_000,
                "per_wallet_cap_period": "month",
                "budget": 20_000_000,
                "priority": 5,
            }
        ),
        Campaign.model_validate(
            {
                "id": "sodachi_2026_06",
                "name": "せたがやそだち +10%",
                **month,
                "tiers": [{"match": {"ward_local": True}, "rate_bp": 1_000}],
                "item_tags": [LOCAL_TAG],
                "per_tx_cap": 500,
                "budget": 30_000_000,
                "priority": 5,
                "credit": {"schedule": "dekad", "delay_business_days": 5},
            }
        ),
        Campaign.model_validate(
            {
                "id": "shotengai_festival",
                "name": "商店街まつり 30% (2 days)",
                "starts_at": MONTH_START + dt.timedelta(days=20),
                "ends_at": MONTH_START + dt.timedelta(days=22),
                "tiers": [{"match": {"shotengai_member": True}, "rate_bp": 3_000}],
                "fixed_points": 20,
                "per_wallet_cap": 2_000,
                "per_wallet_cap_period": "day",
                "budget": 5_000_000,
                "stacking": "exclusive",
                "priority": 100,
            }
        ),
    ]


def transactions(rng: np.random.Generator, catalog: Catalog) -> Columns:
    """One month of traffic as columns, in acceptance (time) order."""
    N = TRANSACTIONS
    C = len(catalog.campaigns)
    start_us, end_us = to_us(MONTH_START), to_us(MONTH_END)
    occurred_at = np.sort(rng.integers(start_us, end_us, size=N, dtype=np.int64))

    # A refund is never first and always refers to an earlier purchase.
    kind = (rng.random(N) < REFUND_SHARE).astype(np.int8)
    kind[:1000] = _kernel_py.KIND_PURCHASE
    is_purchase = kind == _kernel_py.KIND_PURCHASE
    purchases_before = np.cumsum(is_purchase) - is_purchase  # purchase rows created before event i
    R = int(is_purchase.sum())
    row = np.where(is_purchase, purchases_before, (rng.random(N) * purchases_before).astype(np.int64)).astype(np.int32)

    # Heavy users first: a skewed wallet draw makes some wallets reach their monthly cap.
    r_wallet = (WALLETS * rng.random(R) ** 2).astype(np.int32)
    r_amount = np.clip(rng.lognormal(np.log(1_500), 1.0, R).astype(np.int64), 1, 10_000_000)
    r_points_used = np.where(rng.random(R) < 0.1, rng.integers(1, 2_000, R) % (r_amount + 1), 0).astype(np.int64)
    merchant = rng.integers(0, MERCHANTS, N, dtype=np.int32)
    merchant[~is_purchase] = -1

    amount = np.zeros(N, np.int64)
    amount[is_purchase] = r_amount
    points_used = np.zeros(N, np.int64)
    points_used[is_purchase] = r_points_used
    refund_rows = row[~is_purchase]
    full = rng.random(refund_rows.size) < 0.5
    amount[~is_purchase] = np.where(
        full, r_amount[refund_rows], 1 + (rng.random(refund_rows.size) * r_amount[refund_rows]).astype(np.int64)
    )

    # A fifth of purchases itemise two lines; half of those lines are local produce.
    itemised = is_purchase & (rng.random(N) < 0.2)
    item_count = np.where(itemised, 2, 0)
    item_start = np.zeros(N + 1, np.int32)
    np.cumsum(item_count, out=item_start[1:])
    first = amount[itemised] // 2
    item_amount = np.empty(2 * first.size, np.int64)
    item_amount[0::2], item_amount[1::2] = first, amount[itemised] - first
    item_mask = np.where(rng.random(item_amount.size) < 0.5, np.uint64(1 << catalog.tag_bits[LOCAL_TAG]), np.uint64(0))

    wallet = np.zeros(N, np.int64)
    wallet[is_purchase] = r_wallet
    # The shared vectorized encoder numbers the wallet-window slots with np.unique
    # (the same code the re-rate and the simulation use).
    batch = Batch(
        kind=kind,
        merchant=merchant,
        wallet=wallet,
        occurred_at_us=occurred_at,
        amount=amount,
        points_used=points_used,
        original_row=np.where(is_purchase, -1, row),
        item_start=item_start,
        item_amount=item_amount,
        item_mask=item_mask,
    )
    opening = Opening.empty(C)
    # Balance checking on: wallets start with some points, so a few redemptions are declined.
    opening.balance = rng.integers(0, 3_000, WALLETS).astype(np.int64)
    cols, _ = build_columns(catalog, batch, opening)
    return cols


def time_engine(
    rate_columns: Callable[[Columns], None], cols: Columns, runs: int
) -> tuple[list[float], list[float], Columns]:
    """Wall and CPU seconds of each run on a fresh copy, and the columns of the last run.

    CPU time is printed beside wall time because the benchmark machine is
    shared: wall time also counts the moments another process held the core.
    """
    wall, cpu = [], []
    for _ in range(runs):
        work = cols.copy()
        started, started_cpu = time.perf_counter(), time.process_time()
        rate_columns(work)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall, cpu, work


def assert_identical(twin: Columns, kernel: Columns) -> None:
    for field in dataclasses.fields(twin):
        value = getattr(twin, field.name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(kernel, field.name), value, err_msg=field.name)


def describe(cols: Columns, catalog: Catalog) -> str:
    C = len(catalog.campaigns)
    status = np.bincount(cols.out_status, minlength=5)
    awards = (cols.r_award.reshape(-1, C) > 0).sum(axis=0)
    capped = [np.bincount(cols.out_capped.reshape(-1, C)[:, c], minlength=4).tolist() for c in range(C)]
    lines = [
        f"status counts (accepted, unknown merchant, original not found, exceeds, insufficient): {status.tolist()}"
    ]
    for c, campaign in enumerate(catalog.campaigns):
        lines.append(
            f"  {campaign.id}: awards={awards[c]} spend={cols.spend[c]} budget={campaign.budget} "
            f"capped(none,per_tx,wallet,budget)={capped[c]}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of the kernel")
    parser.add_argument("--twin-runs", type=int, default=5, help="timed runs of the twin (seconds each)")
    args = parser.parse_args()
    assert "cython" in rating.ENGINES, "the compiled kernel is not built: pip install -e . --no-build-isolation"
    assert not rating.ENGINES["cython"].DEBUG, "a SETAPAY_KERNEL_DEBUG=1 build is not benchmarked"

    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    catalog = build_catalog(merchants(rng), campaigns())
    cols = transactions(rng, catalog)
    print(
        f"built {TRANSACTIONS:,} transactions, {len(cols.r_wallet):,} purchase rows, {len(cols.usage):,} wallet-window "
        f"slots, {len(catalog.campaigns)} campaigns in {time.perf_counter() - started:.1f} s"
    )

    kernel_s, kernel_cpu_s, kernel_cols = time_engine(rating.ENGINES["cython"].rate_columns, cols, args.runs)
    twin_s, twin_cpu_s, twin_cols = time_engine(_kernel_py.rate_columns, cols, args.twin_runs)
    assert_identical(twin_cols, kernel_cols)
    print(describe(kernel_cols, catalog))
    print("both engines produced identical arrays")

    kernel_median, twin_median = statistics.median(kernel_s), statistics.median(twin_s)
    print(
        f"kernel: {args.runs} runs, median {kernel_median * 1e3:.1f} ms wall (min {min(kernel_s) * 1e3:.1f} ms), "
        f"median {statistics.median(kernel_cpu_s) * 1e3:.1f} ms CPU"
    )
    print(
        f"twin:   {args.twin_runs} runs, median {twin_median:.2f} s wall (min {min(twin_s):.2f} s), "
        f"median {statistics.median(twin_cpu_s):.2f} s CPU"
    )
    kernel_rate = int(TRANSACTIONS / kernel_median)
    twin_rate = int(TRANSACTIONS / twin_median)
    print(f"kernel_tx_per_s={kernel_rate} twin_tx_per_s={twin_rate} ratio={twin_median / kernel_median:.1f}")


if __name__ == "__main__":
    main()
