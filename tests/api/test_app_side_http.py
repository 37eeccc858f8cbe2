"""The payment app's side (SPEC §10) over HTTP against a real server, on SQLite and PostgreSQL:
wallet history, quotes and the directory."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid

import pytest

from api import responses_app
from tests.api.conftest import Server
from tests.ward import CAMPAIGN_WINDOW, TOKYO, Ward, purchase

DEKAD = {
    "id": "C_DEKAD_APP",
    "name": "旬の還元",
    "funding_source": "ward_general",
    **CAMPAIGN_WINDOW,
    "tiers": [{"match": {"merchant_ids": ["M_CONV"]}, "rate_bp": 500}],
    "credit": {"schedule": "dekad", "delay_business_days": 1},
}


@pytest.fixture(scope="module")
def app_ward(ward: Ward) -> Ward:
    ward.server.admin_post("/v1/campaigns", DEKAD)
    return ward


def _history(ward: Ward, wallet_id: str, **params) -> dict:
    r = ward.app_client.get(f"/v1/wallets/{wallet_id}/history", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _all_pages(ward: Ward, wallet_id: str, limit: int) -> list[dict]:
    events, cursor = [], None
    while True:
        page = _history(ward, wallet_id, limit=limit, **({"cursor": cursor} if cursor else {}))
        events += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            return events


# -- wallet history ------------------------------------------------------------------


def test_history_lists_every_kind_of_event_newest_first(app_ward: Ward) -> None:
    w = "W_HIST_" + uuid.uuid4().hex[:8]
    bought = app_ward.buy("T_SHOTEN_1", w, 2000)  # C_POINTBACK 400 (immediate) and C_DAILY
    assert [e["type"] for e in _history(app_ward, w)["events"]][:1] == ["earned"], "a purchase shows at once"
    conv = app_ward.buy("T_CONV", w, 1000)  # C_DEKAD_APP: pending
    assert app_ward.grant(w, 50, "C_POINTBACK").status_code == 201
    spent = app_ward.buy("T_SHOTEN_1", w, 300, points_used=300)
    app_ward.refund("T_SHOTEN_1", spent["id"], 300)  # points returned
    app_ward.refund("T_SHOTEN_1", bought["id"], 2000)  # clawed back

    events = _history(app_ward, w, limit=100)["events"]
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences, reverse=True)
    types = [e["type"] for e in events]
    for kind in ("earned", "redeemed", "returned", "clawed_back", "granted"):
        assert kind in types, (kind, types)

    earned = {(e["transaction_id"], e["campaign_id"]): e for e in events if e["type"] == "earned"}
    pointback = earned[(bought["id"], "C_POINTBACK")]
    assert pointback["points"] == 400 and pointback["merchant_id"] == "M_SHOTEN"
    assert pointback["status"] == "clawed_back" and pointback["expires_at"]
    dekad = earned[(conv["id"], "C_DEKAD_APP")]
    assert dekad["status"] == "pending" and dekad["points"] == 50
    assert (
        dekad["credit_at"]
        == conv["awards"][[a["campaign_id"] for a in conv["awards"]].index("C_DEKAD_APP")]["credit_at"]
    )
    redeemed = next(e for e in events if e["type"] == "redeemed")
    assert redeemed["transaction_id"] == spent["id"] and redeemed["points"] == 300
    assert sum(lot["points"] for lot in redeemed["lots"]) == 300
    assert all(lot["expires_at"] for lot in redeemed["lots"])
    returned = next(e for e in events if e["type"] == "returned")
    assert returned["points"] == 300 and returned["original_id"] == spent["id"]
    clawed = [e for e in events if e["type"] == "clawed_back" and e["original_id"] == bought["id"]]
    assert sum(e["points"] for e in clawed) == sum(a["points"] for a in bought["awards"])
    granted = next(e for e in events if e["type"] == "granted")
    assert granted["points"] == 50 and granted["reason"] and granted["transaction_id"] is None


def test_history_pages_are_stable_while_new_events_arrive(app_ward: Ward) -> None:
    w = "W_PAGE_" + uuid.uuid4().hex[:8]
    for amount in (500, 600, 700, 800, 900):
        app_ward.buy("T_SHOTEN_1", w, amount)
    whole = _history(app_ward, w, limit=100)["events"]
    assert len(whole) == 10  # C_POINTBACK and C_DAILY per purchase

    first = _history(app_ward, w, limit=3)
    app_ward.buy("T_SHOTEN_1", w, 1000)  # new events while the client pages
    seen, cursor = list(first["events"]), first["next_cursor"]
    while cursor is not None:
        page = _history(app_ward, w, limit=3, cursor=cursor)
        seen += page["events"]
        cursor = page["next_cursor"]
    assert seen == whole, "every old event exactly once, none shifted by the new ones"
    newest = _history(app_ward, w, limit=100)["events"]
    assert len(newest) > len(whole) and newest[-len(whole) :] == whole
    assert _all_pages(app_ward, w, 1) == newest, "pages of one event each: the same list"
    # The page below the first posting holds nothing (it was the first page again).
    below_all = base64.urlsafe_b64encode(b"hist:0").decode().rstrip("=")
    assert _history(app_ward, w, cursor=below_all) == {"wallet_id": w, "events": [], "next_cursor": None}


def test_history_refuses_a_cursor_it_did_not_make(app_ward: Ward) -> None:
    r = app_ward.app_client.get("/v1/wallets/W1/history", params={"cursor": "bm90IG91cnM"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


# -- quotes --------------------------------------------------------------------------


def _quote(client, body: dict):
    return client.post("/v1/quotes", json=body)


def _comparable(awards: list[dict]) -> list[tuple]:
    return [(a["campaign_id"], a["campaign_version"], a["points"], a["capped_by"], a["status"]) for a in awards]


def test_a_quote_equals_the_award_and_writes_nothing(app_ward: Ward) -> None:
    server: Server = app_ward.server
    w = "W_QUOTE_" + uuid.uuid4().hex[:8]
    body = purchase("T_SHOTEN_1", w, 3300, items=[{"amount": 1100, "tags": ["ethical"]}, {"amount": 2200, "tags": []}])
    postings = server.postings()
    for client in (app_ward.app_client, app_ward.terminal("T_SHOTEN_1")):
        quoted = _quote(client, body)
        assert quoted.status_code == 200, quoted.text
    assert server.postings() == postings, "a quote writes nothing"
    posted = app_ward.post("T_SHOTEN_1", body)
    assert posted.status_code == 201, posted.text
    q, p = quoted.json(), posted.json()
    assert _comparable(q["awards"]) == _comparable(p["awards"]) and q["points_awarded"] == p["points_awarded"]
    assert [a["expires_at"] for a in q["awards"]] == [a["expires_at"] for a in p["awards"]]


def test_a_quote_shows_the_cap_that_bites_and_a_pending_credit(app_ward: Ward) -> None:
    w = "W_QCAP_" + uuid.uuid4().hex[:8]
    body = purchase("T_CONV", w, 100_000)
    q = _quote(app_ward.app_client, body).json()
    by_campaign = {a["campaign_id"]: a for a in q["awards"]}
    assert by_campaign["C_POINTBACK"]["capped_by"] == "wallet_cap" and by_campaign["C_POINTBACK"]["points"] == 5000
    assert by_campaign["C_DEKAD_APP"]["status"] == "pending"
    posted = app_ward.post("T_CONV", body).json()
    assert {a["campaign_id"]: a["credit_at"] for a in posted["awards"]}["C_DEKAD_APP"] == by_campaign["C_DEKAD_APP"][
        "credit_at"
    ]


def test_a_terminals_quote_tells_nothing_of_the_wallet(app_ward: Ward) -> None:
    """A terminal reads no wallet: its quote is rated as for a wallet without history, so a wallet
    that has earned most of its monthly cap and one never seen get the same answer; the app's
    quote applies the wallet's own earnings."""
    seen, unseen = "W_QSEEN_" + uuid.uuid4().hex[:8], "W_QNEW_" + uuid.uuid4().hex[:8]
    app_ward.buy("T_CONV", seen, 30_000)  # C_POINTBACK at 10%: 3,000 of the 5,000 a month
    terminal = app_ward.terminal("T_CONV")

    def pointback(client, wallet: str) -> tuple[int, str | None, bool]:
        answer = _quote(client, purchase("T_CONV", wallet, 30_000)).json()
        award = {a["campaign_id"]: a for a in answer["awards"]}["C_POINTBACK"]
        return award["points"], award["capped_by"], answer["wallet_caps_applied"]

    assert pointback(app_ward.app_client, seen) == (2_000, "wallet_cap", True)
    assert pointback(app_ward.app_client, unseen) == (3_000, None, True)
    assert pointback(terminal, seen) == pointback(terminal, unseen) == (3_000, None, False)


def test_quote_declines_and_scope(app_ward: Ward) -> None:
    w = "W_QDECL_" + uuid.uuid4().hex[:8]
    r = _quote(app_ward.app_client, purchase("T_SHOTEN_1", w, 1000, points_used=10))
    assert r.status_code == 422 and r.json()["code"] == "insufficient_points"
    r = _quote(app_ward.terminal("T_SHOTEN_1"), purchase("T_SHOTEN_1", w, 1000, merchant_id="M_CONV"))
    assert r.status_code == 403, r.text
    # A terminal cannot probe a wallet's balance with quotes that spend points (it reads no balance).
    r = _quote(app_ward.terminal("T_SHOTEN_1"), purchase("T_SHOTEN_1", w, 1000, points_used=10))
    assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
    assert _quote(app_ward.terminal("T_SHOTEN_1"), purchase("T_SHOTEN_1", w, 1000)).status_code == 200
    r = _quote(app_ward.app_client, purchase("T_SHOTEN_1", w, 1000, merchant_id="M_CONV"))
    assert r.status_code == 422 and r.json()["code"] == "unknown_terminal"
    r = _quote(app_ward.app_client, purchase("T_SHOTEN_1", w, 1000, merchant_id="M_NOWHERE"))
    assert r.status_code == 422 and r.json()["code"] == "unknown_merchant", r.text  # helper-85
    r = _quote(app_ward.app_client, {**purchase("T_SHOTEN_1", w, 1000), "receipt": "a.b.c"})
    assert r.status_code == 422, "a quote carries no receipt"


def test_a_quote_declines_an_occurred_at_outside_the_window_as_posting_does(app_ward: Ward) -> None:
    """An `occurred_at` too far ahead of the engine's clock or too far behind it is 422
    `occurred_at_out_of_range` for a quote as for the post itself (a quote declines as posting
    would); one inside the window is quoted."""
    w = "W_QWHEN_" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(TOKYO)
    for when in (now + dt.timedelta(hours=1), now - dt.timedelta(days=400)):
        body = purchase("T_SHOTEN_1", w, 1000, occurred_at=when.isoformat(timespec="seconds"))
        for client in (app_ward.app_client, app_ward.terminal("T_SHOTEN_1")):
            r = _quote(client, body)
            assert r.status_code == 422 and r.json()["code"] == "occurred_at_out_of_range", r.text
        posted = app_ward.post("T_SHOTEN_1", body)
        assert posted.status_code == 422 and posted.json()["code"] == "occurred_at_out_of_range", posted.text
    inside = purchase("T_SHOTEN_1", w, 1000, occurred_at=(now - dt.timedelta(days=1)).isoformat(timespec="seconds"))
    assert _quote(app_ward.app_client, inside).status_code == 200


def test_a_terminal_that_signs_signs_its_quotes(app_ward: Ward) -> None:
    """SPEC §9.2: every request of a terminal with a registered key is signed, quotes included."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from engine.http_signing import public_key_b64

    key = Ed25519PrivateKey.generate()
    with app_ward.server.client(app_ward.server.admin_key) as admin:
        r = admin.patch("/v1/terminals/T_LARGE", json={"public_key": public_key_b64(key)})
        assert r.status_code == 200, r.text
    body = json.dumps(purchase("T_LARGE", "W_QSIGNED", 1000)).encode()
    deadline = time.monotonic() + 5  # the terminal's key reaches every process within the key cache's TTL
    while (unsigned := _quote(app_ward.terminal("T_LARGE"), json.loads(body))).status_code == 200:
        assert time.monotonic() < deadline, "an unsigned quote of a signing terminal was answered"
        time.sleep(0.3)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "signature_required", unsigned.text
    signed = app_ward.send_signed("T_LARGE", key, "POST", "/v1/quotes", body)
    assert signed.status_code == 200, signed.text
    assert [a["campaign_id"] for a in signed.json()["awards"]] == ["C_LARGE_ONLY"]


# -- directory -----------------------------------------------------------------------


def _instant(offset_s: float) -> str:
    return (dt.datetime.now(TOKYO) + dt.timedelta(seconds=offset_s)).isoformat(timespec="seconds")


def _listed(client, **params) -> dict[str, dict]:
    r = client.get("/v1/directory/merchants", params=params)
    assert r.status_code == 200, r.text
    return {m["merchant_id"]: m for m in r.json()["merchants"]}


def test_a_certification_shows_only_while_valid(app_ward: Ward) -> None:
    merchant_id = "M_CERT_" + uuid.uuid4().hex[:8]
    app_ward.server.admin_post(
        "/v1/merchants",
        {
            "id": merchant_id,
            "name": "エシカル雑貨",
            "merchant_class": "small",
            "shotengai_id": "S_KYODO",
            "ward_local": True,
            "ethical_certifications": [
                {"scheme": "fair_trade", "valid_from": _instant(-86_400), "valid_until": _instant(4)},
                {"scheme": "eco_mark", "valid_from": _instant(86_400), "valid_until": _instant(2 * 86_400)},
            ],
        },
    )
    app = app_ward.app_client
    now = _listed(app, shotengai="S_KYODO")[merchant_id]
    assert [c["scheme"] for c in now["certifications"]] == ["fair_trade"], "only the one valid now"
    assert merchant_id in _listed(app, certified="true")
    assert {c["campaign_id"] for c in now["campaigns"]} >= {"C_POINTBACK", "C_DAILY"}
    time.sleep(5)
    later = _listed(app, shotengai="S_KYODO")[merchant_id]
    assert later["certifications"] == [], "an ended certification is no longer shown"
    assert merchant_id not in _listed(app, certified="true")
    assert merchant_id in _listed(app, certified="false")


def test_directory_filters_pages_and_hides_what_is_not_public(app_ward: Ward) -> None:
    app = app_ward.app_client
    assert set(_listed(app, **{"class": "large"})) == {"M_LARGE"}
    assert set(_listed(app, shotengai="S_SANCHA")) == {"M_SHOTEN"}
    ids, cursor = [], None
    while True:
        r = app.get("/v1/directory/merchants", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        ids += [m["merchant_id"] for m in r["merchants"]]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert ids == sorted(ids) and set(ids) >= {"M_SHOTEN", "M_CONV", "M_LARGE"} and len(ids) == len(set(ids))
    listed = app.get("/v1/directory/merchants").json()["merchants"][0]
    assert not {"fee_bp", "bank_account", "bank_account_masked", "version"} & set(listed)
    campaigns = app.get("/v1/directory/campaigns").json()["campaigns"]
    assert not {"funding_source", "version", "budget", "priority"} & set(campaigns[0])
    assert app.get("/v1/directory/merchants", params={"cursor": "bm9wZQ"}).status_code == 422
    # A cursor is taken only as the server spells it: not padded, nothing the decoder would drop.
    spelled = app.get("/v1/directory/merchants", params={"limit": 1}).json()["next_cursor"]
    assert app.get("/v1/directory/merchants", params={"cursor": spelled}).status_code == 200
    for cursor in (spelled + "==", "!!" + spelled, spelled + "\n", spelled + "="):
        r = app.get("/v1/directory/merchants", params={"cursor": cursor})
        assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), (cursor, r.text)
    # `certified` is true or false as JSON spells them, not 'yes', '1' or 'on'.
    for loose in ("yes", "1", "on", "t", "True", "no", "0", "off"):
        r = app.get("/v1/directory/merchants", params={"certified": loose})
        assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), (loose, r.text)


def test_directory_budget_share_is_rounded_down(app_ward: Ward) -> None:
    """C_ETHICAL: budget 8,000, 10 % of tagged items, at most 300 a purchase."""
    app = app_ward.app_client

    def share() -> int:
        listed = {c["campaign_id"]: c for c in app.get("/v1/directory/campaigns").json()["campaigns"]}
        assert listed["C_LARGE_ONLY"]["budget_remaining_percent"] is not None
        assert listed["C_DAILY"]["budget_remaining_percent"] is None
        return listed["C_ETHICAL"]["budget_remaining_percent"]

    budget = app_ward["finance"].get("/v1/campaigns/C_ETHICAL/budget").json()
    before = share()
    assert before == (budget["budget"] - budget["issued"] + budget.get("clawed_back", 0)) * 100 // 8000 or before <= 100
    w = "W_BUDGET_" + uuid.uuid4().hex[:8]
    app_ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", w, 3000, items=[{"amount": 3000, "tags": ["ethical"]}]))
    meter = app_ward["finance"].get("/v1/campaigns/C_ETHICAL/budget").json()
    assert share() == meter["remaining"] * 100 // 8000


def test_directory_is_cacheable(app_ward: Ward) -> None:
    app = app_ward.app_client
    for path in ("/v1/directory/merchants", "/v1/directory/campaigns"):
        first = app.get(path)
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"].startswith("private, max-age=")
        again = app.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.headers["ETag"] == etag and not again.content
        assert app.get(path, headers={"If-None-Match": '"stale"'}).status_code == 200
    before = app.get("/v1/directory/merchants").headers["ETag"]
    app_ward.server.admin_post(
        "/v1/merchants",
        {
            "id": "M_NEW_" + uuid.uuid4().hex[:6],
            "name": "新店",
            "merchant_class": "small",
            "ethical_certifications": [],
        },
    )
    assert app.get("/v1/directory/merchants", headers={"If-None-Match": before}).status_code == 200


def test_directory_needs_an_app_key_unless_published(app_ward: Ward, backend, start_server) -> None:
    server: Server = app_ward.server
    with server.client(None) as anonymous:
        assert anonymous.get("/v1/directory/campaigns").status_code == 401
    assert app_ward["finance"].get("/v1/directory/campaigns").status_code == 403
    published = start_server(backend, env={"SETAPAY_DIRECTORY_PUBLIC": "1"})
    published.admin_post("/v1/merchants", {"id": "M_PUB", "name": "公開", "merchant_class": "small"})
    with published.client(None) as anonymous:
        r = anonymous.get("/v1/directory/merchants")
        assert r.status_code == 200 and [m["merchant_id"] for m in r.json()["merchants"]] == ["M_PUB"]
        assert r.headers["Cache-Control"].startswith("public, max-age=")
        assert anonymous.get("/v1/directory/campaigns").status_code == 200


def test_answers_validate_against_their_documented_models(app_ward: Ward) -> None:
    """The typed 2xx models of the OpenAPI document (api/responses_app.py) describe real answers."""
    w = "W_MODELS_" + uuid.uuid4().hex[:8]
    bought = app_ward.buy("T_SHOTEN_1", w, 2000)
    app_ward.buy("T_CONV", w, 1000)
    app_ward.buy("T_SHOTEN_1", w, 300, points_used=300)
    app_ward.refund("T_SHOTEN_1", bought["id"], 2000)
    assert app_ward.grant(w, 5, "C_POINTBACK").status_code == 201
    history = _history(app_ward, w)
    assert {e["type"] for e in history["events"]} >= {"earned", "redeemed", "clawed_back", "granted"}
    responses_app.WalletHistory.model_validate(history)
    quote = _quote(app_ward.app_client, purchase("T_CONV", w, 1000))
    responses_app.Quote.model_validate(quote.json())
    responses_app.DirectoryMerchants.model_validate(app_ward.app_client.get("/v1/directory/merchants").json())
    responses_app.DirectoryCampaigns.model_validate(app_ward.app_client.get("/v1/directory/campaigns").json())


# -- last: crediting and expiry runs move every wallet's points ------------------------


def test_history_shows_credits_and_expiries_of_the_lifecycle_runs(app_ward: Ward) -> None:
    server: Server = app_ward.server
    w = "W_LIFE_" + uuid.uuid4().hex[:8]
    conv = app_ward.buy("T_CONV", w, 1000)
    dekad = next(a for a in conv["awards"] if a["campaign_id"] == "C_DEKAD_APP")
    # Pending: no lot yet, and the history says when its points will expire, as the answer did.
    pending = next(e for e in _history(app_ward, w)["events"] if e["campaign_id"] == "C_DEKAD_APP")
    assert (pending["type"], pending["status"]) == ("earned", "pending")
    assert pending["expires_at"] == dekad["expires_at"] is not None
    done = server.cli("credit", "--as-of", dekad["credit_at"], at=dekad["credit_at"])
    assert done.returncode == 0, done.stderr
    events = _history(app_ward, w)["events"]
    credited = next(e for e in events if e["type"] == "credited")
    assert (credited["campaign_id"], credited["points"], credited["transaction_id"]) == (
        "C_DEKAD_APP",
        dekad["points"],
        conv["id"],
    )
    assert credited["expires_at"] == dekad["expires_at"]
    earned = next(e for e in events if e["type"] == "earned" and e["campaign_id"] == "C_DEKAD_APP")
    assert earned["status"] == "credited", "the earned event shows the award's status now"
    done = server.cli("expire", "--as-of", "2035-01-01T00:00:00+09:00", at="2035-01-01T00:00:00+09:00")
    assert done.returncode == 0, done.stderr
    events = _history(app_ward, w)["events"]
    expired = [e for e in events if e["type"] == "expired"]
    assert sum(e["points"] for e in expired) == sum(a["points"] for a in conv["awards"])
    assert {e["campaign_id"] for e in expired} == {a["campaign_id"] for a in conv["awards"]}
    assert events[0]["type"] == "expired" and all(e["expires_at"] for e in expired)
