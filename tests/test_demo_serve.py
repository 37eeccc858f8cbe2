"""`setapay demo --serve`: after the demo day the ledger stays up behind the API and the pages,
and the printed keys sign in (README, issue 13)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server import reserved_port, setapay_env

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300


def test_demo_serve_keeps_the_ledger_up_and_prints_keys_that_sign_in(tmp_path) -> None:
    reservation, port = reserved_port()  # held through the test: no other server is handed it
    env = setapay_env(f"sqlite+pysqlite:///{tmp_path}/unused.db")  # the demo makes its own database
    env["PYTHONPATH"] = str(REPO)
    args = ["demo", "--transactions", "400", "--ledger-transactions", "150", "--serve", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=tmp_path,
        env={**env, "COLUMNS": "400"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        printed, keys = [], {}
        deadline = time.monotonic() + START_TIMEOUT_S
        assert process.stdout is not None
        while "finance" not in keys and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            printed.append(line)
            found = re.search(r"(merchant|finance) key(?: \((\w+)\))?: (sp_\S+)", line)
            if found:
                keys[found.group(1)] = (found.group(2), found.group(3))
        assert set(keys) == {"merchant", "finance"}, "".join(printed)[-3000:]
        assert f"http://127.0.0.1:{port}/ui/" in "".join(printed)
        merchant_id, merchant_key = keys["merchant"]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as c:
            while time.monotonic() < deadline:
                try:
                    form = c.get("/ui/login")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token is not None, form.text
            signed_in = c.post("/ui/login", data={"csrf": token.group(1), "key": merchant_key})
            assert signed_in.headers["location"] == f"/ui/merchants/{merchant_id}"
            home = c.get(f"/ui/merchants/{merchant_id}")
            assert home.status_code == 200
            # The server's clock is on the demo day's evening: "today" on the page is the demo day.
            assert "2026年12月15日" in home.text
            api = httpx.get(
                f"{base}/v1/merchants/{merchant_id}/rewards", headers={"Authorization": f"Bearer {merchant_key}"}
            )
            assert api.status_code == 200 and api.json()["purchases"] > 0, api.text
            assert f"¥{api.json()['coin_sales']:,}" in home.text  # the month's sales: the demo day's
        finance_key = keys["finance"][1]
        budget = httpx.get(f"{base}/ui/campaigns", headers={"Authorization": f"Bearer {finance_key}"})
        assert budget.status_code == 303, "the pages take a session, not a bearer key"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        reservation.close()
