"""A server configured with another data key than the one that sealed the ward's secrets.

The payment app's receipt secret is sealed in the database under the data key (SPEC §9.1). A
server started with another key cannot open it: that is the operator's misconfiguration, not the
terminal's, so a purchase is answered 503 `service_unavailable` (retried once the key is fixed),
not 500, writes nothing, and the server logs one line saying which setting to check (never a key,
a secret or a sealed blob). Real SQLite and PostgreSQL; the same application code as production.
"""

from __future__ import annotations

import logging
import warnings

from sqlalchemy import text

from api.app import create_app
from engine.sealing import generate_key_b64
from engine.settings import Settings
from tests.finance.support import Ward


def test_a_data_key_that_did_not_seal_the_app_secret_is_a_503_that_says_why(database_url, caplog) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    ward = Ward(database_url)
    try:
        ward.merchant("M1")
        ward.purchase("M1", "W1", "2026-11-30T10:00", 1000)
        other = create_app(
            Settings(
                database_url=database_url,
                group_commit_wait_ms=0,
                data_key_b64=generate_key_b64(),
                signing_key_b64=ward.signing_key_b64,
            ),
            clock=ward.clock,
        )
        body = ward.payment_app.sign_body(
            {
                "type": "purchase",
                "wallet_id": "W2",
                "merchant_id": "M1",
                "terminal_id": "TM1",
                "occurred_at": "2026-11-30T10:00:00+09:00",
                "amount": 2000,
                "points_used": 0,
            }
        )
        with caplog.at_level(logging.ERROR, logger="setapay.api"), TestClient(other) as client:
            r = client.post(
                "/v1/transactions", json=body, headers={**ward.terminal_keys["TM1"], "Idempotency-Key": "o1"}
            )
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "service_unavailable" and r.json()["detail"] == "SealingError"
        said = [rec.getMessage() for rec in caplog.records if "data key" in rec.getMessage()]
        assert len(said) == 1 and "SETAPAY_DATA_KEY_B64" in said[0]
        assert ward.data_key_b64 not in said[0]
        with ward.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM payment")).scalar_one() == 1
    finally:
        ward.close()
