"""Configuration records (merchants, campaigns with versions, terminals); API keys live in
`engine/store/keys.py` (`create_key` and `authenticate` here delegate to it).

Every change to merchants or campaigns bumps `ledger_head.catalog_version`
under the sequencer lock, so each process reloads its cached catalog before
it rates the next group and no group is rated against a stale catalog.
"""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import sealing
from engine.clock import SystemClock
from engine.errors import EngineError
from engine.model import Campaign, Merchant
from engine.store.models import (
    CampaignRow,
    CampaignVersionRow,
    LedgerHead,
    MerchantRow,
    MerchantVersionRow,
    TerminalRow,
)
from engine.timeutil import to_us

ROLES = ("admin", "finance", "merchant", "terminal")


@dataclasses.dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    merchant_id: str | None
    terminal_id: str | None


def _bump(session: Session) -> None:
    stmt = select(LedgerHead).where(LedgerHead.id == 1)
    if session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    head = session.execute(stmt).scalar_one()
    head.catalog_version += 1


def _dump(record) -> str:
    return record.model_dump_json()


class Config:
    def __init__(self, engine: Engine, settings=None, clock=None) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock or SystemClock()

    # -- bank details: sealed at rest, never in record_json ----------------

    def _data_key(self):
        from engine import keyring
        from engine.settings import Settings

        return keyring.data_key(self.settings or Settings())

    def _store_record(self, row: MerchantRow, merchant: Merchant) -> None:
        if merchant.bank_account is not None:
            row.bank_account_sealed = sealing.seal_bank_account(self._data_key(), merchant.id, merchant.bank_account)
        row.record_json = merchant.model_copy(update={"bank_account": None}).model_dump_json()

    def bank_account(self, merchant_id: str, session: Session | None = None):
        """The merchant's payout account, opened from its sealed form (None when not on file).

        Pass the caller's session when it holds the write lock: on SQLite a second
        session would wait for that lock forever.
        """
        if session is None:
            with Session(self.engine) as own:
                return self.bank_account(merchant_id, own)
        row = session.get(MerchantRow, merchant_id)
        if row is None or row.bank_account_sealed is None:
            return None
        return sealing.open_bank_account(self._data_key(), merchant_id, row.bank_account_sealed)

    @staticmethod
    def public_record(row: MerchantRow) -> dict:
        record = json.loads(row.record_json)
        record.pop("bank_account", None)
        record["bank_account_on_file"] = row.bank_account_sealed is not None
        return record

    # -- merchants ---------------------------------------------------------

    def create_merchant(self, merchant: Merchant) -> dict:
        with Session(self.engine) as session, session.begin():
            _bump(session)
            if session.get(MerchantRow, merchant.id) is not None:
                raise EngineError(409, "already_exists", f"merchant {merchant.id} exists")
            now = self.clock.now_us()
            row = MerchantRow(id=merchant.id, created_at_us=now, updated_at_us=now)
            self._store_record(row, merchant)
            session.add(row)
            session.flush()
            self._add_version(session, row, now)
            return self.public_record(row)

    def update_merchant(self, merchant_id: str, patch: dict) -> dict:
        with Session(self.engine) as session, session.begin():
            _bump(session)
            row = session.get(MerchantRow, merchant_id)
            if row is None:
                raise EngineError(404, "not_found", f"merchant {merchant_id} is not known")
            current = json.loads(row.record_json)
            if "id" in patch and patch["id"] != merchant_id:
                raise EngineError(422, "invalid_request", "id cannot change")
            merchant = Merchant.model_validate({**current, **patch})
            self._store_record(row, merchant)
            row.updated_at_us = self.clock.now_us()
            self._add_version(session, row, row.updated_at_us)
            return self.public_record(row)

    @staticmethod
    def _add_version(session: Session, row: MerchantRow, now: int) -> None:
        """Keep the record as of `now`, so re-rating uses the one in force at each acceptance."""
        latest = session.execute(
            select(func.max(MerchantVersionRow.version)).where(MerchantVersionRow.merchant_id == row.id)
        ).scalar_one()
        session.add(MerchantVersionRow(merchant_id=row.id, version=(latest or 0) + 1, record_json=row.record_json,
                                       created_at_us=now))

    def get_merchant(self, merchant_id: str) -> dict:
        with Session(self.engine) as session:
            row = session.get(MerchantRow, merchant_id)
            if row is None:
                raise EngineError(404, "not_found", f"merchant {merchant_id} is not known")
            return self.public_record(row)

    def list_merchants(self) -> list[dict]:
        with Session(self.engine) as session:
            rows = session.execute(select(MerchantRow).order_by(MerchantRow.id)).scalars()
            return [self.public_record(r) for r in rows]

    # -- campaigns ---------------------------------------------------------

    def create_campaign(self, campaign: Campaign) -> Campaign:
        campaign = campaign.model_copy(update={"version": 1})
        with Session(self.engine) as session, session.begin():
            _bump(session)
            if session.get(CampaignRow, campaign.id) is not None:
                raise EngineError(409, "already_exists", f"campaign {campaign.id} exists")
            now = self.clock.now_us()
            session.add(CampaignRow(id=campaign.id, current_version=1, issued_net=0, budget=campaign.budget,
                                    created_at_us=now))
            session.flush()
            session.add(CampaignVersionRow(campaign_id=campaign.id, version=1, record_json=_dump(campaign),
                                           created_at_us=now))
        return campaign

    def update_campaign(self, campaign_id: str, patch: dict) -> Campaign:
        """A new version; a started campaign may not end before now nor budget below what it issued."""
        with Session(self.engine) as session, session.begin():
            _bump(session)
            row = session.get(CampaignRow, campaign_id)
            if row is None:
                raise EngineError(404, "not_found", f"campaign {campaign_id} is not known")
            current_row = session.get(CampaignVersionRow, (campaign_id, row.current_version))
            current = Campaign.model_validate_json(current_row.record_json)
            if "id" in patch and patch["id"] != campaign_id:
                raise EngineError(422, "invalid_request", "id cannot change")
            patch = {k: v for k, v in patch.items() if k != "version"}
            updated = Campaign.model_validate(
                {**json.loads(current_row.record_json), **patch, "version": row.current_version + 1}
            )
            now = self.clock.now_us()
            if to_us(current.starts_at) <= now:
                if to_us(updated.starts_at) != to_us(current.starts_at):
                    raise EngineError(422, "campaign_started", "starts_at of a started campaign cannot change")
                if to_us(updated.ends_at) != to_us(current.ends_at) and to_us(updated.ends_at) < now:
                    raise EngineError(422, "campaign_started", "a campaign cannot end before now")
            if updated.budget is not None and updated.budget < row.issued_net:
                raise EngineError(422, "campaign_started", f"budget below the {row.issued_net} points already issued")
            row.current_version = updated.version
            row.budget = updated.budget
            session.add(CampaignVersionRow(campaign_id=campaign_id, version=updated.version,
                                           record_json=_dump(updated), created_at_us=now))
        return updated

    def get_campaign(self, campaign_id: str, version: int | None = None) -> Campaign:
        with Session(self.engine) as session:
            row = session.get(CampaignRow, campaign_id)
            if row is None:
                raise EngineError(404, "not_found", f"campaign {campaign_id} is not known")
            v = session.get(CampaignVersionRow, (campaign_id, version or row.current_version))
            if v is None:
                raise EngineError(404, "not_found", f"campaign {campaign_id} has no version {version}")
            return Campaign.model_validate_json(v.record_json)

    def list_campaigns(self) -> list[Campaign]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(CampaignVersionRow)
                .join(CampaignRow, CampaignRow.id == CampaignVersionRow.campaign_id)
                .where(CampaignVersionRow.version == CampaignRow.current_version)
                .order_by(CampaignRow.id)
            ).scalars()
            return [Campaign.model_validate_json(r.record_json) for r in rows]

    # -- terminals ---------------------------------------------------------

    def create_terminal(self, terminal_id: str, merchant_id: str) -> dict:
        with Session(self.engine) as session, session.begin():
            _bump(session)
            if session.get(MerchantRow, merchant_id) is None:
                raise EngineError(422, "unknown_merchant", f"merchant {merchant_id} is not known")
            if session.get(TerminalRow, terminal_id) is not None:
                raise EngineError(409, "already_exists", f"terminal {terminal_id} exists")
            session.add(TerminalRow(id=terminal_id, merchant_id=merchant_id, created_at_us=self.clock.now_us()))
        return {"id": terminal_id, "merchant_id": merchant_id}

    def get_terminal(self, terminal_id: str) -> dict:
        with Session(self.engine) as session:
            row = session.get(TerminalRow, terminal_id)
            if row is None:
                raise EngineError(404, "not_found", f"terminal {terminal_id} is not known")
            return {"id": row.id, "merchant_id": row.merchant_id}

    def update_terminal(self, terminal_id: str, patch: dict) -> dict:
        with Session(self.engine) as session, session.begin():
            _bump(session)
            row = session.get(TerminalRow, terminal_id)
            if row is None:
                raise EngineError(404, "not_found", f"terminal {terminal_id} is not known")
            merchant_id = patch.get("merchant_id", row.merchant_id)
            if session.get(MerchantRow, merchant_id) is None:
                raise EngineError(422, "unknown_merchant", f"merchant {merchant_id} is not known")
            row.merchant_id = merchant_id
            return {"id": row.id, "merchant_id": row.merchant_id}

    def list_terminals(self) -> list[dict]:
        with Session(self.engine) as session:
            rows = session.execute(select(TerminalRow).order_by(TerminalRow.id)).scalars()
            return [{"id": r.id, "merchant_id": r.merchant_id} for r in rows]

    # -- keys (engine/store/keys.py) ----------------------------------------

    def create_key(self, role: str, merchant_id: str | None = None, terminal_id: str | None = None,
                   expires_in_days: int | None = None, actor: str | None = None) -> str:
        """A new key, returned once; only its SHA-256 is stored. See `engine.store.keys.Keys.create`."""
        from engine.store.keys import Keys

        return Keys(self.engine, self.clock).create(role, merchant_id, terminal_id, expires_in_days, actor)[0]

    def authenticate(self, secret: str) -> Principal | None:
        """The key's principal, or None when it is unknown, revoked or expired (uncached: the API
        caches in `api.auth`)."""
        from engine.store.keys import Keys, hash_key

        found = Keys(self.engine, self.clock).lookup(hash_key(secret))
        if found is None or (found.expires_at_us is not None and found.expires_at_us <= self.clock.now_us()):
            return None
        return found.principal
