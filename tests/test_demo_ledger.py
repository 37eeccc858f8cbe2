"""The ledger half of the demo: a ward day posted through the API leaves a whole ledger."""

from setapay_demo.ledger import run_ledger_demo


def test_ledger_demo_posts_through_the_api_and_the_ledger_checks(sqlite_url):
    summary = run_ledger_demo(300, database_url=sqlite_url)
    counts = summary["counts"]
    assert counts["purchases accepted"] == 300
    assert counts["retries replayed"] >= 3
    assert not [name for name in counts if name.startswith("declined")]
    check = summary["check"]
    assert check["ok"], check["checks"]
    assert check["trial_balance"] == 0
    issued = sum(c["issued"] for c in check["campaigns"].values())
    assert issued > 0
    wallet = summary["sample_wallet"]
    assert wallet["available"] + wallet["pending"] > 0
