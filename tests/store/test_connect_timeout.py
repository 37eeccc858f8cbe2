"""A PostgreSQL server that accepts connections and never answers (hung, or a half-dead network
path) fails a new connection after `db.CONNECT_TIMEOUT_S` with an error the API answers 503,
instead of holding the request and its worker thread for as long as the OS waits; a URL that sets
its own `connect_timeout` keeps it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from engine.store import db


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port whose connections complete and then hear nothing, ever."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel completes the handshakes; nobody reads or writes
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _connect_seconds(url: str, give_up_s: float) -> tuple[float, BaseException | None]:
    """Seconds until connecting to `url` failed (or `give_up_s` if it was still waiting), and what it raised."""
    engine = db.make_engine(url)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            with engine.connect():
                outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=connect, daemon=True)  # left behind if it never returns
    thread.start()
    thread.join(give_up_s)
    return time.monotonic() - started, outcome[0] if outcome else None


def test_a_server_that_never_answers_fails_the_connection_in_time(silent_server: int) -> None:
    seconds, error = _connect_seconds(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/x", 20)
    assert isinstance(error, db.UNREACHABLE), error  # answered 503 service_unavailable by the API
    assert db.CONNECT_TIMEOUT_S - 0.5 <= seconds < db.CONNECT_TIMEOUT_S + 5


def test_a_url_with_its_own_connect_timeout_keeps_it(silent_server: int) -> None:
    seconds, error = _connect_seconds(
        f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/x?connect_timeout=2", 20
    )
    assert isinstance(error, db.UNREACHABLE), error
    assert seconds < db.CONNECT_TIMEOUT_S - 1
