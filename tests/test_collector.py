"""The garbage collector's tuning in a process of its own (`engine/collector.py`), as the
`setapay` command runs it: the demo freezes its application before posting its day
(`settle`) and lets it go once the demo is over (`release`), so a process that runs the demo
and then serves (`setapay demo --serve`) or runs it again (`bench/demo_posting.py --runs`)
does not keep every run's application for good."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import gc, sys, weakref
    from engine import collector
    collector.tune()  # as engine.cli.main does for the console command
    import api.app
    from setapay_demo import ledger
    apps = []
    build = api.app.create_app
    def spy(*args, **kwargs):
        app = build(*args, **kwargs)
        apps.append(weakref.ref(app))
        return app
    api.app.create_app = spy
    frozen = gc.get_freeze_count()
    for run in range(2):
        summary = ledger.run_ledger_demo(40, database_url=f"sqlite:///{sys.argv[1]}/run{run}.db", out_dir=sys.argv[1])
        assert summary["check"]["ok"]
        del summary
        gc.collect()
        print(run, sum(app() is not None for app in apps), gc.get_freeze_count() > frozen, flush=True)
    """
)


def test_the_demo_lets_its_frozen_application_go(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # After each run no application is left alive, and the freeze still holds start-up's
    # objects and more (the modules the demo imported), not less than `tune` froze.
    assert done.stdout.split("\n")[:2] == ["0 0 True", "1 0 True"]
