"""Letting go of a sequencer lock whose holder stopped (PostgreSQL).

Every writer takes the sequencer lock (the `ledger_head` row) and holds it to its commit. A
process stopped while it held it (frozen, stopped by a signal or a debugger, its VM paused)
held every other process's postings back until something killed it: helper-93 stopped one
committer child under load, and no payment was posted in any API process for ~90 s, until the
child's parent gave up on it. `idle_in_transaction_session_timeout` does not cover it: after a
pipelined send (how a group writes) the server reads the client's flush and its idle timer is
not armed again until the next statement.

Each API process watches instead (`run`, a daemon thread): every `INTERVAL_S` it ends, with
`pg_terminate_backend`, a session that holds a row lock on `ledger_head`, has been idle in its
transaction for `IDLE_S` and keeps another session waiting. A unit of work sends its statements
one after another, its Python between them well under a second (the lifecycle runs go by
chunks of `lifecycle.CHUNK_MAX`), so no live one is idle that long. The ended transaction is
rolled back whole, as a killed process's is: its requests answer 503 and their retries are
decided anew. Readers (a reconciliation's snapshot) hold no row lock and are never ended.
Ending another session needs the same database role, or `pg_signal_backend`; without it the
watch logs once and does nothing.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

IDLE_S = 15.0
INTERVAL_S = 5.0

_RELEASE_SQL = """
SELECT a.pid, pg_terminate_backend(a.pid)
FROM pg_stat_activity AS a
WHERE a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')
  AND a.state_change < clock_timestamp() - make_interval(secs => %s)
  AND EXISTS (
    SELECT 1 FROM pg_locks AS l
    WHERE l.pid = a.pid AND l.granted AND l.relation = 'ledger_head'::regclass
      AND l.mode IN ('RowShareLock', 'RowExclusiveLock')
  )
  AND EXISTS (SELECT 1 FROM pg_stat_activity AS w WHERE a.pid = ANY (pg_blocking_pids(w.pid)))
"""


def release_stuck(engine: Engine, idle_s: float = IDLE_S) -> list[int]:
    """End every session that holds the sequencer lock idle for `idle_s` while another waits;
    the process ids of those ended. Nothing on SQLite (one process holds its write lock)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        rows = connection.exec_driver_sql(_RELEASE_SQL, (idle_s,)).all()
    ended = [int(pid) for pid, done in rows if done]
    for pid in ended:
        log.error(
            "lock-watch: ended database session %d: it held the sequencer lock idle for over %.0f s "
            "while others waited (its process stopped?); what it was writing is rolled back",
            pid,
            idle_s,
        )
    return ended


def run(engine: Engine, stop: threading.Event, interval_s: float = INTERVAL_S, idle_s: float = IDLE_S) -> None:
    """`release_stuck` every `interval_s` until `stop` is set; a failure is logged once a kind."""
    failed: set[str] = set()
    while not stop.wait(interval_s):
        try:
            release_stuck(engine, idle_s)
        except Exception as exc:  # noqa: BLE001 - the watch never ends the process it runs in
            kind = type(exc).__name__
            if kind not in failed:
                failed.add(kind)
                log.warning("lock-watch: could not look for a stuck sequencer lock (%s)", kind)


def start(engine: Engine, stop: threading.Event) -> None:
    """The watch on a daemon thread of its own, on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        threading.Thread(target=run, args=(engine, stop), name="lock-watch", daemon=True).start()
