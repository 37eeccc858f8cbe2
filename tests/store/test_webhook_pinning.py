"""A webhook delivery connects to the address it checked (DNS rebinding).

The host of an endpoint's URL is resolved at delivery and refused when any address is local,
private or reserved. A name whose DNS answer changes between that check and the connection
(a public address first, 127.0.0.1 the next time it is asked) must not lead the engine into
the ward's network: the POST goes to the checked address, with the name kept as the Host
header and as the TLS server name the certificate is checked against, on a connection not
kept for another endpoint. DNS is the operating system's, so the resolver is replaced here
by one that rebinds; the POST is captured by httpx's own mock transport.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from engine.errors import EngineError
from engine.settings import Settings
from engine.store import webhooks
from engine.store.webhooks import Claimed, Webhooks


class Rebinding:
    """A resolver answering `first` the first time and 127.0.0.1 every time after."""

    def __init__(self, first: list[str]) -> None:
        self.first = first
        self.asked: list[str] = []

    def __call__(self, host, port, *args, **kwargs):
        self.asked.append(host)
        addresses = self.first if len(self.asked) == 1 else ["127.0.0.1"]
        family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
        return [(family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]


def delivery(url: str) -> Claimed:
    return Claimed(1, 0, 0, 0, url, "whsec_" + "A" * 43, "evt_1", '{"type":"test"}')


@pytest.fixture
def store(tmp_path) -> Webhooks:
    return Webhooks(None, Settings(database_url=f"sqlite:///{tmp_path}/w.db"))  # type: ignore[arg-type]


def capture(requests: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_the_post_goes_to_the_address_checked_with_the_name_for_host_and_tls(store, monkeypatch) -> None:
    resolver = Rebinding(["93.184.215.14"])
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", resolver)
    requests: list[httpx.Request] = []
    status, error = store.attempt(capture(requests), delivery("https://Hooks.Example.com:8443/in?x=1"))
    assert (status, error) == (204, None)
    assert resolver.asked == ["hooks.example.com"]  # resolved once: nothing asks DNS again
    (request,) = requests
    assert request.url == "https://93.184.215.14:8443/in?x=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["connection"] == "close"  # the connection is not pooled for another name
    assert "webhook-signature" in request.headers


def test_an_ipv6_answer_is_connected_to_in_brackets(store, monkeypatch) -> None:
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", Rebinding(["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]))
    requests: list[httpx.Request] = []
    assert store.attempt(capture(requests), delivery("https://hooks.example.com/in")) == (204, None)
    assert requests[0].url == "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/in"
    assert requests[0].headers["host"] == "hooks.example.com"


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["93.184.215.14", "10.0.0.7"], ["::1"], ["169.254.169.254"]])
def test_a_name_with_a_local_address_among_its_answers_gets_no_post(store, monkeypatch, answer) -> None:
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", Rebinding(answer))
    requests: list[httpx.Request] = []
    status, error = store.attempt(capture(requests), delivery("https://hooks.example.com/in"))
    assert status is None and error == "the host resolves to a local, private or reserved address"
    assert requests == []


def test_an_endpoint_the_client_cannot_send_to_holds_up_no_other(tmp_path, monkeypatch) -> None:
    """An endpoint whose URL the HTTP client cannot parse (registered before the URL rule refused
    it: `https://[v1.x]/`, which `urlsplit` takes and httpx does not) fails its own attempt; the
    other endpoints' deliveries of the same round are still sent. Before, its exception ended the
    round and every delivery claimed with it stayed leased, round after round."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from engine import events, sealing
    from engine.store import db
    from engine.store import events as outbox

    url = f"sqlite:///{tmp_path}/hooks.db"
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        hooks = Webhooks(engine, Settings(database_url=url, data_key_b64=sealing.generate_key_b64()))
        for refused in ("https://[v1.x]/", "https://0177.0.0.1/hook"):  # now refused when registered
            with pytest.raises(EngineError) as caught:
                hooks.create(refused, ["budget_threshold"])
            assert caught.value.code == "webhook_url_not_allowed"
        bad = hooks.create("https://bad.example.org/hook", ["budget_threshold"])[1]["id"]
        good = hooks.create("https://hooks.example.com/in", ["budget_threshold"])[1]["id"]
        with Session(engine) as session, session.begin():
            session.execute(text("UPDATE webhook_endpoint SET url = 'https://[v1.x]/' WHERE id = :id"), {"id": bad})
            outbox.record(session, events.budget_crossings({"C1": 700}, {"C1": 800}, {"C1": 1000}, 1), 1)
        monkeypatch.setattr(webhooks.socket, "getaddrinfo", Rebinding(["93.184.215.14"]))
        requests: list[httpx.Request] = []
        assert hooks.deliver_once(capture(requests)) == 2
        assert [r.headers["host"] for r in requests] == ["hooks.example.com"]
        with Session(engine) as session:
            rows = dict(
                session.execute(text("SELECT endpoint_id, status || ' ' || attempts FROM webhook_delivery")).all()
            )
        assert rows == {good: "delivered 1", bad: "pending 1"}
    finally:
        engine.dispose()


def test_a_delivery_whose_lease_ran_out_in_the_round_is_not_sent(tmp_path, monkeypatch) -> None:
    """A round slowed past its claim's lease (a name slow to resolve, a paused process) leaves the
    rest unsent: another worker may have claimed them once the lease ran out, and sending them too
    delivered an event twice at once (helper-82's probe). They are claimed again, and sent once."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from engine import events, sealing
    from engine.clock import ManualClock
    from engine.store import db
    from engine.store import events as outbox

    url = f"sqlite:///{tmp_path}/hooks.db"
    db.upgrade(url)
    engine = db.make_engine(url)
    clock = ManualClock(1_000_000_000)
    try:
        hooks = Webhooks(engine, Settings(database_url=url, data_key_b64=sealing.generate_key_b64()), clock)
        hooks.create("https://one.example.com/in", ["budget_threshold"])
        hooks.create("https://two.example.com/in", ["budget_threshold"])
        with Session(engine) as session, session.begin():
            outbox.record(session, events.budget_crossings({"C1": 700}, {"C1": 800}, {"C1": 1000}, 1), 1)
        monkeypatch.setattr(webhooks.socket, "getaddrinfo", lambda *a, **k: Rebinding(["93.184.215.14"])(*a, **k))
        requests: list[httpx.Request] = []

        def slow(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            clock.set(clock.now_us() + 10 * 3600 * 1_000_000)  # the round outlives its lease
            return httpx.Response(204)

        assert hooks.deliver_once(httpx.Client(transport=httpx.MockTransport(slow))) == 2
        assert len(requests) == 1, "a delivery was sent after its lease ran out"
        assert hooks.deliver_once(capture(requests)) == 1  # claimed again, sent once
        assert len(requests) == 2 and requests[0].headers["host"] != requests[1].headers["host"]
        with Session(engine) as session:
            done = session.execute(text("SELECT status, attempts FROM webhook_delivery")).all()
        assert sorted(done) == [("delivered", 1), ("delivered", 1)]
    finally:
        engine.dispose()


def test_a_resolver_that_does_not_answer_holds_the_attempt_no_longer_than_its_timeout(tmp_path, monkeypatch) -> None:
    """getaddrinfo takes no timeout: a name whose DNS server never answered held the attempt (and
    every other endpoint's deliveries behind it) as long as the operating system's resolver waited.
    The resolution and the POST together now end within the timeout."""
    released = threading.Event()

    def silent(host, port, *args, **kwargs):
        released.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", silent)
    store = Webhooks(None, Settings(database_url=f"sqlite:///{tmp_path}/w.db", webhook_timeout_s=0.5))  # type: ignore[arg-type]
    requests: list[httpx.Request] = []
    try:
        started = time.monotonic()
        status, error = store.attempt(capture(requests), delivery("https://hooks.example.com/in"))
        took = time.monotonic() - started
    finally:
        released.set()
    assert (status, error) == (None, "resolve: no answer within 0.5 s")
    assert took < 2, took
    assert requests == []


def test_a_name_that_resolves_slowly_holds_up_no_other_name(tmp_path, monkeypatch) -> None:
    """Lookups ran on a shared pool of four threads: a name whose resolver answers late took all
    four, one attempt after another, and every other endpoint's name then timed out waiting in the
    queue (helper-87). Attempts for one name now share one lookup; other names go on."""
    released = threading.Event()

    def resolver(host, port, *args, **kwargs):
        if host == "slow.example.com":
            released.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", resolver)
    store = Webhooks(None, Settings(database_url=f"sqlite:///{tmp_path}/w.db", webhook_timeout_s=0.3))  # type: ignore[arg-type]
    requests: list[httpx.Request] = []
    try:
        for _ in range(6):
            assert store.attempt(capture(requests), delivery("https://slow.example.com/in")) == (
                None,
                "resolve: no answer within 0.3 s",
            )
        assert store.attempt(capture(requests), delivery("https://good.example.com/in")) == (204, None)
        lookups = [t for t in threading.enumerate() if t.name == "webhook-resolve"]
        assert len(lookups) == 1 and lookups[0].daemon  # the slow name's one lookup; exit never waits on it
    finally:
        released.set()
    assert [r.headers["host"] for r in requests] == ["good.example.com"]
