"""The wallet lifecycle's runs at scale, on PostgreSQL: a crediting run over many pending awards,
then refunds that claw back points already credited.

A fresh database with the ward of `bench/ingest.py` and one campaign more whose points are
credited by dekad (`Credit(schedule="dekad")`, 10% of every purchase): `--purchases` purchases
are posted through `Ledger.submit` in groups of 1,000 (not timed), so each holds a pending
award. Then, timed:

- `setapay credit`'s run (`lifecycle.credit_due`) as of the last award's credit instant: every
  pending award moved to available points, as a lot on its award row;
- `--refunds` full refunds of credited purchases through `Ledger.submit` in groups of 1,000:
  each claws its points back from that lot;
- `setapay expire`'s run (`lifecycle.expire_due`) as of the last lot's expiry: every lot with
  points left expired (its wallet's points posted out), then the expiry warnings' pass.

Each phase prints its wall time, this process's CPU and PostgreSQL's (the backends of this
database, from /proc; Linux only), per item.

    .venv/bin/python bench/lifecycle.py [--purchases 100000] [--refunds 20000]

Last line: `lifecycle credit_per_s=<n> credit_pg_us=<n> refund_per_s=<n> refund_pg_us=<n>
expire_per_s=<n> expire_pg_us=<n>`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu_split import cpu_s, postgres  # noqa: E402
from bench.ingest import fresh_database, seed_ward, submissions  # noqa: E402
from engine.timeutil import TOKYO  # noqa: E402

DATABASE = "setapay_bench_lifecycle"
GROUP = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=100_000)
    parser.add_argument("--refunds", type=int, default=20_000)
    args = parser.parse_args()

    from sqlalchemy import func, select, text

    from engine import collector
    from engine.model import Campaign, Credit, Refund, Tier
    from engine.store import db, lifecycle
    from engine.store.config import Config
    from engine.store.ledger import Ledger, Submission
    from engine.store.models import AwardRow, PaymentRow

    url = fresh_database(DATABASE)
    terminals, _ = seed_ward(url, 8)
    engine = db.make_engine(url.replace("postgresql+psycopg://", "postgresql://"))
    today = dt.datetime.now(TOKYO).date()
    Config(engine).create_campaign(
        Campaign(
            id="DEKAD_BACK",
            name="dekad bench",
            starts_at=dt.datetime.combine(today - dt.timedelta(days=1), dt.time(), TOKYO),
            ends_at=dt.datetime.combine(today + dt.timedelta(days=30), dt.time(), TOKYO),
            tiers=(Tier(rate_bp=1000),),
            credit=Credit(schedule="dekad"),
        )
    )
    ledger = Ledger(engine)
    collector.tune()
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    for round_ in range(-(-args.purchases // GROUP)):
        ledger.submit(submissions(terminals, round_, min(GROUP, args.purchases - round_ * GROUP), occurred_at))
    with engine.connect() as conn:
        as_of = conn.execute(select(func.max(AwardRow.credit_at_us)).where(AwardRow.pending > 0)).scalar_one()
        pending = conn.execute(select(func.count()).select_from(AwardRow).where(AwardRow.pending > 0)).scalar_one()
        credited_ids = [
            r[0]
            for r in conn.execute(
                select(AwardRow.payment_id)
                .where(AwardRow.campaign_id == "DEKAD_BACK")
                .order_by(AwardRow.payment_id)
                .limit(args.refunds)
            )
        ]
        originals = {
            pid: (terminal_id, amount)
            for pid, terminal_id, amount in conn.execute(
                select(PaymentRow.id, PaymentRow.terminal_id, PaymentRow.amount).where(PaymentRow.id.in_(credited_ids))
            )
        }
    print(f"posted {args.purchases} purchases, {pending} pending awards due by {as_of}")

    pg = postgres(DATABASE)["pg_backends"]

    def measured(label: str, count: int, run: Callable[[], object]) -> tuple[float, float]:
        pg_before, own_before, started = sum(map(cpu_s, pg)), time.process_time(), time.perf_counter()
        run()
        elapsed = time.perf_counter() - started
        own, pg_used = time.process_time() - own_before, sum(map(cpu_s, pg)) - pg_before
        print(
            f"{label}: {count} in {elapsed:.2f} s ({count / elapsed:.0f}/s), "
            f"this process {own / count * 1e6:.1f} us each, PostgreSQL {pg_used / count * 1e6:.1f} us each"
        )
        return count / elapsed, pg_used / count * 1e6

    summary: dict[str, int | str] = {}
    credit_rate, credit_pg = measured("credit", pending, lambda: summary.update(lifecycle.credit_due(ledger, as_of)))
    assert summary["awards_credited"] == pending, summary

    def refunds() -> None:
        ids = sorted(originals)
        for start in range(0, len(ids), GROUP):
            group = []
            for pid in ids[start : start + GROUP]:
                terminal_id, amount = originals[pid]
                body = Refund.model_validate(
                    {"type": "refund", "original_id": pid, "amount": amount, "occurred_at": occurred_at}
                )
                canonical = body.model_dump_json()
                digest = hashlib.sha256(canonical.encode()).hexdigest()
                group.append(Submission(terminal_id, f"refund-{pid}", digest, body, canonical))
            answers = ledger.submit(group)
            assert all(a.status == 201 for a in answers), [a.body for a in answers if a.status != 201][:3]

    refund_rate, refund_pg = measured("refunds", len(originals), refunds)

    with engine.connect() as conn:
        lots = conn.execute(text("SELECT count(*), max(expires_at_us) FROM wallet_lot WHERE remaining > 0")).one()
    expired: dict[str, int | str] = {}
    expire_rate, expire_pg = measured("expiry", lots[0], lambda: expired.update(lifecycle.expire_due(ledger, lots[1])))
    assert expired["lots_expired"] == lots[0], (expired, lots)
    engine.dispose()
    print(
        f"lifecycle credit_per_s={credit_rate:.0f} credit_pg_us={credit_pg:.1f} "
        f"refund_per_s={refund_rate:.0f} refund_pg_us={refund_pg:.1f} "
        f"expire_per_s={expire_rate:.0f} expire_pg_us={expire_pg:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
