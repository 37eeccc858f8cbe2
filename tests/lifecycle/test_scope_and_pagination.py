"""What merchants, terminals and finance may read, cursor pagination while new
transactions arrive, reward totals against what was posted, and grants — all
over HTTP against a real `setapay serve`, on SQLite and PostgreSQL (issue 5).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import uuid
from collections import defaultdict

import pytest

from tests.lifecycle.support import Books, campaign, merchant
from tests.server import ServerProcess
from tests.tokyo import JST
from tests.ward import Plan, Ward

MERCHANTS = {"M_SANCHA": ["T_SANCHA"], "M_KYODO": ["T_KYODO"]}
BUDGET_GRANTS = 1000
CAMPAIGNS = [
    campaign("C_NOW", tiers=[{"match": {}, "rate_bp": 1000}], priority=10),
    campaign(
        "C_DEKAD",
        tiers=[{"match": {}, "rate_bp": 300}],
        credit={"schedule": "dekad", "delay_business_days": 5},
        priority=5,
    ),
    campaign("C_ENERGY", tiers=[{"match": {"merchant_ids": ["M_NOBODY"]}, "rate_bp": 100}], budget=BUDGET_GRANTS),
    # Funded by a merchant's payout (on nobody's purchases here): not a campaign to grant against.
    campaign(
        "C_SHOP",
        tiers=[{"match": {"merchant_ids": ["M_NOBODY"]}, "rate_bp": 100}],
        funding_source="merchant:M_SANCHA",
    ),
]


def _merchant_record(merchant_id: str) -> dict:
    return merchant(merchant_id).model_dump(mode="json", exclude={"bank_account"})


# The ward: two merchants of one 商店街 with a terminal each, and the campaigns above.
PLAN = Plan(
    merchants=[_merchant_record(m) for m in MERCHANTS],
    campaigns=[c.model_dump(mode="json") for c in CAMPAIGNS],
    terminals={t: m for m, ts in MERCHANTS.items() for t in ts},
)


@pytest.fixture
def ward(database_url, tmp_path):
    """The ward behind a real server on this test's database (keys made by the CLI in this process)."""
    with ServerProcess(database_url, tmp_path, cli_in_process=True) as server:
        w = Ward(server, PLAN)
        try:
            yield w
        finally:
            w.close()


@pytest.fixture
def books(ward, database_url):
    """The same database read in-process: wallets, the ledger check, a crediting run."""
    b = Books(database_url, migrate=False)
    try:
        yield b
    finally:
        b.close()


def grant(ward: Ward, wallet: str, points: int, key: str | None = None, client: str = "finance", campaign_id=None):
    """A grant against C_ENERGY (the campaign no purchase earns from) unless another is named."""
    return ward.grant(wallet, points, campaign_id or "C_ENERGY", key=key, client=client)


def forbidden(r) -> bool:
    return (
        r.status_code == 403
        and r.json()["code"] == "forbidden"
        and r.headers["content-type"].startswith("application/problem+json")
    )


# -- scope ----------------------------------------------------------------------------


def test_merchant_keys_read_only_their_own_merchant_and_finance_reads_all(ward, books):
    sancha = ward.buy("T_SANCHA", "W_SCOPE", 2000)
    kyodo = ward.buy("T_KYODO", "W_SCOPE", 3000)
    for own, other in (("M_SANCHA", "M_KYODO"), ("M_KYODO", "M_SANCHA")):
        client = ward[f"merchant:{own}"]
        assert forbidden(client.get(f"/v1/merchants/{other}/rewards")), other
        assert forbidden(client.get(f"/v1/merchants/{other}/transactions"))
        assert forbidden(client.get(f"/v1/merchants/{other}/transactions", params={"limit": 3}))
        assert client.get(f"/v1/merchants/{own}/rewards").status_code == 200
        assert client.get(f"/v1/merchants/{own}/transactions").status_code == 200
    # A merchant reads one transaction of its own, not another merchant's.
    assert ward["merchant:M_SANCHA"].get(f"/v1/transactions/{sancha['id']}").status_code == 200
    assert forbidden(ward["merchant:M_SANCHA"].get(f"/v1/transactions/{kyodo['id']}"))

    # Terminals post; reward status is for merchants and finance, wallets for the payment app and finance.
    for path in ("/v1/merchants/M_SANCHA/rewards", "/v1/merchants/M_SANCHA/transactions", "/v1/wallets/W_SCOPE/points"):
        assert forbidden(ward["terminal:T_SANCHA"].get(path)), path
    assert ward["app"].get("/v1/wallets/W_SCOPE/points").status_code == 200
    assert forbidden(ward["merchant:M_SANCHA"].get("/v1/wallets/W_SCOPE/points"))
    # Only finance grants.
    for name in ("merchant:M_SANCHA", "terminal:T_SANCHA"):
        assert forbidden(grant(ward, "W_SCOPE", 10, client=name)), name
    assert books.wallet("W_SCOPE")["available"] == 500  # 10 % of 5000, nothing granted

    finance = ward["finance"]
    for merchant_id, posted in (("M_SANCHA", sancha), ("M_KYODO", kyodo)):
        rewards = finance.get(f"/v1/merchants/{merchant_id}/rewards")
        assert rewards.status_code == 200 and rewards.json()["transactions"] == 1
        page = finance.get(f"/v1/merchants/{merchant_id}/transactions")
        assert page.status_code == 200
        assert [t["id"] for t in page.json()["transactions"]] == [posted["id"]]
        # The merchant's own view is the same as finance's.
        own = ward[f"merchant:{merchant_id}"]
        assert own.get(f"/v1/merchants/{merchant_id}/rewards").json() == rewards.json()
    # No key, or an unknown one: 401.
    with ward.server.client("sp_merchant_nope") as stranger:
        assert stranger.get("/v1/merchants/M_SANCHA/rewards").status_code == 401
    assert books.check()["ok"]


# -- pagination -------------------------------------------------------------------------


def test_pagination_returns_every_transaction_exactly_once_while_new_ones_arrive(ward):
    client = ward["merchant:M_SANCHA"]
    posted = [ward.buy("T_SANCHA", f"W_PAGE_{i % 3}", 1000 + i)["id"] for i in range(7)]
    posted.append(ward.refund("T_SANCHA", posted[0], 500)["id"])
    other = [ward.buy("T_KYODO", "W_PAGE_0", 700)["id"]]
    seen: list[str] = []
    sequences: list[int] = []
    cursor, pages = None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        r = client.get("/v1/merchants/M_SANCHA/transactions", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["transactions"]) <= 3
        assert all(t["merchant_id"] == "M_SANCHA" for t in page["transactions"])
        seen += [t["id"] for t in page["transactions"]]
        sequences += [t["sequence"] for t in page["transactions"]]
        pages += 1
        if pages <= 4:
            # New transactions arrive between page requests, at both merchants.
            posted.append(ward.buy("T_SANCHA", "W_PAGE_NEW", 900 + pages)["id"])
            posted.append(ward.refund("T_SANCHA", posted[1], 100)["id"])
            other.append(ward.buy("T_KYODO", "W_PAGE_NEW", 800)["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 50, "pagination does not end"
    assert len(seen) == len(set(seen)), f"duplicated across pages: {[x for x in seen if seen.count(x) > 1]}"
    assert set(seen) == set(posted), (set(posted) - set(seen), set(seen) - set(posted))
    assert sequences == sorted(sequences)
    assert not set(seen) & set(other)
    assert pages >= len(posted) // 3
    # Finance pages the same way and sees the same transactions.
    finance_seen, cursor = [], None
    while True:
        page = (
            ward["finance"]
            .get("/v1/merchants/M_SANCHA/transactions", params={"limit": 3} | ({"cursor": cursor} if cursor else {}))
            .json()
        )
        finance_seen += [t["id"] for t in page["transactions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert finance_seen == seen


INVALID_CURSORS = [
    "not a cursor",
    "%%%",
    base64.urlsafe_b64encode(b"seq:abc").decode().rstrip("="),
    base64.urlsafe_b64encode(b"offset:3").decode().rstrip("="),
    base64.urlsafe_b64encode(b"seq:-1").decode().rstrip("="),
    "A" * 65,
]


def test_an_invalid_cursor_is_a_422(ward):
    ward.buy("T_SANCHA", "W_CURSOR", 1000)
    for cursor in INVALID_CURSORS:
        for name in ("merchant:M_SANCHA", "finance"):
            r = ward[name].get("/v1/merchants/M_SANCHA/transactions", params={"cursor": cursor, "limit": 3})
            assert r.status_code == 422, (cursor, r.status_code, r.text)
            assert r.json()["code"] == "invalid_request", (cursor, r.text)
    r = ward["finance"].get("/v1/merchants/M_SANCHA/transactions", params={"limit": 0})
    assert r.status_code == 422


# -- reward totals ------------------------------------------------------------------------


def expected_rewards(purchases: list[dict], refunds: list[dict], credited: bool) -> dict:
    campaigns: dict[str, dict[str, int]] = defaultdict(
        lambda: {"awarded": 0, "pending": 0, "credited": 0, "clawed_back": 0}
    )
    clawed: dict[tuple[str, str], int] = defaultdict(int)
    for r in refunds:
        for c in r["clawbacks"]:
            clawed[(r["original_id"], c["campaign_id"])] += c["points"]
    for p in purchases:
        for a in p["awards"]:
            c = campaigns[a["campaign_id"]]
            back = clawed[(p["id"], a["campaign_id"])]
            c["awarded"] += a["points"]
            c["clawed_back"] += back
            left = a["points"] - back
            if a["status"] == "pending" and not credited:
                c["pending"] += left
            else:
                c["credited"] += left
    return {
        "transactions": len(purchases) + len(refunds),
        "purchases": len(purchases),
        "refunds": len(refunds),
        "coin_sales": sum(p["amount"] - p["points_used"] for p in purchases),
        "coin_refunded": sum(r["coin_refunded"] for r in refunds),
        "points_redeemed": sum(p["points_used"] for p in purchases),
        "points_returned": sum(r["points_returned"] for r in refunds),
        "campaigns": [{"campaign_id": c, **v} for c, v in sorted(campaigns.items())],
        "points": {k: sum(v[k] for v in campaigns.values()) for k in ("awarded", "pending", "credited", "clawed_back")},
    }


def test_reward_totals_equal_what_was_posted(ward, books):
    assert grant(ward, "W_R1", 600).status_code == 201  # points to redeem from the start
    assert grant(ward, "W_R2", 300).status_code == 201
    purchases = {"M_SANCHA": [], "M_KYODO": []}
    refunds = {"M_SANCHA": [], "M_KYODO": []}
    amounts = itertools.cycle([1200, 3456, 780, 10_000, 99, 5005])
    for i in range(12):
        terminal = "T_SANCHA" if i % 3 else "T_KYODO"
        wallet = "W_R1" if i % 2 else "W_R2"
        available = books.wallet(wallet)["available"]
        amount = next(amounts)
        points_used = min(amount, available, 150 * (i % 4))
        purchases[ward.merchant_of[terminal]].append(ward.buy(terminal, wallet, amount, points_used))
    # A declined redemption and a declined refund are not transactions of the merchant.
    ward.buy("T_SANCHA", "W_NOBODY", 500, points_used=1, expect=422)
    first, second, third = purchases["M_SANCHA"][:3]
    refunds["M_SANCHA"].append(ward.refund("T_SANCHA", first["id"], first["amount"] // 3))
    refunds["M_SANCHA"].append(ward.refund("T_SANCHA", first["id"], first["amount"] - first["amount"] // 3))
    refunds["M_SANCHA"].append(ward.refund("T_SANCHA", second["id"], second["amount"]))
    ward.refund("T_SANCHA", third["id"], third["amount"] + 1, expect=422)
    k = purchases["M_KYODO"][0]
    refunds["M_KYODO"].append(ward.refund("T_KYODO", k["id"], max(1, k["amount"] // 2)))
    assert any(p["points_used"] for p in purchases["M_SANCHA"]), "no redemption at the merchant"
    assert any(r["points_returned"] for r in refunds["M_SANCHA"]), "no refund returned points"

    def check(credited: bool) -> None:
        for merchant_id in MERCHANTS:
            want = expected_rewards(purchases[merchant_id], refunds[merchant_id], credited)
            for client in (ward["finance"], ward[f"merchant:{merchant_id}"]):
                got = client.get(f"/v1/merchants/{merchant_id}/rewards")
                assert got.status_code == 200, got.text
                body = got.json()
                assert {k: body[k] for k in want} == want, (merchant_id, credited)

    check(credited=False)
    pending = sum(
        c["pending"] for m in MERCHANTS for c in expected_rewards(purchases[m], refunds[m], False)["campaigns"]
    )
    assert pending > 0, "nothing pending: the dekad campaign did not award"

    # The transactions list shows each award's status and what was clawed back.
    listed = {
        t["id"]: t
        for t in ward["finance"]
        .get("/v1/merchants/M_SANCHA/transactions", params={"limit": 500})
        .json()["transactions"]
    }
    assert set(listed) == {p["id"] for p in purchases["M_SANCHA"]} | {r["id"] for r in refunds["M_SANCHA"]}
    second_awards = {a["campaign_id"]: a for a in listed[second["id"]]["awards"]}
    assert all(a["status"] == "clawed_back" for a in second_awards.values()), second_awards
    assert listed[first["id"]]["refunded_amount"] == first["amount"]

    # A window outside every transaction counts nothing.
    empty = ward["finance"].get(
        "/v1/merchants/M_SANCHA/rewards",
        params={"from": "2030-01-01T00:00:00+09:00", "to": "2030-02-01T00:00:00+09:00"},
    )
    assert empty.status_code == 200 and empty.json()["transactions"] == 0 and empty.json()["campaigns"] == []

    # After the crediting run the pending points are credited (those not clawed back).
    done = books.credit(dt.datetime.now(JST) + dt.timedelta(days=60))
    assert done["points"] == pending
    check(credited=True)
    assert books.check()["ok"]


# -- grants -------------------------------------------------------------------------------


def test_grants_are_idempotent_and_obey_the_budget_exactly(ward, books):
    key = uuid.uuid4().hex
    first = grant(ward, "W_G", 400, key=key)
    assert first.status_code == 201, first.text
    again = grant(ward, "W_G", 400, key=key)
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    reused = grant(ward, "W_G", 401, key=key)
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert books.wallet("W_G")["available"] == 400

    over = grant(ward, "W_G2", BUDGET_GRANTS - 400 + 1)
    assert (over.status_code, over.json()["code"]) == (422, "budget_exceeded")
    exact = grant(ward, "W_G2", BUDGET_GRANTS - 400)
    assert exact.status_code == 201, exact.text
    assert (grant(ward, "W_G2", 1).json()["code"]) == "budget_exceeded"
    assert grant(ward, "W_G", 10, campaign_id="C_UNKNOWN").status_code == 404

    # Against a merchant-funded campaign: refused, not remembered, nothing granted; the same key
    # is free for the grant once the campaign is the ward's.
    shop_key = uuid.uuid4().hex
    refused = grant(ward, "W_G3", 50, key=shop_key, campaign_id="C_SHOP")
    assert (refused.status_code, refused.json()["code"]) == (422, "campaign_merchant_funded"), refused.text
    assert books.wallet("W_G3")["available"] == 0
    patched = ward["admin"].patch("/v1/campaigns/C_SHOP", json={"funding_source": "ward_general"})
    assert patched.status_code == 200, patched.text
    granted = grant(ward, "W_G3", 50, key=shop_key, campaign_id="C_SHOP")
    assert granted.status_code == 201 and granted.headers.get("idempotent-replayed") is None, granted.text

    points = ward["app"].get("/v1/wallets/W_G2/points").json()
    assert (points["available"], points["debt"], points["pending"]) == (BUDGET_GRANTS - 400, 0, 0)
    assert points["expiring"] == [{"expires_at": exact.json()["expires_at"], "points": BUDGET_GRANTS - 400}]
    report = books.check()
    assert report["campaigns"]["C_ENERGY"]["issued"] == BUDGET_GRANTS
