"""The group committer in a child process of its own (issue 11, item 4), on PostgreSQL.

An API process that commits its own groups runs the HTTP front end (the event loop: parsing,
authentication, receipts, validation, answers) and the sequenced ledger (deciding groups, writing
them) under one interpreter lock: measured, that process held the lock about 90% of the time while
the machine's second core sat half idle (`docs/BENCHMARKS.md`). A `CommitterProcess` keeps the
front end in the API process and moves the ledger into a child: the API process gathers the
submissions its requests queue into groups (`engine.store.gather.Gatherer`, the same parcels as
`GroupCommitter`) and sends each whole group over a pipe, pickled; the child runs an ordinary
`GroupCommitter` (deciding ahead, its decided groups written by a thread or, with
`writer_process`, by a child of its own: `engine.store.write_process`) and answers each group's
results, in order. The child also says when it can take the next group (once it has decided the
last one and handed it to its writer), and only then does the API process gather the next: so a
group holds every request that came in meanwhile, and at most one group waits in the pipe.

Every future is resolved only from the child's answer, sent after the group's commit returned (a
`GroupCommitter` resolves its futures only then), so nothing is acknowledged before it is durable.

A child that dies, or has not answered a group within `ANSWER_TIMEOUT_S` (then a watchdog thread
kills it, with the writer child it started), fails every group it had not answered with
`db.Unreachable("CommitterLost")`: the API answers 503 `service_unavailable`, and the terminal's
retry with the same key is a replay if that group was committed, a first post if it was not (a
child's transaction is committed whole or rolled back whole). The next group starts a new child,
unless one was started less than `RESPAWN_MIN_S` ago: then that group fails the same way, so a
child that cannot start costs one spawn a second. Errors the child answers carry their class name
only (an error's text can quote parameters): a database that cannot be reached stays a 503
(`db.Unreachable`), anything else a `CommitterFailed` (500).

The child runs with its own copy of the API's clock (a `SystemClock`: the same system time, the
same offset). Its metrics (group sizes and times, declines) are its own process's: they add up in
`/metrics` in Prometheus' multiprocess mode, as `setapay serve` runs. It ignores SIGINT and
SIGTERM, which are its parent's to act on, and ends after the groups it holds when told to stop
(`close`) or when its pipe closes (the API process exited or was killed). It is not a daemon, so
that it may start its own writer child; `close` runs at the API process's exit too. A child that
dies by itself (nobody kills its writer child with it) leaves a writer child that ends on its own
within `write_process.PARENT_WATCH_S`, a write it was waiting in (its COMMIT not yet sent) rolled back.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import multiprocessing
import os
import pickle
import queue
import select
import signal
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from engine.clock import Clock, SystemClock
from engine.store import db
from engine.store.gather import Gatherer
from engine.store.group_commit import Committer, Group, Parcel, size_of_parcel
from engine.store.write_process import error_name

log = logging.getLogger(__name__)

# A group unanswered this long: the child is killed, its groups fail (503). Longer than the child's
# own wait for its writer (`write_process.WRITE_TIMEOUT_S`), so that the child settles a hung write first.
ANSWER_TIMEOUT_S = 90.0
CLOSE_WAIT_S = 5.0  # how long `close` lets the groups in the child finish before it kills the child
RESPAWN_MIN_S = 1.0  # at most one child started a second
WATCH_EVERY_S = 1.0  # how often the watchdog looks for a group unanswered too long
READY = "ready"  # the child's message: it can take the next group
PROTOCOL = pickle.HIGHEST_PROTOCOL


class CommitterFailed(RuntimeError):
    """The child's committer failed a parcel with an error other than an unreachable database;
    the message is the error's class name."""


class CommitterProcess(Committer):
    """A `Committer` whose groups are decided and written by a child process."""

    def __init__(self, database_url: str, clock: Clock, size_max: int = 1000, writer_process: bool = False) -> None:
        if not isinstance(clock, SystemClock):
            raise ValueError("a committer process keeps time with a copy of the clock: it must be a SystemClock")
        self.database_url = database_url
        self.clock = clock
        self.writer_process = writer_process
        self.started = 0  # children started, the first one included
        self._changed = threading.Condition()
        self._sending = threading.Lock()  # one message on the pipe at a time (a group, or `close`'s stop)
        self._pipe: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._ready = True  # the child may take the next group
        self._pending: dict[int, tuple[Group, float]] = {}  # sent, not answered: (group, sent at)
        self._next = 0
        self._started_at = -RESPAWN_MIN_S
        self._closed = False
        with self._changed:
            self._start()  # now: the child loads while the first group gathers
        threading.Thread(target=self._watch, name="committer-watch", daemon=True).start()
        atexit.register(self.close)
        # No wait for company: the child's readiness gathers it (see the module's docstring).
        self._gatherer: Gatherer[Parcel, Any] = Gatherer(
            self._send,
            wait_ms=0,
            size_max=size_max,
            name="committer-send",
            size_of=size_of_parcel,
            ready=self._await_ready,
        )

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def close(self) -> None:
        """End the child: the groups it holds are answered first, for up to `CLOSE_WAIT_S`; then it
        is told to stop, given `CLOSE_WAIT_S` more to finish, and killed. A group still unanswered
        then fails (503), though the child may have committed it (as any group whose child is lost);
        a group queued after this fails (503)."""
        atexit.unregister(self.close)
        deadline = time.monotonic() + CLOSE_WAIT_S
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            while self._pending and self._changed.wait(max(0.0, deadline - time.monotonic())):
                pass
            pipe, process = self._pipe, self._process
        if pipe is not None:
            # Stop, once what you hold is answered: unless a send to a child that does not read
            # holds the pipe, or the pipe takes nothing more, past the wait; then it is killed now.
            if self._sending.acquire(timeout=CLOSE_WAIT_S):
                try:
                    if select.select([], [pipe.fileno()], [], CLOSE_WAIT_S)[1]:
                        pipe.send_bytes(pickle.dumps(None, protocol=PROTOCOL))
                        stopping = True
                    else:
                        stopping = False
                except (OSError, ValueError):
                    stopping = False  # gone already
                finally:
                    self._sending.release()
                if stopping and process is not None:
                    process.join(timeout=CLOSE_WAIT_S)
            self._lost(pipe, "CommitterClosed")  # kills it if it still runs; fails what is unanswered

    # -- the sending thread (the gatherer's) -----------------------------------

    def _await_ready(self) -> None:
        with self._changed:
            while not self._ready and not self._closed:
                self._changed.wait()

    def _send(self, group: Group) -> None:
        try:
            payload = pickle.dumps([parcel for parcel, _ in group], protocol=PROTOCOL)
        except Exception as failure:  # noqa: BLE001 - this group only; nothing was sent
            log.exception("committer: a group of %d could not be sent", len(group))
            _fail(group, CommitterFailed(type(failure).__name__))
            return
        with self._changed:
            if self._closed:
                _fail(group, db.Unreachable("CommitterClosed"))
                return
            if self._pipe is None:
                if time.monotonic() - self._started_at < RESPAWN_MIN_S:
                    _fail(group, db.Unreachable("CommitterLost"))
                    return
                try:
                    self._start()
                except Exception as failure:  # noqa: BLE001 - no child: this group is answered 503
                    log.exception("committer: a child could not be started")
                    _fail(group, db.Unreachable(type(failure).__name__))
                    return
            pipe = self._pipe
            assert pipe is not None
            number = self._next
            self._next += 1
            self._pending[number] = (group, time.monotonic())
            self._ready = False
        try:
            with self._sending:
                pipe.send_bytes(pickle.dumps(number, protocol=PROTOCOL) + payload)
        except (OSError, ValueError):  # the child is gone: what it held fails, this group too
            self._lost(pipe, "CommitterLost")

    def _start(self) -> None:
        """Start a child (the caller holds `_changed`)."""
        self._started_at = time.monotonic()  # a failed start counts: at most one attempt a second
        # Spawned, not forked: the API process runs threads (a fork would copy their locks held).
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        try:
            process = context.Process(
                target=serve,
                args=(self.database_url, self.clock, self.writer_process, theirs),
                name="setapay-committer",
                daemon=False,
            )
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._pipe, self._process = ours, process
        self._ready = True
        self.started += 1
        threading.Thread(target=self._receive, args=(ours,), name="committer-receive", daemon=True).start()

    # -- the receiving thread (one per child; the only one that closes its pipe) --

    def _receive(self, pipe: Connection) -> None:
        try:
            while True:
                message = pickle.loads(pipe.recv_bytes())
                if message == READY:
                    with self._changed:
                        if self._pipe is pipe:
                            self._ready = True
                            self._changed.notify_all()
                    continue
                number, outcomes = message
                with self._changed:
                    held = self._pending.pop(number, None) if self._pipe is pipe else None
                    self._changed.notify_all()
                if held is not None:
                    _resolve(held[0], outcomes)
        except (EOFError, OSError):
            pass  # the child ended, or was killed
        except Exception:  # noqa: BLE001 - a garbled answer: the child is not trusted further
            log.exception("committer: the child's answer could not be read")
        finally:
            self._lost(pipe, "CommitterLost")
            with self._sending:  # no send can be under way on its descriptor as it is freed
                pipe.close()

    def _watch(self) -> None:
        """Kill a child that has not answered a group for `ANSWER_TIMEOUT_S` (its receiver may be
        blocked in the middle of a message): its receiver then reads the end of the pipe."""
        while not self._closed:
            time.sleep(WATCH_EVERY_S)
            with self._changed:
                pipe = self._pipe
            if pipe is not None and self._overdue(pipe):
                log.warning("the committer child answered no group in %.0f s: killed", ANSWER_TIMEOUT_S)
                self._lost(pipe, "CommitterLost")

    def _overdue(self, pipe: Connection) -> bool:
        with self._changed:
            if self._pipe is not pipe or not self._pending:
                return False
            oldest = min(sent for _, sent in self._pending.values())
        return time.monotonic() - oldest > ANSWER_TIMEOUT_S

    def _lost(self, pipe: Connection, why: str) -> None:
        """The child of `pipe` is gone, or must go: it is killed (with any child of its own) and
        every group it had not answered fails with `db.Unreachable(why)`."""
        with self._changed:
            if self._pipe is not pipe:
                return  # handled already
            process = self._process
            failed = [group for group, _ in self._pending.values()]
            self._pending.clear()
            self._pipe = self._process = None
            self._ready = True
            self._changed.notify_all()
        if process is not None:
            if process.is_alive():
                _kill_with_children(process)
            process.join(timeout=5)
        if failed:
            log.warning("committer: the child was lost with %d groups unanswered", len(failed))
        for group in failed:
            _fail(group, db.Unreachable(why))


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc (Linux; elsewhere, none)."""
    found = []
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            found.append(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
    return found


def _kill_with_children(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL a child and the processes it started (its writer child, which may hold the
    sequencer lock in a transaction of its own). The child is stopped first: its children cannot
    exit and be reaped under a stopped parent, so no pid listed is reused by another process before
    it is killed."""
    pid = process.pid
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGSTOP)
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    process.kill()


def _fail(group: Group, error: BaseException) -> None:
    for _, future in group:
        if not future.done():
            future.set_exception(error)


def _resolve(group: Group, outcomes: list[tuple[Any, ...]]) -> None:
    for (_, future), outcome in zip(group, outcomes):
        if outcome[0] == "ok":
            future.set_result(outcome[1])
        else:
            _, name, unreachable = outcome
            future.set_exception(db.Unreachable(name) if unreachable else CommitterFailed(name))


def _outcome(future: Future[Any]) -> tuple[Any, ...]:
    try:
        return ("ok", future.result())
    except BaseException as failure:  # noqa: BLE001 - answered to the parent, by class name
        return ("error", error_name(failure), isinstance(failure, db.UNREACHABLE))


def serve(database_url: str, clock: SystemClock, writer_process: bool, pipe: Connection) -> None:
    """The child: post each group it is handed (its number, then its parcels: two pickles in one
    message) with a `GroupCommitter`, say READY once it can take the next, and answer each group's
    outcomes in order, until its pipe closes or it is told to stop (the number None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from engine import collector
    from engine.store.group_commit import GroupCommitter
    from engine.store.ledger import Ledger

    engine = db.make_engine(database_url)
    collector.tune()
    committer = GroupCommitter(Ledger(engine, clock), ahead=True, writer_process=writer_process)
    sending = threading.Lock()
    held: queue.Queue[tuple[int, list[Future[Any]]] | None] = queue.Queue()

    def send(data: bytes) -> None:
        with sending:
            pipe.send_bytes(data)

    def answer() -> None:
        while (item := held.get()) is not None:
            number, futures = item
            outcomes = [_outcome(future) for future in futures]  # in order: each waits for its commit
            try:
                data = pickle.dumps((number, outcomes), protocol=PROTOCOL)
            except Exception as failure:  # noqa: BLE001 - an answer that does not pickle fails its group
                log.exception("committer child: the answers of a group could not be sent")
                data = pickle.dumps((number, [("error", type(failure).__name__, False)] * len(futures)))
            try:
                send(data)
            except OSError:
                return

    answering = threading.Thread(target=answer, name="committer-answer")
    answering.start()
    ready = pickle.dumps(READY, protocol=PROTOCOL)
    try:
        while True:
            try:
                message = io.BytesIO(pipe.recv_bytes())
            except (EOFError, OSError):
                return
            number = pickle.load(message)
            if number is None:
                return  # `close`: stop once what is held is answered
            group: Group = [(parcel, Future()) for parcel in pickle.load(message)]
            for _, future in group:
                future.set_running_or_notify_cancel()
            held.put((number, [future for _, future in group]))
            try:
                committer.post(group)
            except BaseException as failure:  # noqa: BLE001 - every parcel gets an answer
                log.exception("committer child: a group of %d failed", len(group))
                _fail(group, failure)
            try:
                send(ready)
            except OSError:
                return
    finally:
        held.put(None)
        answering.join()
        committer.close()
        engine.dispose()
