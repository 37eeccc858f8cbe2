"""Events and webhooks (SPEC §10) against real parts: `setapay serve` processes, `setapay credit`,
real databases, and a real HTTP receiver (a threading `http.server` on 127.0.0.1) that checks
every delivery's signature with the `standardwebhooks` verifier.

The servers run with a short retry window and a fast backoff (`SETAPAY_WEBHOOK_*`), so a
receiver down for the whole window sees its deliveries marked failed within seconds.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.responses import CreatedWebhook, DeliveryPage, EventPage, WebhookView, WebhookViews
from tests.server import clock_at, run_cli
from tests.ward import CAMPAIGN_WINDOW, Plan, Ward

FAST_WEBHOOKS_ENV = {
    "SETAPAY_WEBHOOKS_ALLOW_HTTP": "1",
    "SETAPAY_WEBHOOK_DELIVERY_INTERVAL_S": "0.1",
    "SETAPAY_WEBHOOK_RETRY_WINDOW_S": "3",
    "SETAPAY_WEBHOOK_BACKOFF_BASE_S": "0.1",
    "SETAPAY_WEBHOOK_BACKOFF_MAX_S": "0.5",
    "SETAPAY_WEBHOOK_TIMEOUT_S": "2",
}
DEADLINE_S = 20
# Awards credited on the first business day after the dekad closes: pending until a credit run.
LATER = Plan(
    merchants=[
        {
            "id": "M_HOOK",
            "name": "三茶八百屋",
            "merchant_class": "small",
            "shotengai_id": None,
            "ward_local": True,
            "ethical_certifications": [],
        }
    ],
    campaigns=[
        {
            "id": "C_LATER",
            "name": "後日付与",
            "funding_source": "ward_general",
            **CAMPAIGN_WINDOW,
            "tiers": [{"match": {}, "rate_bp": 1000}],
            "credit": {"schedule": "dekad", "delay_business_days": 1},
        }
    ],
    terminals={"T_HOOK": "M_HOOK"},
)
CREDIT_ALL = "2036-06-01T00:00:00+09:00"


class Receiver:
    """A webhook endpoint on 127.0.0.1: answers 500 to the first `failures` requests (or to every
    one while `down`), 204 after; records every request whose signature verifies, and counts those
    that do not."""

    def __init__(self, failures: int = 0, down: bool = False) -> None:
        self.failures = failures
        self.down = down
        self.secret: str | None = None
        self.requests = 0
        self.delivered: list[dict] = []  # verified bodies answered 2xx, in arrival order
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.down or receiver.requests <= receiver.failures
                    try:
                        payload = Webhook(receiver.secret).verify(body, dict(self.headers))
                        assert self.headers["webhook-id"] == f"evt_{payload['id']}"
                    except (WebhookVerificationError, AssertionError, TypeError):
                        receiver.bad_signatures += 1
                        failing = True
                    else:
                        if not failing:
                            receiver.delivered.append(payload)
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the kernel picks the port, bound at once
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/setapay"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(what: str, check, deadline_s: float = DEADLINE_S, log=lambda: ""):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {deadline_s}s: {what}\n{log()}")


def _register(ward: Ward, receiver: Receiver, types: list[str]) -> dict:
    r = ward["admin"].post("/v1/webhooks", json={"url": receiver.url, "event_types": types})
    assert r.status_code == 201, r.text
    created = r.json()
    CreatedWebhook.model_validate(created)
    assert created["secret"].startswith("whsec_")
    receiver.secret = created["secret"]
    return created


def _credit(ward: Ward) -> dict:
    done = run_cli(clock_at(ward.server.env, CREDIT_ALL), "credit", "--as-of", CREDIT_ALL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def hooks_ward(backend, start_server):
    w = Ward(start_server(backend, env=FAST_WEBHOOKS_ENV), LATER)
    try:
        yield w
    finally:
        w.close()


def test_a_credit_run_reaches_a_flaky_receiver_signed_once_each_in_order(hooks_ward: Ward) -> None:
    """Acceptance (issue 12): a credit run emits `award_credited` to a registered webhook within
    seconds, through a receiver that fails its first attempts; every event once, each wallet's in order."""
    ward = hooks_ward
    receiver = Receiver(failures=3)
    try:
        hook = _register(ward, receiver, ["award_credited", "clawback"])
        bought = [ward.buy("T_HOOK", f"W_HOOK_{i % 3}", 1000 + i) for i in range(9)]
        assert all(a["awards"][0]["status"] == "pending" for a in bought)
        refunded = ward.refund("T_HOOK", bought[0]["id"], 500)
        assert refunded["points_clawed_back"] > 0
        assert _credit(ward)["awards_credited"] == 9
        # Within seconds, three failed attempts and their backoff included.
        _wait("10 events delivered", lambda: len(receiver.delivered) >= 10, 10, log=ward.server.log)
        time.sleep(0.5)  # nothing more may come
        assert receiver.bad_signatures == 0
        kinds = collections.Counter(p["type"] for p in receiver.delivered)
        assert kinds == {"award_credited": 9, "clawback": 1}, kinds
        ids = [p["id"] for p in receiver.delivered]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        for wallet in {p["wallet_id"] for p in receiver.delivered}:
            mine = [p["id"] for p in receiver.delivered if p["wallet_id"] == wallet]
            assert mine == sorted(mine), f"{wallet}'s events out of order: {mine}"
        credited = {p["data"]["transaction_id"] for p in receiver.delivered if p["type"] == "award_credited"}
        assert credited == {a["id"] for a in bought}
        clawback = next(p for p in receiver.delivered if p["type"] == "clawback")
        assert clawback["data"]["transaction_id"] == refunded["id"]
        assert clawback["data"]["points_clawed_back"] == refunded["points_clawed_back"]

        # The feed says the same, to the app; the listing counts deliveries and never shows the secret.
        feed = ward["app"].get("/v1/events", params={"types": "award_credited,clawback", "limit": 500})
        assert feed.status_code == 200, feed.text
        EventPage.model_validate(feed.json())
        assert {e["id"] for e in feed.json()["events"]} >= set(ids)
        listing = ward["admin"].get("/v1/webhooks").json()
        WebhookViews.model_validate(listing)
        mine = next(h for h in listing if h["id"] == hook["id"])
        assert mine["deliveries"] == {"pending": 0, "delivered": 10, "failed": 0}
        assert "secret" not in mine and hook["secret"] not in json.dumps(listing)
    finally:
        receiver.close()


def test_a_receiver_down_for_the_whole_window_gets_its_deliveries_marked_failed(hooks_ward: Ward) -> None:
    ward = hooks_ward
    receiver = Receiver(down=True)
    try:
        hook = _register(ward, receiver, ["award_credited"])
        bought = ward.buy("T_HOOK", "W_DOWN", 2000)
        _credit(ward)

        def failed() -> list[dict]:
            r = ward["finance"].get("/v1/webhook-deliveries", params={"status": "failed"})
            assert r.status_code == 200, r.text
            DeliveryPage.model_validate(r.json())
            return [d for d in r.json()["deliveries"] if d["webhook_id"] == hook["id"]]

        found = _wait("the delivery marked failed", failed)
        assert len(found) == 1 and found[0]["attempts"] >= 3, found
        assert found[0]["last_status_code"] == 500 and found[0]["wallet_id"] == "W_DOWN"
        assert receiver.requests == found[0]["attempts"] and receiver.bad_signatures == 0
        event = ward["finance"].get("/v1/events", params={"after": found[0]["event_id"] - 1, "limit": 1}).json()
        assert event["events"][0]["data"]["transaction_id"] == bought["id"]
        metrics = ward.server.client().get("/metrics").text
        assert _gauge(metrics, "setapay_webhook_deliveries_failed") >= 1
        assert 'setapay_webhook_delivery_attempts_total{outcome="failed"}' in metrics
        # Deleting the endpoint: no more deliveries, shown as deleted; again changes nothing.
        gone = ward["admin"].delete(f"/v1/webhooks/{hook['id']}")
        assert gone.status_code == 200 and gone.json()["deleted_at"] is not None
        WebhookView.model_validate(gone.json())
        assert ward["admin"].delete(f"/v1/webhooks/{hook['id']}").json() == gone.json()
        assert ward["admin"].delete("/v1/webhooks/wh_unknown").status_code == 404
    finally:
        receiver.close()


def _gauge(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_webhook_urls_follow_the_rule(hooks_ward: Ward, backend: str, start_server) -> None:
    """With SETAPAY_WEBHOOKS_ALLOW_HTTP unset (production), only https:// to a public host."""
    if backend != "sqlite":
        pytest.skip("the rule is the API's, not the database's")
    strict = Ward(start_server(backend), Plan([], [], {}))
    try:
        admin = strict["admin"]
        for url in (
            "http://hooks.example.org/setapay",
            "https://127.0.0.1/setapay",
            "https://localhost/setapay",
            "https://10.1.2.3/setapay",
            "https://169.254.169.254/latest",
            "https://[::1]/setapay",
            "https://user:pw@hooks.example.org/",
            "ftp://hooks.example.org/",
        ):
            r = admin.post("/v1/webhooks", json={"url": url, "event_types": ["clawback"]})
            assert r.status_code == 422 and r.json()["code"] == "webhook_url_not_allowed", (url, r.text)
        r = admin.post("/v1/webhooks", json={"url": "https://hooks.example.org/setapay", "event_types": ["clawback"]})
        assert r.status_code == 201, r.text
        r = admin.post("/v1/webhooks", json={"url": "https://hooks.example.org/", "event_types": ["nope"]})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request"
        assert (
            strict["finance"].post("/v1/webhooks", json={"url": "https://a.example/", "event_types": []}).status_code
            == 403
        )
    finally:
        strict.close()


@pytest.mark.postgres
def test_two_delivery_workers_at_once_deliver_every_event_once(databases, tmp_path) -> None:
    """Two `setapay serve` worker processes and a `setapay deliver` on one PostgreSQL database, each
    running a delivery worker: every event reaches a healthy receiver once, none is lost."""
    from tests.api.conftest import Server

    server = Server(databases.create("postgresql"), tmp_path, FAST_WEBHOOKS_ENV, workers=2)
    server.start()
    receiver = Receiver()
    deliver = None
    try:
        ward = Ward(server, LATER)
        _register(ward, receiver, ["award_credited"])
        import subprocess
        import sys

        from tests.server import REPO

        deliver = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "deliver"], cwd=REPO, env=server.env, stderr=subprocess.DEVNULL
        )
        for i in range(30):
            ward.buy("T_HOOK", f"W_TWO_{i % 7}", 500 + i)
        assert _credit(ward)["awards_credited"] == 30
        _wait("30 events delivered", lambda: len(receiver.delivered) >= 30, 40)
        time.sleep(1.0)
        ids = [p["id"] for p in receiver.delivered]
        assert len(ids) == 30 and len(set(ids)) == 30, collections.Counter(ids).most_common(3)
        assert receiver.requests == 30 and receiver.bad_signatures == 0
        for wallet in {p["wallet_id"] for p in receiver.delivered}:
            mine = [p["id"] for p in receiver.delivered if p["wallet_id"] == wallet]
            assert mine == sorted(mine), f"{wallet}'s events out of order: {mine}"
        ward.close()
    finally:
        if deliver is not None:
            deliver.terminate()
            deliver.wait(timeout=15)
        receiver.close()
        server.stop()
