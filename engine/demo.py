"""A synthetic Setagaya ward and one busy day of it, rated end to end.

`ward(seed)` builds a realistic merchant mix (商店街 shops in 三軒茶屋, 下北沢,
経堂, 二子玉川 and others, small non-member shops, convenience stores, a few
large stores, ethical certifications) and the campaigns the ward typically
runs (point-back by shop class with a monthly wallet cap and a budget, an
ethical-certification bonus, a local-produce item-tag bonus and a short
exclusive welcome event). `day(...)` generates the purchases and refunds of
one day in acceptance order, and `opening_state(...)` says what the month so
far has already used of caps, budgets and balances, so the day shows cap hits
and a budget running out as a real mid-month day would.

`run_rating_demo(...)` rates the day through `engine.rating.rate` in batches
and returns a summary dict; `setapay demo` prints it. Everything here is plain
functions over plain values so the ledger and API can reuse the same ward and
day later. Every name and id is a function of the seed alone.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from engine import limits
from engine.model import Campaign, Certification, Item, Match, Merchant, MerchantClass, Purchase, Refund, Tier
from engine.rating import Catalog, Outcome, RatingState, build_catalog, rate, window_key
from engine.rating.columns import Event
from engine.timeutil import TOKYO, to_us

if TYPE_CHECKING:
    from rich.console import Console

DEMO_DATE = dt.date(2026, 12, 15)
DEMO_SEED = 20261215
TRANSACTIONS_DEFAULT = 30_000
BATCH_SIZE_DEFAULT = 1_000

# Shotengai (商店街 associations) whose members get the highest point-back
# rate; ids are ASCII because ids follow limits.ID_PATTERN.
SHOTENGAI = {
    "S_SANCHA": "三軒茶屋",
    "S_SHIMOKITA": "下北沢",
    "S_KYODO": "経堂",
    "S_FUTAKO": "二子玉川",
    "S_SAKURASHIN": "桜新町",
    "S_KARASUYAMA": "千歳烏山",
}
NEIGHBOURHOODS = ["用賀", "駒沢", "成城", "祖師谷", "豪徳寺", "松陰神社前", "梅ヶ丘", "等々力", "尾山台", "池尻"]
FAMILY_NAMES = [
    "佐藤",
    "鈴木",
    "高橋",
    "田中",
    "伊藤",
    "渡辺",
    "山本",
    "中村",
    "小林",
    "加藤",
    "吉田",
    "山田",
    "松本",
    "井上",
    "木村",
    "林",
    "清水",
    "山口",
    "森",
    "池田",
]
SHOP_KINDS = [
    "青果店",
    "精肉店",
    "鮮魚店",
    "豆腐店",
    "ベーカリー",
    "和菓子店",
    "酒店",
    "花店",
    "書店",
    "珈琲店",
    "惣菜店",
    "米店",
    "茶舗",
    "金物店",
    "クリーニング",
    "古着店",
    "雑貨店",
    "食堂",
    "ラーメン店",
    "薬局",
]
CONVENIENCE_CHAINS = ["サンライズマート", "まちかどストア", "デイリーポート"]
LARGE_STORES = ["せたがや百貨店", "玉川ショッピングセンター", "フレッシュスーパー", "ホームセンター多摩川"]
# Tags a purchase's items may carry; the ward's campaigns name some of them.
ITEM_TAGS = ["local_produce", "setagaya_sodachi", "fair_trade", "eco_label", "workshop_made", "organic"]
LOCAL_TAGS = ("local_produce", "setagaya_sodachi")
ETHICAL_SCHEMES = ["setagaya_ethical", "fair_trade_town", "eco_action"]

# The welcome event runs at this shotengai only.
WELCOME_SHOTENGAI = "S_SHIMOKITA"


def _at(date: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime(date.year, date.month, date.day, hour, tzinfo=TOKYO)


def _month_bounds(date: dt.date) -> tuple[dt.datetime, dt.datetime]:
    first = date.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return _at(first), _at(following)


def _fiscal_half(date: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The half of the ward's fiscal year (April-September, October-March) containing `date`."""
    if 4 <= date.month < 10:
        return _at(dt.date(date.year, 4, 1)), _at(dt.date(date.year, 10, 1))
    year = date.year if date.month >= 10 else date.year - 1
    return _at(dt.date(year, 10, 1)), _at(dt.date(year + 1, 4, 1))


def _certifications(rng: random.Random, date: dt.date, share: float) -> tuple[Certification, ...]:
    """Ethical certifications: some valid over `date`, a few expired ones for realism."""
    roll = rng.random()
    scheme = rng.choice(ETHICAL_SCHEMES)
    if roll < share:
        start = date - dt.timedelta(days=rng.randrange(30, 700))
        return (Certification(scheme=scheme, valid_from=_at(start), valid_until=_at(start + dt.timedelta(days=1095))),)
    if roll < share + 0.03:
        start = date - dt.timedelta(days=rng.randrange(400, 900))
        return (Certification(scheme=scheme, valid_from=_at(start), valid_until=_at(start + dt.timedelta(days=365))),)
    return ()


def merchants(seed: int = DEMO_SEED, date: dt.date = DEMO_DATE) -> list[Merchant]:
    """About 300 merchants: shotengai shops, other small shops, convenience stores, large stores."""
    rng = random.Random(f"merchants:{seed}")
    out: list[Merchant] = []

    def add(
        name: str, merchant_class: MerchantClass, shotengai_id: str | None, ward_local: bool, cert_share: float
    ) -> None:
        out.append(
            Merchant(
                id=f"M{len(out) + 1:04d}",
                name=name,
                merchant_class=merchant_class,
                shotengai_id=shotengai_id,
                ward_local=ward_local,
                ethical_certifications=_certifications(rng, date, cert_share),
            )
        )

    for shotengai_id, area in SHOTENGAI.items():
        for _ in range(rng.randrange(28, 40)):
            add(
                f"{area} {rng.choice(FAMILY_NAMES)}{rng.choice(SHOP_KINDS)}",
                "small",
                shotengai_id,
                rng.random() < 0.9,
                0.15,
            )
    for _ in range(60):
        add(
            f"{rng.choice(NEIGHBOURHOODS)} {rng.choice(FAMILY_NAMES)}{rng.choice(SHOP_KINDS)}",
            "small",
            None,
            rng.random() < 0.7,
            0.08,
        )
    for area in list(SHOTENGAI.values()) + NEIGHBOURHOODS:
        for chain in rng.sample(CONVENIENCE_CHAINS, 2):
            add(f"{chain} {area}店", "semi_large", None, False, 0.0)
    for store in LARGE_STORES:
        for area in rng.sample(list(SHOTENGAI.values()), 2):
            add(f"{store} {area}店", "large", None, False, 0.02)
    return out


def campaigns(members: Iterable[Merchant], date: dt.date = DEMO_DATE) -> list[Campaign]:
    """The ward's campaigns around `date`, as SPEC §1 describes them."""
    month_start, month_end = _month_bounds(date)
    welcome_ids = tuple(m.id for m in members if m.shotengai_id == WELCOME_SHOTENGAI)
    half_start, half_end = _fiscal_half(date)
    return [
        Campaign(
            id=f"PB_{month_start:%Y_%m}",
            name=f"せたがやPay ポイントバック {month_start:%Y年%m月}",
            starts_at=month_start,
            ends_at=month_end,
            tiers=(
                Tier(match=Match(merchant_classes=("small",), shotengai_member=True), rate_bp=2000),
                Tier(match=Match(merchant_classes=("small",)), rate_bp=1500),
                Tier(match=Match(merchant_classes=("semi_large",)), rate_bp=1000),
                # Large stores have no tier: no point-back there.
            ),
            per_tx_cap=3_000,
            per_wallet_cap=10_000,
            per_wallet_cap_period="month",
            budget=150_000_000,
            priority=10,
        ),
        Campaign(
            id="ETHICAL_BONUS",
            name="エシカル認証店 +5% ボーナス",
            funding_source="climate_fund",
            starts_at=half_start,
            ends_at=half_end,
            tiers=(Tier(match=Match(ethical_certified=True), rate_bp=500),),
            per_wallet_cap=3_000,
            per_wallet_cap_period="month",
            budget=8_000_000,
            priority=5,
        ),
        Campaign(
            id="LOCAL_PRODUCE",
            name="せたがやそだち・地場産品 +10%",
            funding_source="national_grant",
            starts_at=month_start,
            ends_at=month_end,
            tiers=(Tier(match=Match(), rate_bp=1000),),
            item_tags=LOCAL_TAGS,
            min_base=100,
            per_wallet_cap=2_000,
            per_wallet_cap_period="month",
            budget=3_000_000,
            priority=4,
        ),
        Campaign(
            id="WELCOME_SHIMOKITA",
            name="下北沢 歳末ウェルカム 30% (3日間)",
            starts_at=_at(date - dt.timedelta(days=1)),
            ends_at=_at(date + dt.timedelta(days=2)),
            # Exclusive and first: where it applies it replaces every other campaign.
            tiers=(Tier(match=Match(merchant_ids=welcome_ids), rate_bp=3000),),
            fixed_points=50,
            per_wallet_cap=1_000,
            per_wallet_cap_period="campaign",
            budget=400_000,
            stacking="exclusive",
            priority=100,
        ),
    ]


def ward(seed: int = DEMO_SEED, date: dt.date = DEMO_DATE) -> tuple[list[Merchant], list[Campaign]]:
    """The synthetic ward: (merchants, campaigns), stable for a seed."""
    members = merchants(seed, date)
    return members, campaigns(members, date)


# Typical basket in yen (median, spread) and how often each kind of shop is visited.
_BASKET_YEN = {"small": (1_400, 0.8), "semi_large": (650, 0.6), "large": (4_200, 0.9)}
_VISIT_WEIGHT = {"small": 1.0, "semi_large": 6.0, "large": 9.0}


def _amount(rng: random.Random, merchant_class: str) -> int:
    median, spread = _BASKET_YEN[merchant_class]
    yen = int(rng.lognormvariate(0, spread) * median)
    # Shops price in tens of yen; convenience stores do not.
    if merchant_class != "semi_large":
        yen = yen // 10 * 10
    return max(limits.AMOUNT_YEN_MIN, min(yen, 300_000))


def _items(rng: random.Random, amount: int) -> tuple[Item, ...]:
    """Split `amount` into 1-5 items, some tagged, summing exactly to `amount`."""
    count = min(rng.randint(1, 5), amount)
    cuts = sorted(rng.sample(range(1, amount), count - 1)) if count > 1 else []
    bounds = [0, *cuts, amount]
    items = []
    for lo, hi in zip(bounds, bounds[1:]):
        tags = tuple(sorted(set(rng.sample(ITEM_TAGS, rng.randint(1, 2))))) if rng.random() < 0.45 else ()
        items.append(Item(amount=hi - lo, tags=tags))
    return tuple(items)


def wallet_ids(n: int) -> list[str]:
    """The wallets a day of `n` purchases draws from (about one per two purchases)."""
    return [f"W{i:07d}" for i in range(1, max(50, n // 2) + 1)]


def day(
    members: list[Merchant], n: int = TRANSACTIONS_DEFAULT, seed: int = DEMO_SEED, date: dt.date = DEMO_DATE
) -> list[Event]:
    """`n` purchases of one day plus about 1.5% refunds of them, as (key, event) in acceptance order."""
    rng = random.Random(f"day:{seed}:{date.isoformat()}:{n}")
    wallets = wallet_ids(n)
    weights = [_VISIT_WEIGHT[m.merchant_class] for m in members]
    chosen = rng.choices(members, weights=weights, k=n)
    opening_s = to_us(_at(date, 7)) // 1_000_000
    closing_s = to_us(_at(date, 23)) // 1_000_000
    seconds = sorted(rng.randrange(opening_s, closing_s) for _ in range(n))
    timed: list[tuple[int, int, str, Purchase | Refund]] = []
    for i, (merchant, second) in enumerate(zip(chosen, seconds)):
        amount = _amount(rng, merchant.merchant_class)
        # A few heavy users make many purchases; most wallets pay once or twice.
        wallet = (
            wallets[min(int(rng.paretovariate(1.2)) - 1, len(wallets) - 1)]
            if rng.random() < 0.1
            else rng.choice(wallets)
        )
        with_items = merchant.merchant_class != "semi_large" and rng.random() < 0.35 and amount >= 2
        points_used = min(amount, rng.choice((100, 300, 500, 1_000, 2_000))) if rng.random() < 0.08 else 0
        key = f"P{i + 1:07d}"
        purchase = Purchase(
            wallet_id=wallet,
            merchant_id=merchant.id,
            terminal_id=f"T{merchant.id[1:]}01",
            occurred_at=dt.datetime.fromtimestamp(second, TOKYO),
            amount=amount,
            points_used=points_used,
            items=_items(rng, amount) if with_items else None,
        )
        timed.append((second, 0, key, purchase))
        if rng.random() < 0.015:
            # Refunds come minutes to hours later: a whole return or part of the basket.
            later = second + rng.randrange(120, 4 * 3600)
            refunded = amount if rng.random() < 0.6 or amount < 2 else rng.randrange(1, amount)
            if later < closing_s + 3600:
                refund = Refund(original_id=key, amount=refunded, occurred_at=dt.datetime.fromtimestamp(later, TOKYO))
                timed.append((later, 1, f"R{i + 1:07d}", refund))
    timed.sort(key=lambda t: (t[0], t[1], t[2]))
    return [(key, event) for _, _, key, event in timed]


def opening_state(
    camps: list[Campaign], events: Sequence[Event], seed: int = DEMO_SEED, date: dt.date = DEMO_DATE
) -> RatingState:
    """What the month before `date` already used: wallet-cap usage, campaign spend, balances.

    Mid-month, some wallets are close to their monthly caps and some budgets
    are mostly spent; starting from zero would hide the caps the demo is for.
    """
    rng = random.Random(f"opening:{seed}:{date.isoformat()}")
    wallets = sorted({ev.wallet_id for _, ev in events if isinstance(ev, Purchase)})
    balance: dict[str, int] = {}
    state = RatingState(balance=balance)
    noon_us = to_us(_at(date, 12))
    # The app offers only the points a wallet has, so each wallet holds at least
    # what it redeems today; awards made today only add to that, and refunds
    # take back no more than today's awards.
    redeemed: collections.Counter[str] = collections.Counter()
    for _, ev in events:
        if isinstance(ev, Purchase):
            redeemed[ev.wallet_id] += ev.points_used
    for w in wallets:
        balance[w] = redeemed[w] + rng.choice((0, 300, 1_500, 3_000, 6_000, 12_000))
    spent_share = {"ETHICAL_BONUS": 0.93, "LOCAL_PRODUCE": 0.6, "WELCOME_SHIMOKITA": 0.55}
    for c in camps:
        if c.per_wallet_cap is not None and c.starts_at < _at(date):
            for w in wallets:
                # Most wallets used little; one in twenty is a heavy user near the cap.
                share = rng.uniform(0.75, 1.0) if rng.random() < 0.05 else rng.uniform(0, 0.35)
                used = int(c.per_wallet_cap * share)
                if used:
                    state.usage[(c.id, w, window_key(c.per_wallet_cap_period, noon_us))] = used
        if c.budget is not None:
            state.spend[c.id] = int(c.budget * spent_share.get(c.id, 0.45))
    return state


@dataclasses.dataclass
class CampaignTally:
    awarded: int = 0
    clawed_back: int = 0
    awards: int = 0
    capped_by: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


def rate_day(
    catalog: Catalog,
    events: Sequence[Event],
    state: RatingState,
    batch_size: int = BATCH_SIZE_DEFAULT,
    engine: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Rate `events` in acceptance order, `batch_size` at a time, as ingest batches arrive."""
    assert batch_size >= 1
    outcomes: list[Outcome] = []
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        outcomes.extend(rate(catalog, batch, state, engine))
        if on_batch is not None:
            on_batch(len(batch))
    return outcomes


def summarize(
    camps: list[Campaign], outcomes: list[Outcome], opening_spend: dict[str, int], state: RatingState
) -> dict[str, Any]:
    """Per-campaign points awarded, clawed back, budget left and cap hits, and totals."""
    tallies = {c.id: CampaignTally() for c in camps}
    declined: collections.Counter[str] = collections.Counter()
    purchases = refunds = points_returned = 0
    for o in outcomes:
        if o.declined:
            declined[o.declined] += 1
            continue
        if o.type == "purchase":
            purchases += 1
            for a in o.awards:
                tally = tallies[a.campaign_id]
                tally.awarded += a.points
                tally.awards += 1
                if a.capped_by:
                    tally.capped_by[a.capped_by] += 1
        else:
            refunds += 1
            points_returned += o.points_returned
            for cb in o.clawbacks:
                tallies[cb.campaign_id].clawed_back += cb.points
    per_campaign: dict[str, dict[str, Any]] = {}
    for c in camps:
        t = tallies[c.id]
        spend = state.spend.get(c.id, 0)
        per_campaign[c.id] = {
            "name": c.name,
            "awards": t.awards,
            "points_awarded": t.awarded,
            "points_clawed_back": t.clawed_back,
            "opening_spend": opening_spend.get(c.id, 0),
            "spend": spend,
            "budget": c.budget,
            "budget_left": None if c.budget is None else c.budget - spend,
            "cap_hits": dict(sorted(t.capped_by.items())),
        }
    return {
        "purchases_accepted": purchases,
        "refunds_accepted": refunds,
        "declined": dict(sorted(declined.items())),
        "points_awarded": sum(t.awarded for t in tallies.values()),
        "points_clawed_back": sum(t.clawed_back for t in tallies.values()),
        "points_returned": points_returned,
        "campaigns": per_campaign,
    }


def run_rating_demo(
    transactions: int = TRANSACTIONS_DEFAULT,
    seed: int = DEMO_SEED,
    date: dt.date = DEMO_DATE,
    batch_size: int = BATCH_SIZE_DEFAULT,
    engine: str | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Build the ward, generate the day, rate it in batches and return the summary.

    `progress(total)` may return a callback that is told each batch's size, so
    the CLI can drive a progress bar without this module knowing about it.
    """
    from engine import rating

    members, camps = ward(seed, date)
    events = day(members, transactions, seed, date)
    state = opening_state(camps, events, seed, date)
    opening_spend = dict(state.spend)
    catalog = build_catalog(members, camps)
    on_batch = progress(len(events)) if progress else None
    started = time.perf_counter()
    outcomes = rate_day(catalog, events, state, batch_size, engine, on_batch)
    elapsed_s = time.perf_counter() - started
    summary = summarize(camps, outcomes, opening_spend, state)
    summary.update(
        engine=engine or rating.ENGINE,
        seed=seed,
        date=date.isoformat(),
        merchants=len(members),
        wallets=len({ev.wallet_id for _, ev in events if isinstance(ev, Purchase)}),
        events=len(events),
        seconds=elapsed_s,
        tx_per_s=int(len(events) / elapsed_s) if elapsed_s > 0 else 0,
    )
    return summary


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Render a summary as the table a ward finance officer would read."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"Setagaya PAY demo day {summary['date']} (seed {summary['seed']})", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("campaign", no_wrap=True)
    for header in ("awards", "points\nawarded", "clawed\nback", "budget\nleft", "capped by\ntx/wal/budget"):
        table.add_column(header, justify="right", no_wrap=True)
    for cid, c in summary["campaigns"].items():
        left = "unlimited" if c["budget_left"] is None else f"{c['budget_left']:,}"
        hits = "/".join(f"{c['cap_hits'].get(k, 0):,}" for k in ("per_tx_cap", "wallet_cap", "budget"))
        table.add_row(cid, f"{c['awards']:,}", f"{c['points_awarded']:,}", f"{c['points_clawed_back']:,}", left, hits)
    console.print(table)
    for cid, c in summary["campaigns"].items():
        budget = "no budget" if c["budget"] is None else f"budget {c['budget']:,}"
        console.print(f"  {cid}: {c['name']} ({budget})")
    declined = ", ".join(f"{k} {v:,}" for k, v in summary["declined"].items()) or "none"
    console.print(
        f"{summary['merchants']:,} merchants, {summary['wallets']:,} wallets: "
        f"{summary['purchases_accepted']:,} purchases and {summary['refunds_accepted']:,} refunds accepted; "
        f"declined: {declined}"
    )
    console.print(
        f"points awarded {summary['points_awarded']:,}, clawed back {summary['points_clawed_back']:,}, "
        f"returned to wallets {summary['points_returned']:,}"
    )
    console.print(
        f"engine {summary['engine']}: {summary['events']:,} tx in {summary['seconds']:.2f} s "
        f"= {summary['tx_per_s']:,} tx/s"
    )
