"""The pages under /ui/ in a real browser (issue 13): Debian's Chromium driven by Playwright,
against a real `setapay serve` process holding the small ward (tests/ward.py).

Every page is opened signed in as a merchant or as ward finance, its figures are checked against
the JSON API's answer for the same key, axe-core (tests/ui/vendor/axe.min.js, from the npm
registry) finds no serious or critical violation, it renders at 375 px and 1280 px wide without
horizontal scrolling, its English version shows no Japanese outside data (elements marked
`translate="no"` or in another language), and a screenshot of each is saved under
test-artifacts/ui/. One server and one browser serve the whole module.

Skipped, saying why, where /usr/bin/chromium or Playwright is missing (CI installs both: .ci/run,
pyproject's `test` extra), and in the suite's second run under SETAPAY_PURE_PYTHON=1: the pages
read what the engine stored and do not depend on the rating engine.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from engine.settlement.signing import canonical_json
from engine.timeutil import TOKYO
from tests.server import ServerProcess, run_cli
from tests.ward import Ward

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
WIDTHS = (375, 1280)
JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")
MERCHANT_A, MERCHANT_B = "M_SHOTEN", "M_CONV"

if not CHROMIUM.exists():
    pytestmark = pytest.mark.skip(reason="no /usr/bin/chromium: apt-get install chromium fonts-noto-cjk (.ci/run does)")
elif os.environ.get("SETAPAY_PURE_PYTHON") == "1":
    pytestmark = pytest.mark.skip(reason="the pages do not depend on the rating engine: run once, with the default")

playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ward]:
    tmp = tmp_path_factory.mktemp("ui")
    with ServerProcess(f"sqlite+pysqlite:///{tmp}/ui.db", tmp, name="ui", cli_in_process=True) as server:
        w = Ward(server)
        try:
            bought = w.buy("T_SHOTEN_1", "W_UI_1", 1800)
            w.buy("T_SHOTEN_2", "W_UI_2", 640)
            w.refund("T_SHOTEN_1", bought["id"], 300)
            w.buy("T_CONV", "W_UI_1", 2500)
            yield w
        finally:
            w.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def _sign_in(browser, ward: Ward, key: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP")
    page = context.new_page()
    page.goto(ward.server.base_url + "/ui/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return context, page


def _with_lang(path: str, language: str) -> str:
    return path + ("&" if "?" in path else "?") + f"lang={language}"


def _visible_text(page) -> str:
    """The page's visible text, less data (`translate="no"`) and text marked in another language."""
    return page.evaluate(
        """() => {
        const skip = el => el.closest('[translate="no"]') ||
            (el.closest('[lang]') && el.closest('[lang]') !== document.documentElement);
        const parts = [];
        const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
            const el = n.parentElement;
            if (!el || skip(el) || !el.checkVisibility()) continue;
            parts.push(n.textContent);
        }
        parts.push(document.title);
        return parts.join(' ');
    }"""
    )


def _axe(page) -> list[str]:
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _check_page(page, base_url: str, path: str, name: str) -> None:
    """Open `path` (Japanese): status 200, axe clean, no horizontal scroll at each width, a
    screenshot of each; then in English: no Japanese left, axe clean; then Japanese again."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    response = page.goto(base_url + _with_lang(path, "ja"))
    assert response is not None and response.status == 200, (path, response and response.status)
    assert page.evaluate("document.documentElement.lang") == "ja"
    assert "<" not in page.title() and len(page.title()) < 80, f"{path}: the title is {page.title()!r}"
    assert JAPANESE.search(_visible_text(page)), f"{path}: no Japanese on the Japanese page"
    problems = _axe(page)
    assert not problems, f"{path}: axe-core found serious or critical violations:\n" + "\n".join(problems)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls horizontally by {overflow} px at {width} px wide"
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(base_url + _with_lang(path, "en"))
    assert page.evaluate("document.documentElement.lang") == "en"
    left = JAPANESE.findall(_visible_text(page))
    assert not left, f"{path} in English still shows Japanese: {''.join(left)!r}"
    page.screenshot(path=str(ARTIFACTS / f"{name}-en-1280.png"), full_page=True)
    problems = _axe(page)
    assert not problems, f"{path} (English): axe-core found serious or critical violations:\n" + "\n".join(problems)
    page.goto(base_url + _with_lang(path, "ja"))


def _field(page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def _yen(n: int) -> str:
    return f"-¥{-n:,}" if n < 0 else f"¥{n:,}"


def _api(ward: Ward, key: str, path: str):
    with ward.server.client(key) as c:
        answer = c.get(path)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_merchant_pages_show_what_the_api_answers(ward: Ward, browser) -> None:
    key = ward.key("merchant", MERCHANT_A)
    context, page = _sign_in(browser, ward, key)
    base = ward.server.base_url
    try:
        assert page.url == f"{base}/ui/merchants/{MERCHANT_A}"
        assert key not in page.content(), "the key is shown after sign-in"
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["setapay_ui_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["expires"] > 0
        assert key not in session["value"]

        _check_page(page, base, f"/ui/merchants/{MERCHANT_A}", "merchant-home")
        for window in ("today", "month"):
            cards = page.locator(f"[data-window={window}]")
            frm, to = cards.get_attribute("data-from"), cards.get_attribute("data-to")
            api = _api(ward, key, f"/v1/merchants/{MERCHANT_A}/rewards?from={quote(frm)}&to={quote(to)}")
            assert api["purchases"] == 2 and api["coin_sales"] > 0, api  # the figures are not all zero
            assert _field(page, f'[data-field="{window}.coin_sales"]') == _yen(api["coin_sales"])
            assert _field(page, f'[data-field="{window}.purchases"]') == f"{api['purchases']:,}"
            assert _field(page, f'[data-field="{window}.points_redeemed"]') == f"{api['points_redeemed']:,}"
            assert _field(page, f'[data-field="{window}.points.awarded"]') == f"{api['points']['awarded']:,}"
            assert api["campaigns"], api
            for c in api["campaigns"]:
                for status in ("pending", "credited", "clawed_back"):
                    shown = _field(page, f'[data-field="{window}.{c["campaign_id"]}.{status}"]')
                    assert shown == f"{c[status]:,}", (window, c, status, shown)

        _check_page(page, base, f"/ui/merchants/{MERCHANT_A}/transactions", "merchant-transactions")
        api = _api(ward, key, f"/v1/merchants/{MERCHANT_A}/transactions?limit=25")
        shown = page.locator("[data-transaction]").evaluate_all("rows => rows.map(r => r.dataset.transaction)")
        assert shown == [t["id"] for t in api["transactions"]] and len(shown) == 3
        page.fill("#until", "2026-01-01")  # before any transaction of the ward
        page.click("form[action$='/transactions'] button[type=submit]")
        page.wait_for_url(re.compile(r".*until=2026-01-01.*"))
        assert page.locator("[data-transaction]").count() == 0
        bad = page.goto(f"{base}/ui/merchants/{MERCHANT_A}/transactions?cursor=nonsense")
        assert bad is not None and bad.status == 422

        _check_page(page, base, f"/ui/merchants/{MERCHANT_A}/statements", "merchant-statements")

        other = page.goto(f"{base}/ui/merchants/{MERCHANT_B}")
        assert other is not None and other.status == 403
        assert MERCHANT_B not in _visible_text(page)
        page.screenshot(path=str(ARTIFACTS / "merchant-forbidden-1280.png"), full_page=True)
        finance_page = page.goto(f"{base}/ui/campaigns")
        assert finance_page is not None and finance_page.status == 403
    finally:
        context.close()


def test_finance_pages_show_what_the_api_answers(ward: Ward, browser) -> None:
    key = ward.finance_key
    context, page = _sign_in(browser, ward, key)
    base = ward.server.base_url
    try:
        assert page.url == f"{base}/ui/campaigns"
        _check_page(page, base, "/ui/campaigns", "finance-campaigns")
        campaigns = _api(ward, key, "/v1/campaigns")
        assert len(campaigns) == page.locator("[data-campaign]").count() == 4
        for c in campaigns:
            budget = _api(ward, key, f"/v1/campaigns/{c['id']}/budget")
            row = page.locator(f'[data-campaign="{c["id"]}"]')
            assert row.locator('[data-field="issued"]').inner_text() == f"{budget['issued']:,}"
            assert row.locator('[data-field="clawed_back"]').inner_text() == f"{budget['clawed_back']:,}"
            if budget["remaining"] is not None:
                assert row.locator('[data-field="remaining"]').inner_text() == f"{budget['remaining']:,}"

        _check_page(page, base, "/ui/campaigns/C_POINTBACK", "finance-campaign")
        budget = _api(ward, key, "/v1/campaigns/C_POINTBACK/budget")
        assert budget["issued"] > 0, budget
        assert _field(page, '[data-field="issued"]') == f"{budget['issued']:,}"
        assert _field(page, '[data-field="clawed_back"]') == f"{budget['clawed_back']:,}"
        assert page.locator("svg rect").count() >= 1, "the burn chart has no bar"
        ward.buy("T_SHOTEN_1", "W_UI_3", 5000)  # a terminal posts: the open page follows within its refresh
        grown = _api(ward, key, "/v1/campaigns/C_POINTBACK/budget")["issued"]
        assert grown > budget["issued"]
        shown_issued = "n => document.querySelector('[data-field=issued]').textContent.trim() === n"
        page.wait_for_function(shown_issued, arg=f"{grown:,}", timeout=30_000)

        _check_page(page, base, "/ui/settlement-runs", "finance-settlement-runs")
        page.click("form[action='/ui/settlement-runs'] button[type=submit]")
        page.wait_for_url(re.compile(r".*/ui/settlement-runs/st_.*"))
        run_id = page.url.rsplit("/", 1)[1]
        run = _api(ward, key, f"/v1/settlement-runs/{run_id}")
        shown = page.locator("[data-merchant]").evaluate_all("rows => rows.map(r => r.dataset.merchant)")
        assert shown == [p["merchant_id"] for p in run["payouts"]]
        for p in run["payouts"]:
            cell = page.locator(f'[data-merchant="{p["merchant_id"]}"] [data-field="net_payout"]')
            assert cell.inner_text() == _yen(p["net_payout"])
        _check_page(page, base, f"/ui/settlement-runs/{run_id}", "finance-settlement-run")
        assert _field(page, '[data-field="verified"]') == "署名を確認済み"
        with ward.server.client(key) as api_client:
            for download in ("statement.csv", "zengin"):
                from_api = api_client.get(f"/v1/settlement-runs/{run_id}/{download}")
                from_page = context.request.get(f"{base}/ui/settlement-runs/{run_id}/{download}")
                assert from_page.status == from_api.status_code
                if from_api.status_code == 200:
                    assert from_page.body() == from_api.content
        signed = context.request.get(f"{base}/ui/settlement-runs/{run_id}/statement.json").json()
        assert signed == run["statement"]

        _check_page(page, base, "/ui/campaigns/C_POINTBACK/simulate", "finance-simulate")
        page.fill("#tier_0", "4000")  # twice the small shops' rate
        page.click("form[action$='/simulate'] button[type=submit]")
        page.wait_for_selector('[data-field="draft.points_net"]')
        frm, to = page.input_value("#from"), page.input_value("#to")
        live = _api(ward, key, "/v1/campaigns/C_POINTBACK")
        draft = {k: v for k, v in live.items() if k != "version"}
        draft["tiers"] = [{**draft["tiers"][0], "rate_bp": 4000}, *draft["tiers"][1:]]
        window = {"from": f"{frm}T00:00:00+09:00", "to": f"{to}T00:00:00+09:00"}
        with ward.server.client(key) as api_client:
            answer = api_client.post("/v1/campaigns/C_POINTBACK/simulate", json={"campaign": draft, **window})
        assert answer.status_code == 200, answer.text
        simulated = answer.json()["by_campaign"]["C_POINTBACK"]
        assert simulated["points_net"] > budget["issued"] - budget["clawed_back"] > 0  # the draft pays more
        assert _field(page, '[data-field="draft.points_net"]') == f"{simulated['points_net']:,}"
        assert _field(page, '[data-field="draft.awards"]') == f"{simulated['awards']:,}"
        assert page.locator("svg polyline").count() == 2
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "finance-simulate-result-1280.png"), full_page=True)

        _check_page(page, base, "/ui/reconciliation", "finance-reconciliation")
        with page.expect_response(lambda r: "/ui/reconciliation?run=1" in r.url) as streamed:
            page.click("form[action='/ui/reconciliation'] button[type=submit]")
        assert "content-length" not in streamed.value.headers, "the reconciliation page is not streamed"
        page.wait_for_selector("[data-check]")
        steps = page.locator('[data-field="progress"] .step')
        assert steps.count() >= 2, "no progress line before the results"  # 0 of N, then each 5%
        shown = page.locator('[data-field="progress"] .step:visible')
        assert shown.count() == 1, "every progress line but the last is hidden"
        done, total = shown.get_attribute("data-done"), shown.get_attribute("data-total")
        assert done == total and int(total or 0) >= 5, (done, total)  # every payment of the ward re-rated
        bar = shown.locator("progress")
        assert bar.get_attribute("value") == bar.get_attribute("max") == total
        n = f"{int(total):,}"
        assert _field(page, '[data-field="progress"] .step:last-child span') == f"決済の再計算：{n}件中{n}件"
        report = _api(ward, key, "/v1/reconciliation")
        for name, check in report["checks"].items():
            cell = page.locator(f'[data-check="{name}"] td:nth-child(2)').inner_text()
            assert cell == ("合格" if check["pass"] else "不合格"), (name, check, cell)
        _check_page(page, base, "/ui/reconciliation?run=1", "finance-reconciliation-run")

        _check_page(page, base, "/ui/audit", "finance-audit")
        entries = _api(ward, key, "/v1/audit?limit=25")["entries"]
        shown = page.locator("[data-sequence]").evaluate_all("rows => rows.map(r => Number(r.dataset.sequence))")
        assert shown == [e["sequence"] for e in entries] and shown, "the audit page lists what GET /v1/audit does"

        _check_page(page, base, "/ui/grants", "finance-grants")
        before = _api(ward, key, "/v1/wallets/W_UI_1/points")
        page.fill("#wallet_id", "W_UI_1")
        page.select_option("#campaign_id", "C_POINTBACK")
        page.fill("#points", "25")
        page.fill("#reason", "browser test")
        with page.expect_response(lambda r: r.url.endswith("/ui/grants") and r.request.method == "POST") as sent:
            page.click("form[action='/ui/grants'] button[type=submit]")
        assert sent.value.status == 201
        assert _field(page, '[data-field="granted"]') == "25"
        after = _api(ward, key, "/v1/wallets/W_UI_1/points")
        assert after["available"] + after["pending"] == before["available"] + before["pending"] + 25
    finally:
        context.close()


ACCOUNT = {
    "bank_code": "0159",
    "branch_code": "101",
    "account_type": "ordinary",
    "account_number": "7654321",
    "holder_kana": "ｾﾀｶﾞﾔﾔｵﾔ",
}


def _settled_this_month(ward: Ward, out: Path) -> str:
    """The month of the ward's payments settled by `setapay settle` on a clock 40 days ahead (the
    server's own clock has not closed it), after M_SHOTEN got a bank account; the run's id."""
    confirmer = ward.finance_key  # made before the change: a confirming key must predate it
    with ward.server.client(ward.server.admin_key) as c:
        changed = c.patch(f"/v1/merchants/{MERCHANT_A}", json={"bank_account": ACCOUNT})
    assert changed.status_code == 200, changed.text
    if changed.json().get("bank_account_pending_confirmation"):
        with ward.server.client(confirmer) as c:
            named = {"set_at": changed.json()["bank_account_masked"]["set_at"], "bank_account": ACCOUNT}
            confirmed = c.post(f"/v1/merchants/{MERCHANT_A}/bank-account/confirm", json=named)
        assert confirmed.status_code == 200, confirmed.text
    month = dt.datetime.now(TOKYO).strftime("%Y-%m")
    ahead = {**ward.server.env, "SETAPAY_CLOCK_OFFSET_S": str(40 * 86_400)}
    settled = run_cli(ahead, "settle", "--period", month, "--out", str(out))
    assert settled.returncode == 0, settled.stderr
    return json.loads(settled.stdout)["run_id"]


def test_a_merchant_downloads_its_own_signed_statement(ward: Ward, browser, tmp_path: Path) -> None:
    """Per run, a merchant (and finance) downloads the merchant's own line as CSV and as JSON signed
    with the ward's statement key, which `setapay verify-statement` accepts; the figures are the
    run statement's line; no bank account in either; another merchant's answers 403."""
    run_id = _settled_this_month(ward, tmp_path / "settled")
    finance_key = ward.finance_key
    run = _api(ward, finance_key, f"/v1/settlement-runs/{run_id}")
    line = next(x for x in run["statement"]["document"]["lines"] if x["merchant_id"] == MERCHANT_A)
    assert line["coin_sales"] > 0 and line["net_payout"] > 0 and line["payout_status"] == "pending", line
    with ward.server.client(finance_key) as c:
        zengin = c.get(f"/v1/settlement-runs/{run_id}/zengin")
    assert ACCOUNT["account_number"].encode() in zengin.content, "the run pays the account: the check below can fail"
    base = ward.server.base_url
    own = f"/ui/merchants/{MERCHANT_A}/statements/{run_id}"

    context, page = _sign_in(browser, ward, ward.key("merchant", MERCHANT_A))
    try:
        _check_page(page, base, f"/ui/merchants/{MERCHANT_A}/statements", "merchant-statements-downloads")
        row = page.locator(f'[data-run="{run_id}"]')
        assert row.locator('[data-field="net_payout"]').inner_text() == _yen(line["net_payout"])
        assert row.locator('[data-field="verified"]').inner_text() == "署名を確認済み"
        assert row.locator('[data-field="own_verified"]').inner_text() == "署名を確認済み"

        with page.expect_download() as csv_download:
            row.locator("[data-download=csv]").click()
        csv_path = tmp_path / "own.csv"
        csv_download.value.save_as(csv_path)
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
        assert len(rows) == 1 and rows[0]["merchant_id"] == MERCHANT_A, rows
        for column, value in rows[0].items():
            assert value == str(line[column]), (column, value, line)

        with page.expect_download() as json_download:
            row.locator("[data-download=json]").click()
        json_path = tmp_path / "own.json"
        json_download.value.save_as(json_path)
        signed = json.loads(json_path.read_text(encoding="utf-8"))
        document = signed["document"]
        assert document["run_id"] == run_id and document["merchant_id"] == MERCHANT_A
        assert document["period"] == run["statement"]["document"]["period"]
        assert document["line"] == {k: v for k, v in line.items() if k in document["line"]}
        assert {"coin_sales", "fee", "net_payout", "carried_in"} <= set(document["line"])
        tie = document["run_statement"]
        assert tie["signature"] == run["statement"]["signature"]["value"]
        assert tie["sha256"] == hashlib.sha256(canonical_json(run["statement"])).hexdigest()
        verified = run_cli(ward.server.env, "verify-statement", str(json_path))
        assert verified.returncode == 0 and verified.stdout.strip() == "valid", (verified.stdout, verified.stderr)
        document["line"]["net_payout"] += 1
        tampered = tmp_path / "tampered.json"
        tampered.write_text(json.dumps(signed, ensure_ascii=False), encoding="utf-8")
        assert run_cli(ward.server.env, "verify-statement", str(tampered)).returncode == 1

        for body in (csv_path.read_text(encoding="utf-8"), json_path.read_text(encoding="utf-8")):
            assert ACCOUNT["account_number"] not in body and ACCOUNT["holder_kana"] not in body
            assert MERCHANT_B not in body

        for download in ("statement.csv", "statement.json"):
            other = context.request.get(f"{base}/ui/merchants/{MERCHANT_B}/statements/{run_id}/{download}")
            assert other.status == 403 and MERCHANT_B not in other.text().replace(f"/ui/merchants/{MERCHANT_B}", "")
        assert context.request.get(f"{base}{own}/zengin").status == 404
        assert context.request.get(f"{base}/ui/settlement-runs/{run_id}/statement.csv").status == 403
    finally:
        context.close()

    context, page = _sign_in(browser, ward, ward.key("merchant", MERCHANT_B))
    try:
        for download in ("statement.csv", "statement.json"):
            refused = context.request.get(f"{base}{own}/{download}")
            assert refused.status == 403, (download, refused.status)
            assert tie["signature"] not in refused.text() and "net_payout" not in refused.text()
    finally:
        context.close()

    context, page = _sign_in(browser, ward, finance_key)
    try:
        answer = context.request.get(f"{base}{own}/statement.json")
        assert answer.status == 200 and answer.json() == json.loads(json_path.read_text(encoding="utf-8"))
        other = context.request.get(f"{base}/ui/merchants/{MERCHANT_B}/statements/{run_id}/statement.csv")
        assert other.status == 200 and f"\r\n{MERCHANT_B}," in other.text()
        # The bank's results, typed in: an amount that is not this run's payout is refused, nothing applied.
        page.goto(f"{base}/ui/settlement-runs/{run_id}")
        page.fill("#results", f"{MERCHANT_A} paid {line['net_payout'] + 1}")
        page.click("form[action$='/payout-results'] button[type=submit]")
        assert "payout_amount_mismatch" in page.content()
        assert _api(ward, finance_key, f"/v1/settlement-runs/{run_id}")["payouts"] == run["payouts"]
        page.goto(f"{base}/ui/settlement-runs/{run_id}")
        page.fill("#results", f"{MERCHANT_A} paid {line['net_payout']}")
        page.click("form[action$='/payout-results'] button[type=submit]")
        page.wait_for_url(re.compile(rf".*/ui/settlement-runs/{run_id}$"))
        paid = _api(ward, finance_key, f"/v1/settlement-runs/{run_id}")["payouts"]
        assert {p["merchant_id"]: p["payout_status"] for p in paid}[MERCHANT_A] == "paid"
    finally:
        context.close()


def test_sign_in_page_and_a_refused_key(ward: Ward, browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        _check_page(page, ward.server.base_url, "/ui/login", "sign-in")
        page.fill("#key", ward.terminal_key("T_SHOTEN_1"))  # a real key, of a role the pages do not admit
        page.click("button[type=submit]")
        assert page.locator("[role=alert]").count() == 1
        assert "setapay_ui_session" not in {c["name"] for c in context.cookies()}
        assert page.goto(ward.server.base_url + f"/ui/merchants/{MERCHANT_A}").url.endswith("/ui/login")
    finally:
        context.close()


def test_a_revoked_key_ends_its_session_at_once(ward: Ward, browser) -> None:
    key = ward.server.create_key("merchant", MERCHANT_A)
    context, page = _sign_in(browser, ward, key)
    try:
        assert page.url.endswith(f"/ui/merchants/{MERCHANT_A}")
        done = ward.server.cli("keys", "revoke", key.split("_")[2])
        assert done.returncode == 0, done.stderr
        page.goto(ward.server.base_url + f"/ui/merchants/{MERCHANT_A}/transactions")
        assert page.url.endswith("/ui/login"), "a revoked key's session still opens pages"
    finally:
        context.close()


def test_forms_need_their_csrf_token(ward: Ward) -> None:
    """A post without the token of the caller's CSRF cookie changes nothing (403), signed in or not."""
    with httpx.Client(base_url=ward.server.base_url, follow_redirects=False) as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
        assert token is not None
        assert c.post("/ui/login", data={"key": ward.finance_key}).status_code == 403
        assert c.post("/ui/login", data={"key": ward.finance_key, "csrf": uuid.uuid4().hex}).status_code == 403
        signed_in = c.post("/ui/login", data={"key": ward.finance_key, "csrf": token.group(1)})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/campaigns"
        assert c.post("/ui/settlement-runs", data={"period": ""}).status_code == 403
        # The sign-in form's token was made before the session: the session's pages carry their own.
        assert c.post("/ui/logout", data={"csrf": token.group(1)}).status_code == 403
        page = c.get("/ui/campaigns")
        assert page.status_code == 200
        session_token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert session_token is not None and session_token.group(1) != token.group(1)
        assert c.post("/ui/logout", data={"csrf": session_token.group(1)}).status_code == 303
        assert c.get("/ui/campaigns").status_code == 303


def test_the_reconciliation_page_waits_for_a_run_elsewhere(ward: Ward) -> None:
    """While another process holds the database's one reconciliation slot, the page's run is a
    plain 409 page saying so (nothing streamed, no thread started), as `GET /v1/reconciliation`
    answers 409; once it is let go, the page runs."""
    from engine.store import db, finance

    engine = db.make_engine(ward.server.database_url)
    with httpx.Client(base_url=ward.server.base_url, follow_redirects=False, timeout=60) as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
        assert token is not None
        signed_in = c.post("/ui/login", data={"key": ward.finance_key, "csrf": token.group(1)})
        assert signed_in.status_code == 303
        try:
            with db.alone(engine, finance.RECONCILIATION_LOCK, wait=False):
                refused = c.get("/ui/reconciliation?run=1")
                assert refused.status_code == 409, refused.text
                assert "照合はすでに実行中です" in refused.text and "data-check" not in refused.text
                api = c.get("/v1/reconciliation", headers={"Authorization": f"Bearer {ward.finance_key}"})
                assert api.status_code == 409 and api.json()["code"] == "reconciliation_in_progress"
            ran = c.get("/ui/reconciliation?run=1")
            assert ran.status_code == 200 and ran.text.count('data-check="') >= 10, ran.text[-500:]
        finally:
            engine.dispose()
