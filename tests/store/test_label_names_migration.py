"""Migration `20261211_label_names`: stored names and schemes mended to the rules of a `Label`.

Records stored before the rules (a name with a NUL, a line separator or a bidirectional override,
a blank name, a scheme with a line break) are read back through the same models, which now refuse
them; the migration mends them (each refused character becomes U+FFFD, a name with nothing visible
becomes the record's id) in every table that holds records, and leaves every other record as it
was, byte for byte. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json

from sqlalchemy import text

from engine.model import Campaign, Merchant
from engine.store import db
from engine.store.config import Config

BEFORE = "20261210_ui_sessions_ended"
CERTIFIED = {"valid_from": "2026-01-01T00:00:00+09:00", "valid_until": "2036-01-01T00:00:00+09:00"}


def _merchant(merchant_id: str, name: str, scheme: str | None = None) -> str:
    record = {"id": merchant_id, "name": name, "merchant_class": "small"}
    if scheme is not None:
        record["ethical_certifications"] = [{"scheme": scheme, **CERTIFIED}]
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _campaign(name: str, version: int) -> str:
    record = {
        "id": "C_OLD",
        "name": name,
        "version": version,
        "starts_at": "2026-01-01T00:00:00+09:00",
        "ends_at": "2036-01-01T00:00:00+09:00",
        "tiers": [{"match": {"merchant_ids": ["M_GOOD"]}, "rate_bp": 100}],
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


STORED_MERCHANTS = {
    "M_BAD": (_merchant("M_BAD", "M\x00x\u202egnp.exe", scheme="setagaya\nethical"), "M\ufffdx\ufffdgnp.exe"),
    "M_BLANK": (_merchant("M_BLANK", " \t\u3000"), "M_BLANK"),
    "M_UNSEEN": (_merchant("M_UNSEEN", "\u200b\u200d\xad"), "M_UNSEEN"),
    "M_MARKED": (_merchant("M_MARKED", "a\u200fb\ufeff"), "a\ufffdb\ufffd"),
    "M_GOOD": (_merchant("M_GOOD", "良い店 🧑\u200d🍳", scheme="setagaya_ethical"), "良い店 🧑\u200d🍳"),
}


def test_stored_names_are_mended_and_read_back(database_url) -> None:
    db.upgrade(database_url, BEFORE)
    engine = db.make_engine(database_url)
    try:
        with engine.begin() as c:
            for merchant_id, (record_json, _) in STORED_MERCHANTS.items():
                c.execute(
                    text("INSERT INTO merchant (id, record_json, created_at_us, updated_at_us) VALUES (:i, :j, 1, 1)"),
                    {"i": merchant_id, "j": record_json},
                )
                c.execute(
                    text(
                        "INSERT INTO merchant_version (merchant_id, version, record_json, created_at_us)"
                        " VALUES (:i, 1, :j, 1)"
                    ),
                    {"i": merchant_id, "j": record_json},
                )
            c.execute(
                text("INSERT INTO campaign (id, current_version, issued_net, created_at_us) VALUES ('C_OLD', 2, 0, 1)")
            )
            for version, name in ((1, "old\u2028name"), (2, "新しい名前")):
                c.execute(
                    text(
                        "INSERT INTO campaign_version (campaign_id, version, record_json, created_at_us)"
                        " VALUES ('C_OLD', :v, :j, 1)"
                    ),
                    {"v": version, "j": _campaign(name, version)},
                )
            untouched = c.execute(text("SELECT record_json FROM campaign_version WHERE version = 2")).scalar_one()
        engine.dispose()

        db.upgrade(database_url)
        with engine.connect() as c:
            for table in ("merchant", "merchant_version"):
                key = "id" if table == "merchant" else "merchant_id"
                stored = dict(c.execute(text(f"SELECT {key}, record_json FROM {table}")).all())
                for merchant_id, (_, name) in STORED_MERCHANTS.items():
                    merchant = Merchant.from_stored(stored[merchant_id])  # the model takes it now
                    assert merchant.name == name
                assert Merchant.from_stored(stored["M_BAD"]).ethical_certifications[0].scheme == "setagaya\ufffdethical"
                assert stored["M_GOOD"] == STORED_MERCHANTS["M_GOOD"][0]  # a record that keeps the rules, as it was
            versions = dict(c.execute(text("SELECT version, record_json FROM campaign_version")).all())
            assert Campaign.model_validate_json(versions[1]).name == "old\ufffdname"
            assert versions[2] == untouched
        config = Config(engine)
        assert {m["id"]: m["name"] for m in config.list_merchants()} == {
            merchant_id: name for merchant_id, (_, name) in STORED_MERCHANTS.items()
        }
        assert config.get_campaign("C_OLD", version=1).name == "old\ufffdname"
        assert config.get_campaign("C_OLD").name == "新しい名前"
    finally:
        engine.dispose()
