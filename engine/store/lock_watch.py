"""Letting go of a sequencer lock whose holder stopped (PostgreSQL).

Every writer takes the sequencer lock (the `ledger_head` row) and holds it to its commit. A
process stopped while it held it (frozen, stopped by a signal or a debugger, its VM paused)
held every other process's postings back until something killed it: helper-93 stopped one
committer child under load, and no payment was posted in any API process for ~90 s, until the
child's parent gave up on it. `idle_in_transaction_session_timeout` does not cover it: a client
stopped inside a pipeline or a COPY (how a group writes) leaves its session active, waiting for
the client, and even after a pipelined send the server's idle timer was seen not to fire.

Each API process watches instead (`run`, a daemon thread, its own connection): every
`INTERVAL_S` it ends, with `pg_terminate_backend`, a session of its role that holds a row lock
on `ledger_head`, has been stopped for `IDLE_S` (idle in its transaction, or in a statement
waiting for its client: a pipeline before its Sync, a COPY's rows) and keeps another session
waiting. A unit of work sends its statements one after another, its Python between them well
under a second (the lifecycle runs go by
chunks of `lifecycle.CHUNK_MAX`), so no live one is idle that long. The ended transaction is
rolled back whole, as a killed process's is: its requests answer 503 and their retries are
decided anew. Readers (a reconciliation's snapshot) hold no row lock and are never ended.
Only sessions of the watch's own database role are ended (all of the API's, in a deployment
with one role); a failure of the look-up is logged once a kind.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

IDLE_S = 15.0
INTERVAL_S = 5.0

# The holders of the sequencer lock (a row lock on `ledger_head`: FOR UPDATE's RowShareLock or an
# UPDATE's RowExclusiveLock; readers take neither) of this database and this role (the only ones
# `pg_terminate_backend` may end without superuser rights: another's would fail the statement),
# stopped for `%s` s: idle in their transaction, or in a statement waiting for their client's next
# message (a pipeline before its Sync, a COPY's rows: `ClientRead`). `pg_blocking_pids` (which takes
# the lock manager's state) is asked only when there is such a holder, and only of the sessions
# waiting for a lock.
_RELEASE_SQL = """
WITH stuck AS MATERIALIZED (
  SELECT a.pid
  FROM pg_locks AS l
  JOIN pg_stat_activity AS a ON a.pid = l.pid
  WHERE l.granted AND l.relation = 'ledger_head'::regclass
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.mode IN ('RowShareLock', 'RowExclusiveLock')
    AND a.pid <> pg_backend_pid() AND a.usename = current_user
    AND (a.state IN ('idle in transaction', 'idle in transaction (aborted)')
         OR (a.state = 'active' AND a.wait_event = 'ClientRead'))
    AND a.state_change < clock_timestamp() - make_interval(secs => %s)
), blocking AS MATERIALIZED (
  SELECT DISTINCT unnest(pg_blocking_pids(w.pid)) AS pid
  FROM pg_stat_activity AS w
  WHERE w.wait_event_type = 'Lock' AND w.datname = current_database() AND EXISTS (SELECT 1 FROM stuck)
)
SELECT DISTINCT s.pid, pg_terminate_backend(s.pid) FROM stuck AS s JOIN blocking AS b ON b.pid = s.pid
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
    """The watch on a daemon thread of its own, on PostgreSQL, with a connection of its own: the
    units of work waiting behind a stuck lock may hold every connection of the app's pool."""
    if engine.dialect.name != "postgresql":
        return
    own = create_engine(
        engine.url,
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10},
        hide_parameters=True,
    )
    threading.Thread(target=run, args=(own, stop), name="lock-watch", daemon=True).start()
