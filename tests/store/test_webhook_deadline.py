"""A webhook attempt ends within its timeout however the endpoint answers, and never reads the
answer's body (helper-82's probe: an endpoint sending a header byte every 3 s held each attempt
~147 s against a 5 s timeout, and with it every other endpoint's deliveries; a 1.5 GB body was read
into the memory of the API process that takes payments). A real socket server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from engine.settings import Settings
from engine.store.webhooks import Claimed, Webhooks


def _serve(listener: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_answer, args=(conn, stop), daemon=True).start()


def _answer(conn: socket.socket, stop: threading.Event) -> None:
    with conn:
        request = conn.recv(65536).decode("latin-1")
        try:
            if request.startswith("POST /slow"):
                for byte in b"HTTP/1.1 200 OK\r\n" * 1000:  # one byte every 0.2 s, well inside any read timeout
                    if stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(0.2)
            elif request.startswith("POST /big"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
                while not stop.is_set():  # a body that never ends
                    conn.sendall(chunk)
        except OSError:  # the engine hung up
            return


@pytest.fixture
def endpoint() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, stop), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _attempt(tmp_path, url: str) -> tuple[tuple[int | None, str | None], float]:
    hooks = Webhooks(
        None,  # type: ignore[arg-type]  # an attempt reads no database
        Settings(database_url=f"sqlite:///{tmp_path}/w.db", webhooks_allow_http=True, webhook_timeout_s=1.0),
    )
    delivery = Claimed(1, 0, 0, 0, url, "whsec_" + "A" * 43, "evt_1", '{"type":"test"}')
    answer: list[tuple[int | None, str | None]] = []
    started = time.monotonic()
    with hooks.client() as client:
        worker = threading.Thread(target=lambda: answer.append(hooks.attempt(client, delivery)), daemon=True)
        worker.start()
        worker.join(15)
    assert answer, "the attempt did not end"
    return answer[0], time.monotonic() - started


def test_an_endpoint_trickling_its_answer_is_cut_at_the_timeout(tmp_path, endpoint) -> None:
    (status, error), elapsed = _attempt(tmp_path, endpoint + "/slow")
    assert status is None and error == "no answer within 1 s", error
    assert elapsed < 3, elapsed


def test_an_answer_s_body_is_never_read(tmp_path, endpoint) -> None:
    (status, error), elapsed = _attempt(tmp_path, endpoint + "/big")
    assert (status, error) == (200, None)  # read, the endless body would have met the deadline
    assert elapsed < 1, elapsed
