"""The group committer's writes in a process of their own (issue 11, item 4), on PostgreSQL.

An API process that decides ahead (`engine.store.group_commit`) runs three kinds of Python at
once: request threads checking bodies, the committer thread deciding the next group, and the
writer thread sending the last group's rows. They share one interpreter lock, and the writer
waits for it after every round trip to PostgreSQL: measured, the writer's database session sat
idle, waiting for its client, about half of each write (`docs/BENCHMARKS.md`). A `WriterProcess`
moves that thread's work into a child process with its own interpreter: the writer thread hands
it the decided group's head before and after and its statements (`bulk.WriteBatch.statements`:
SQL, and COPY rows as plain tuples) over a pipe, serialised by `marshal` (the statements hold
only strings, integers, None, booleans and bytes in tuples and lists: 0.9 ms a group against
pickle's 2.5, in the interpreter the request threads wait for), and waits for one answer, releasing the lock
once. The child runs `engine.store.ledger.write_rows` in a transaction on its own connection,
exactly what the writer thread ran: take the sequencer lock, check the head, send the rows,
move the head, commit.

Failure keeps the writer thread's semantics. A refused write (the head moved) answers False. A
write that raised (a unique key refused a row, the connection lost) raises `WriteFailed` with the
error's class name only (its text can quote parameters), and so does a child that died or whose
pipe broke (`WriterLost`); the committer then asks the database whether the group was committed
(`Ledger.wrote`: one commit wrote all of it, or none; it waits for the sequencer lock first, so a
commit still finishing is seen) and posts it under the lock if not. A child that has not answered
within `WRITE_TIMEOUT_S` is killed and its write settled the same way. A lost child is started
again for the next group (after a lost write the committer decides under the lock for a second,
so at most about one spawn a second). The child ends when its pipe closes: when the API
process exits, or is killed, after the group it is writing (one transaction: committed whole or
rolled back whole), or within `PARENT_WATCH_S` of its parent's death, whichever comes first: a
write cut short before its COMMIT was sent is rolled back whole with its connection (one whose
COMMIT was sent commits whole, as any). So a child whose parent died by itself (a committer
child: nobody killed the writer with it) does not wait inside a write (on a lock, on the
database) to commit alone, later, a group whose requests were already answered 503.
"""

from __future__ import annotations

import marshal
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

Statements = list[tuple[str, Any]]


class WriteFailed(RuntimeError):
    """The child's write raised; the message is the error's class name."""


class WriterLost(WriteFailed):
    """The child died or its pipe broke before it answered."""


WRITE_TIMEOUT_S = 60.0  # a child that has not answered by then is killed, its write uncertain
CLOSE_WAIT_S = 5.0  # how long `close` lets a write in flight finish before it kills the child
PARENT_WATCH_S = 0.5  # how often the child looks whether its parent is still there


class WriterProcess:
    """One child process writing decided groups for one database (`engine.store.ledger.RowWriter`).

    Used by one writer thread at a time (the committer's); spawned by `start` or the first write,
    again by the write after one that lost it."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.started = 0  # children started, the first one included
        self._pipe: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Spawn the child now, if none runs (else the first write does)."""
        with self._lock:
            if self._pipe is None and not self._closed:
                self._start()

    def write(self, base: Any, end: Any, statements: Statements) -> bool:
        with self._lock:
            if self._closed:
                raise WriterLost("closed")
            if self._pipe is None:
                self._start()
            assert self._pipe is not None
            try:
                self._pipe.send_bytes(marshal.dumps((base, end, statements)))
                if not self._pipe.poll(WRITE_TIMEOUT_S):
                    # Hung: killed, so its connection closes and the lock it may hold is let go
                    # (`Ledger.wrote`, which the caller asks next, waits for that lock).
                    self._kill()
                    self._stop()
                    raise WriterLost("timeout")
                kind, value = self._pipe.recv()
            except (EOFError, OSError) as lost:
                self._stop()
                raise WriterLost(type(lost).__name__) from None
        if kind == "error":
            raise WriteFailed(value)
        return bool(value)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        """End the child, letting a write in flight finish for up to `CLOSE_WAIT_S` (then the
        child is killed and that write is uncertain, as any lost write); a write after this
        raises `WriterLost`."""
        self._closed = True
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            self._kill()
            self._lock.acquire()
        try:
            self._stop()
        finally:
            self._lock.release()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()

    def _start(self) -> None:
        # Spawned, not forked: the API process runs threads (a fork would copy their locks held).
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve, args=(self.database_url, theirs, os.getpid()), name="setapay-writer", daemon=True
        )
        process.start()
        theirs.close()
        self._pipe, self._process = ours, process
        self.started += 1

    def _stop(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._pipe = self._process = None


def error_name(error: BaseException) -> str:
    """What the writers log and answer of an error: its class and, for a wrapped driver error, the
    driver's class, or a writer child's error's own (`WriteFailed`: class names already); never
    an error's text, which can quote parameters."""
    if isinstance(error, WriteFailed):
        return f"{type(error).__name__}/{error}"
    original = getattr(error, "orig", None)
    return type(error).__name__ + (f"/{type(original).__name__}" if original is not None else "")


def serve(database_url: str, pipe: Connection, parent: int) -> None:
    """The child: write each group it is handed, answer ("ok", written) or ("error", class name),
    until its pipe closes. Interrupts and terminations sent to the API's process group are its
    parent's to act on: the child ends when the parent closes the pipe, or exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_end_with_parent, args=(parent,), name="writer-parent", daemon=True).start()
    from engine import collector
    from engine.store import db
    from engine.store.ledger import write_rows

    engine = db.make_engine(database_url)
    held = db.HeldConnection(engine)  # one connection for every write: no pool checkout and ping a group
    collector.tune()
    try:
        while True:
            try:
                base, end, statements = marshal.loads(pipe.recv_bytes())
            except (EOFError, OSError):
                return
            try:
                with held.session() as session, session.begin():
                    written = write_rows(session, base, end, statements)
            except Exception as failure:  # noqa: BLE001 - answered (and logged) by the parent
                answer: tuple[str, Any] = ("error", error_name(failure))
            else:
                answer = ("ok", written)
            try:
                pipe.send(answer)
            except OSError:
                return
    finally:
        held.close()
        engine.dispose()


def _end_with_parent(parent: int) -> None:
    """End the child at once when `parent`, the process that started it, is no longer its parent
    (it died, before this look or since; the child was handed to another): a write it holds is
    rolled back with its connection (unless its COMMIT was sent: then it commits whole), and
    nobody waits for its answer. Looked at every `PARENT_WATCH_S` (Linux gives no portable signal
    for a parent's death that a thread of it could not set off); the look runs while the write
    waits on the database (psycopg lets go of the interpreter lock as it waits)."""
    while os.getppid() == parent:
        time.sleep(PARENT_WATCH_S)
    os._exit(1)
