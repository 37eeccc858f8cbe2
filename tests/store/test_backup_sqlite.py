"""`setapay backup` of the embedded SQLite ledger while it is written to: the copy ends, and is
the database as of one instant (helper-82's probe: copied in steps of 4,096 pages, every commit
between two steps restarted it from the first page, and a 76 MB ledger taking ~50 commits a second
never finished)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from engine.store import backup


def test_a_backup_ends_while_commits_go_on(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, blob BLOB)")
        c.executemany("INSERT INTO filler (blob) VALUES (?)", [(bytes(4000),) for _ in range(6_000)])  # ~6,000 pages
        c.execute("CREATE TABLE tick (n INTEGER)")
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        writer = sqlite3.connect(path, isolation_level=None)
        while not stop.is_set():
            writer.execute("INSERT INTO tick (n) VALUES (?)", (commits[0],))
            commits[0] += 1
            time.sleep(0.002)
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    out = tmp_path / "busy.backup"
    done = threading.Event()
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            backup.backup(f"sqlite+pysqlite:///{path}", out)
        except BaseException as error:  # reported below
            failure.append(error)
        finally:
            done.set()

    copier = threading.Thread(target=copy, daemon=True)  # a copy that never ends must not hang the suite
    try:
        started = commits[0]
        copier.start()
        assert done.wait(60), "the backup did not end while commits went on"
        assert not failure, failure
        assert commits[0] > started, "no commit came during the copy"
    finally:
        stop.set()
        thread.join()
    with sqlite3.connect(out) as c:
        assert c.execute("SELECT count(*) FROM filler").fetchone()[0] == 6_000
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
