"""An operator's mistakes get one line saying what to mend, exit 2, and no traceback (helper-93:
tracebacks for a database away or misnamed, a missing output directory, a malformed key; and
`db upgrade <unknown revision>` said "upgraded" and upgraded to the head)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setapay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    ours = {k: v for k, v in os.environ.items() if not k.startswith("SETAPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env={**ours, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url, said",
    [
        (f"postgresql+psycopg://ward:s3cret-pw@127.0.0.1:{_closed_port()}/ledger", "cannot be reached"),
        # A password holding `@` reads as part of the host, which the driver names (helper-100).
        ("postgresql+psycopg://ward:s3cret-pw@no-such-host.invalid/ledger", "cannot be reached"),
        ("postgresql+psycopg://ward:s3cret@pw@no-such-host.invalid/ledger", "cannot be reached"),
        ("notaurl", "is not a database URL"),
        ("mysql://ward:s3cret-pw@127.0.0.1/ledger", "is not a database URL"),
    ],
)
def test_a_database_away_or_misnamed_is_one_line(url: str, said: str) -> None:
    for command in (("keys", "list"), ("reconcile",), ("db", "upgrade")):
        done = _setapay({"SETAPAY_DATABASE_URL": url}, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert said in done.stderr and "Traceback" not in done.stderr, (command, done.stderr)
        assert "s3cret" not in done.stderr + done.stdout and "pw@" not in done.stderr, done.stderr


def test_a_failure_that_is_not_the_operators_keeps_its_traceback(sqlite_url: str) -> None:
    """A deadlock, a missing table or a statement the code got wrong is not the operator's to
    mend: no one-line message hides it (helper-100)."""
    import sqlite3

    import psycopg
    from sqlalchemy.exc import ObjectNotExecutableError, OperationalError

    from engine.cli import operator_problem

    assert operator_problem(ObjectNotExecutableError("SELECT 1")) is None
    deadlock = OperationalError("UPDATE …", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
    assert operator_problem(deadlock) is None
    assert operator_problem(OperationalError("SELECT …", {}, sqlite3.OperationalError("no such table: x"))) is None
    assert operator_problem(ValueError("a bug")) is None


def test_an_unknown_revision_and_a_malformed_key_are_one_line(sqlite_url: str) -> None:
    env = {"SETAPAY_DATABASE_URL": sqlite_url}
    assert _setapay(env, "db", "upgrade").returncode == 0
    unknown = _setapay(env, "db", "upgrade", "nosuchrev")
    assert unknown.returncode == 2 and "nosuchrev" in unknown.stderr and "Traceback" not in unknown.stderr
    assert "upgraded" not in unknown.stderr
    bad_key = _setapay({**env, "SETAPAY_SIGNING_KEY_B64": "abc"}, "sign-heads")
    assert bad_key.returncode == 2 and "signing key" in bad_key.stderr, bad_key.stderr
    assert "Traceback" not in bad_key.stderr
