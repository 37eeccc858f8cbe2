"""Backups that restore (issue 14): `setapay backup` while a real server takes purchases, `setapay
restore` into an empty database, and `setapay reconcile` on the copy passes with the signed chain
heads still verifying; on SQLite and PostgreSQL.

The server runs two days behind (SETAPAY_CLOCK_OFFSET_S), so the day it posts on is a finished
business day by the real clock and `setapay sign-heads` signs its chain head: the copy must carry
signatures that still verify, not pass the check for want of any.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import func, select

from engine.sealing import generate_key_b64
from engine.settlement import signing
from engine.store.db import make_engine
from engine.store.models import ChainHeadRow, PaymentRow
from tests.api.conftest import BACKENDS, WIDE_OCCURRED_AT_ENV
from tests.server import run_cli, setapay_env
from tests.ward import Ward

DAY_S = 86_400


def _count(database_url: str, model) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(model)).scalar_one()
    finally:
        engine.dispose()


def _payment_ids(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(select(PaymentRow.id)).scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backup_under_load_restores_and_reconciles(backend, start_server, databases, tmp_path):
    keys = {
        "SETAPAY_DATA_KEY_B64": generate_key_b64(),
        "SETAPAY_SIGNING_KEY_B64": signing.private_key_b64(signing.generate_private_key()),
    }
    server = start_server(backend, env={**WIDE_OCCURRED_AT_ENV, **keys, "SETAPAY_CLOCK_OFFSET_S": str(-2 * DAY_S)})
    ward = Ward(server)
    before = [ward.buy("T_SHOTEN_1", f"W{i}", 1000 + i)["id"] for i in range(10)]
    ward.refund("T_SHOTEN_1", before[0], 500)
    now_env = {**server.env, "SETAPAY_CLOCK_OFFSET_S": "0"}
    signed = run_cli(now_env, "sign-heads")
    assert signed.returncode == 0, signed.stderr
    assert "signed the chain head" in signed.stdout

    # Purchases keep arriving while the backup runs.
    stop = threading.Event()
    during: list[str] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            during.append(ward.buy("T_CONV", f"WL{i % 50}", 700 + i)["id"])
            i += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.3)
        acknowledged_before_backup = set(before) | set(during)
        out = tmp_path / "ledger.backup"
        made = server.cli("backup", str(out))
        time.sleep(0.3)
    finally:
        stop.set()
        loader.join()
    assert made.returncode == 0, made.stderr
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    assert len(during) > 0
    assert server.cli("backup", str(out)).returncode == 2  # never overwrites

    # Restore into an empty database of the same kind, and prove the copy whole.
    copy_url = databases.create(backend)
    copy_env = setapay_env(copy_url, {**keys, "SETAPAY_CLOCK_OFFSET_S": "0"})
    restored = run_cli(copy_env, "restore", str(out))
    assert restored.returncode == 0, restored.stderr
    copied = _payment_ids(copy_url)
    assert acknowledged_before_backup <= copied  # every answer given before the backup began is in it
    assert copied <= _payment_ids(server.database_url)
    assert _count(copy_url, ChainHeadRow) == _count(server.database_url, ChainHeadRow) > 0

    report = run_cli(copy_env, "reconcile", "--json")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-2000:]
    checks = json.loads(report.stdout)["checks"]
    assert all(check["pass"] for check in checks.values()), checks
    assert checks["signed_chain_heads_valid"]["pass"]

    # A restore never merges two ledgers: the copy is no longer empty.
    again = run_cli(copy_env, "restore", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_refuses_what_is_not_a_backup(backend, databases, tmp_path):
    bogus = tmp_path / "bogus.backup"
    bogus.write_bytes(b"not a backup at all")
    env = setapay_env(databases.create(backend))
    done = run_cli(env, "restore", str(bogus))
    assert done.returncode == 2 and "is not" in done.stderr
    assert run_cli(env, "restore", str(tmp_path / "missing")).returncode == 2
    # Nothing to back up, or nowhere to write it: a refusal, not a traceback (helper-82).
    missing = setapay_env(f"sqlite+pysqlite:///{tmp_path}/none.db") if backend == "sqlite" else env
    for args in ((str(tmp_path / "no-dir" / "out.backup"),), (str(tmp_path / "out.backup"),)):
        done = run_cli(missing, "backup", *args)
        if backend == "postgresql" and args[0].endswith("/out.backup"):
            continue  # an empty PostgreSQL database backs up fine
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def _ledger_head(database_url: str, column: str):
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql(f"SELECT {column} FROM ledger_head").scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restore_is_a_new_incarnation_and_refuses_a_newer_schema(backend, databases, tmp_path):
    """The restored ledger gets a new `ledger_id` (answers cached beside the old one are not its
    own); a backup whose schema this release does not know (a newer release's) is refused before
    anything is written (helper-82: it restored, then every command failed with a traceback); a
    truncated SQLite backup is refused cleanly, leaving no empty database file behind."""
    source = databases.create(backend)
    env = setapay_env(source)
    assert run_cli(env, "db", "upgrade").returncode == 0
    good = tmp_path / "good.backup"
    assert run_cli(env, "backup", str(good)).returncode == 0
    copy = databases.create(backend)
    copy_env = setapay_env(copy)
    restored = run_cli(copy_env, "restore", str(good))
    assert restored.returncode == 0, restored.stderr
    assert len(_ledger_head(copy, "ledger_id")) == 32
    assert _ledger_head(copy, "ledger_id") != _ledger_head(source, "ledger_id")

    engine = make_engine(source)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '29991231_future'")
    finally:
        engine.dispose()
    newer = tmp_path / "newer.backup"
    assert run_cli(env, "backup", str(newer)).returncode == 0
    target = databases.create(backend)
    refused = run_cli(setapay_env(target), "restore", str(newer))
    assert refused.returncode == 2 and "29991231_future" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    engine = make_engine(target)
    try:
        with engine.connect() as connection:
            assert not connection.dialect.get_table_names(connection), "a refused restore wrote tables"
    finally:
        engine.dispose()
    if backend == "sqlite":
        truncated = tmp_path / "truncated.backup"
        truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        fresh = tmp_path / "fresh.db"
        done = run_cli(setapay_env(f"sqlite+pysqlite:///{fresh}"), "restore", str(truncated))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert not fresh.exists(), "a refused restore left a database file behind"
