"""The history import and a budget lowered later in the history (helper-110): the database keeps
each campaign within its latest budget, so a version entered first that lowers a budget below
what the history issued before it (refunds bringing it back under by the version's instant)
stopped the import with a traceback of the check `issued_within_budget`. It now stops cleanly,
nothing of the refused group written, and the documented order (the lines up to the version's
instant, then the version, then the rest) imports it all."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import func, select

from engine.store.importer import BudgetLoweredLater, import_history
from engine.store.models import PaymentRow
from tests.finance.support import Ward
from tests.server import run_cli, setapay_env

HEADER = "payment_id,type,wallet_id,merchant_id,terminal_id,occurred_at,amount,points_used,items,original_payment_id"
BEFORE = [f"P{i},purchase,W{i},M001,TM001,2026-11-15T10:00:{i:02d}+09:00,100000,,," for i in range(7)]  # 7,000
BEFORE += [f"R{i},refund,,,TM001,2026-11-16T10:00:{i:02d}+09:00,100000,,,P{i}" for i in range(4)]  # 3,000 left
AFTER = ["P9,purchase,W9,M001,TM001,2026-11-25T10:00:00+09:00,100000,,,"]  # 4,000 of the 5,000


def _file(rows: list[str]) -> io.StringIO:
    return io.StringIO("\n".join([HEADER, *rows]) + "\n")


def _lower_budget(ward: Ward) -> None:
    ward.at("2026-11-20T00:00")
    r = ward.client.patch("/v1/campaigns/PB", json={"budget": 5_000}, headers=ward.admin)
    assert r.status_code == 200, r.text


def _payments(ward: Ward) -> int:
    with ward.engine.connect() as c:
        return c.execute(select(func.count()).select_from(PaymentRow)).scalar_one()


def _assert_reconciles(ward: Ward) -> None:
    report = ward.reconcile()
    assert report["ok"], {n: c for n, c in report["checks"].items() if not c["pass"]}


def test_a_budget_lowered_later_stops_the_import_cleanly(early: Ward, tmp_path) -> None:
    early.merchant("M001")
    early.campaign("PB", 100, budget=10_000)
    _lower_budget(early)
    early.at("2026-12-01T09:00")
    with pytest.raises(BudgetLoweredLater):
        import_history(early.ledger, _file(BEFORE + AFTER), io.StringIO(), source="OLDAPP", group=5)
    imported = _payments(early)
    assert imported == 5  # the first group (5 x 1,000 points); the second would pass 5,000
    path = tmp_path / "history.csv"
    path.write_text(_file(BEFORE + AFTER).getvalue(), encoding="utf-8")
    done = run_cli(setapay_env(early.settings.database_url), "import", str(path), "--source", "OLDAPP", in_process=True)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "issued more points than a campaign's latest budget" in done.stderr
    assert "Traceback" not in done.stderr
    assert _payments(early) == imported
    _assert_reconciles(early)


def test_the_lines_before_the_version_then_the_version_then_the_rest(early: Ward) -> None:
    early.merchant("M001")
    early.campaign("PB", 100, budget=10_000)
    early.at("2026-11-17T00:00")
    assert import_history(early.ledger, _file(BEFORE), io.StringIO(), source="OLDAPP").imported == len(BEFORE)
    _lower_budget(early)
    early.at("2026-12-01T09:00")
    assert import_history(early.ledger, _file(AFTER), io.StringIO(), source="OLDAPP").imported == len(AFTER)
    _assert_reconciles(early)
