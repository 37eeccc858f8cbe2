"""Configuration records (merchants, campaigns with versions, terminals); API keys live in
`engine/store/keys.py` (`create_key` and `authenticate` here delegate to it).

Every change to merchants or campaigns bumps `ledger_head.catalog_version`
under the sequencer lock, so each process reloads its cached catalog before
it rates the next group and no group is rated against a stale catalog.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import limits, sealing
from engine.audit import OPERATOR, Actor, mask_bank_account
from engine.clock import Clock, SystemClock
from engine.errors import EngineError
from engine.model import BankAccount, Campaign, Merchant
from engine.store import audit, db
from engine.store.ledger import SequencerHead, date_catalog_change, lock_sequencer
from engine.store.models import (
    ApiKeyRow,
    CampaignRow,
    CampaignVersionRow,
    MerchantRow,
    MerchantVersionRow,
    TerminalRow,
)
from engine.timeutil import format_instant, to_us

if TYPE_CHECKING:
    from engine.settings import Settings

ROLES = ("admin", "finance", "merchant", "terminal", "app")
# Terminals' signing keys, looked up for requests: built once (as `engine.store.keys._LOOKUP`).
_PUBLIC_KEYS = select(TerminalRow.id, TerminalRow.public_key).where(
    TerminalRow.id.in_(bindparam("terminal_ids", expanding=True))
)


@dataclasses.dataclass(frozen=True)
class Principal(Actor):
    """An authenticated API key: the actor of what it changes, with its merchant and terminal."""

    merchant_id: str | None
    terminal_id: str | None
    expires_at_us: int | None = None  # when the key expires (None: never), checked again when posting


def _bump(session: Session) -> SequencerHead:
    """The sequencer lock and a new catalog version; the head as it stands (the change is dated by
    it: `ledger.date_catalog_change`)."""
    return lock_sequencer(session, catalog_changed=True)


def _dump(record: BaseModel) -> str:
    return record.model_dump_json()


T = TypeVar("T")


def _stored(record: BaseModel) -> Any:
    """`record` as its stored JSON reads back: what a patch is compared with to see that it
    changes nothing."""
    return json.loads(_dump(record))


def _unchanged(session: Session, record: T) -> T:
    """A patch that changes nothing: its transaction rolled back, so no version, no audit entry
    and no catalog change (`_bump`'s) is written, and `record`, as it stands, is the answer."""
    session.rollback()
    return record


def _set_at_us(masked: Mapping[str, Any] | None) -> int:
    """When the masked account on a merchant record was set (-1 when none is)."""
    if masked is None or "set_at" not in masked:
        return -1
    return to_us(dt.datetime.fromisoformat(masked["set_at"]))


# A key and the keys above it in the audit log's `key.create` records, in one statement (UNION, not
# UNION ALL: a key seen twice ends its branch), each step one probe of the (target, sequence) index.
_KEY_AND_MAKERS_SQL = text(
    "WITH RECURSIVE chain(key_id) AS (SELECT CAST(:key_id AS TEXT) UNION SELECT CAST(a.actor_key_id AS TEXT)"
    " FROM audit_log a"
    " JOIN chain c ON a.target = 'key:' || c.key_id"
    f" WHERE a.action = 'key.create' AND a.actor_role IN ({', '.join(repr(r) for r in ROLES)}))"
    " SELECT key_id FROM chain"
)


log = logging.getLogger(__name__)

# Refusals of a confirmation that name a change awaiting it: recorded in the audit log.
CONFIRM_REFUSALS_AUDITED = frozenset({"bank_change_mismatch", "bank_change_same_key", "bank_change_superseded"})


def _made_after_the_change(session: Session, key_id: str, merchant_id: str, by_the_clocks: bool) -> bool:
    """Whether the key was made after the merchant's pending bank account change: by their audit
    entries' sequences (the order of their commits, whatever the clocks of the hosts that made
    them said: a key made on a host whose clock lags carries an earlier `created_at`, a key made
    beforehand on a host whose clock runs ahead a later one), or, when either has no entry (a key
    made before the audit log), `by_the_clocks` (its `created_at` is not before the change's)."""
    created = audit.latest(session, "key.create", f"key:{key_id}")
    changed = audit.latest(session, "merchant.bank_account.change", f"merchant:{merchant_id}")
    if created is None or changed is None:
        return by_the_clocks
    return created > changed


def _key_and_makers(session: Session, key_id: str) -> set[str]:
    """`key_id` and every API key above it in the audit log's `key.create` records: the key that
    made it, the key that made that one, and so on, however deep, up to a key the operator made at
    the command line (or one made before the audit log), which ends the chain. Whoever made a key
    was shown its secret."""
    return set(session.execute(_KEY_AND_MAKERS_SQL, {"key_id": key_id}).scalars())


def _lock(session: Session) -> None:
    """The sequencer lock without a catalog change."""
    lock_sequencer(session)


MASKED_ACCOUNT = "bank_account_masked"


class Config:
    def __init__(self, engine: Engine, settings: Settings | None = None, clock: Clock | None = None) -> None:
        self.engine = engine
        self._reader = db.reader(engine)  # for per-request reads (SQLite: no writer lock)
        self.settings = settings
        self.clock: Clock = clock or SystemClock()

    # -- bank details: sealed at rest, never in record_json ----------------

    def _data_key(self) -> sealing.DataKey:
        from engine import keyring
        from engine.settings import Settings

        return keyring.data_key(self.settings or Settings())

    def _store_record(
        self,
        row: MerchantRow,
        merchant: Merchant,
        account_set_at: int | None,
        masked_before: dict[str, Any] | None = None,
    ) -> None:
        """Seal a newly set payout account (`account_set_at`: when) and keep its masked form
        in the record, so a change of account is a new, different merchant version."""
        masked = masked_before
        if merchant.bank_account is not None and account_set_at is not None:
            row.bank_account_sealed = sealing.seal_bank_account(self._data_key(), merchant.id, merchant.bank_account)
            masked = {**mask_bank_account(merchant.bank_account.model_dump()), "set_at": format_instant(account_set_at)}
        record_json = merchant.model_copy(update={"bank_account": None}).model_dump_json()
        if masked is not None:
            record = json.loads(record_json)
            record[MASKED_ACCOUNT] = masked
            record_json = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        row.record_json = record_json

    def bank_account(self, merchant_id: str, session: Session | None = None) -> BankAccount | None:
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

    def _account_on_file(self, merchant_id: str, session: Session) -> BankAccount | None:
        """The account on file to compare a new one with; None also for one kept before the rules
        refused it (a blank holder name), which any valid account then replaces (held for
        confirmation as every change), rather than the merchant's update failing on it for good."""
        try:
            return self.bank_account(merchant_id, session)
        except ValidationError:
            return None

    @staticmethod
    def public_record(row: MerchantRow) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(row.record_json)
        record.pop("bank_account", None)
        record["bank_account_on_file"] = row.bank_account_sealed is not None
        record["bank_account_pending_confirmation"] = row.bank_change_by is not None
        return record

    # -- merchants ---------------------------------------------------------

    def create_merchant(self, merchant: Merchant, actor: Actor = OPERATOR) -> dict[str, Any]:
        """A new merchant; its first payout account, set here, needs no confirmation."""
        with Session(self.engine) as session, session.begin():
            head = _bump(session)
            if session.get(MerchantRow, merchant.id) is not None:
                raise EngineError("already_exists", f"merchant {merchant.id} exists")
            now = date_catalog_change(session, head, self.clock.now_us())
            # Under the catalog's lock (`_bump`): no two merchants are given one number.
            last_code = session.execute(select(func.max(MerchantRow.customer_code))).scalar()
            row = MerchantRow(id=merchant.id, created_at_us=now, updated_at_us=now, customer_code=(last_code or 0) + 1)
            self._store_record(row, merchant, now)
            session.add(row)
            session.flush()
            self._add_version(session, row, now)
            after = self.public_record(row)
            audit.record(session, actor, "merchant.create", f"merchant:{merchant.id}", None, after, at_us=now)
            return after

    def update_merchant(self, merchant_id: str, patch: Mapping[str, Any], actor: Actor = OPERATOR) -> dict[str, Any]:
        """A new merchant version. A new payout account (SPEC §9.6) holds the merchant's
        payouts until a different admin or finance key confirms it."""
        with Session(self.engine) as session, session.begin():
            head = _bump(session)
            row = session.get(MerchantRow, merchant_id)
            if row is None:
                raise EngineError("not_found", f"merchant {merchant_id} is not known")
            before = self.public_record(row)
            current = json.loads(row.record_json)
            masked_before = current.pop(MASKED_ACCOUNT, None)
            if "id" in patch and patch["id"] != merchant_id:
                raise EngineError("invalid_request", "id cannot change")
            merchant = Merchant.model_validate({**current, **patch})
            changed = merchant.bank_account is not None and merchant.bank_account != self._account_on_file(
                merchant_id, session
            )
            if not changed and _stored(merchant.model_copy(update={"bank_account": None})) == current:
                return _unchanged(session, before)
            clock_us = self.clock.now_us()
            now = date_catalog_change(session, head, clock_us)
            # A change's `set_at` names it to the key that confirms it: strictly later than the
            # account it replaces, so no two of a merchant's changes share one.
            set_at = max(now, _set_at_us(masked_before) + 1) if changed else None
            self._store_record(row, merchant, set_at, masked_before)
            if changed:
                # When, by the clock keys are made by, for their ages (the version is dated past the
                # order floor: `date_catalog_change`).
                row.bank_change_by, row.bank_change_at_us = actor.key_id, clock_us
            row.updated_at_us = now
            self._add_version(session, row, row.updated_at_us)
            after = self.public_record(row)
            audit.record(session, actor, "merchant.update", f"merchant:{merchant_id}", before, after, at_us=now)
            if changed:
                audit.record(
                    session,
                    actor,
                    "merchant.bank_account.change",
                    f"merchant:{merchant_id}",
                    {"bank_account": masked_before},
                    {"bank_account": after[MASKED_ACCOUNT], "pending_confirmation": True},
                    at_us=now,
                )
            return after

    def confirm_bank_account(
        self, merchant_id: str, set_at_us: int, account: BankAccount, actor: Actor = OPERATOR
    ) -> dict[str, Any]:
        """Release the held payout account change set at `set_at_us` (the `set_at` of the record's
        masked account, as the confirming key read it) to `account`, the whole account as the
        confirming person has it from the merchant; only a key other than the one that made the
        change may, and only when `account` is the one awaiting confirmation. A later change
        supersedes it: confirming the earlier one releases nothing.

        A refused attempt on a pending change (another account, a key that may not confirm it, a
        change superseded) releases nothing and is recorded in the audit log on its own, as
        `merchant.bank_account.confirm_refused` with the refusal's code: repeated wrong accounts
        or a changer's attempts on its own change leave a trace for the ward to read."""
        try:
            return self._confirm_bank_account(merchant_id, set_at_us, account, actor)
        except EngineError as refusal:
            if refusal.code in CONFIRM_REFUSALS_AUDITED:
                try:
                    with Session(self.engine) as session, session.begin():
                        audit.record(
                            session,
                            actor,
                            "merchant.bank_account.confirm_refused",
                            f"merchant:{merchant_id}",
                            None,
                            {"code": refusal.code, "set_at": format_instant(set_at_us)},
                            at_us=self.clock.now_us(),
                        )
                except Exception:  # the refusal stands, whatever became of its record
                    log.exception("the refused confirmation of merchant %s was not recorded", merchant_id)
            raise

    def _confirm_bank_account(
        self, merchant_id: str, set_at_us: int, account: BankAccount, actor: Actor
    ) -> dict[str, Any]:
        with Session(self.engine) as session, session.begin():
            _lock(session)
            row = session.get(MerchantRow, merchant_id)
            if row is None:
                raise EngineError("not_found", f"merchant {merchant_id} is not known")
            if row.bank_change_by is None:
                raise EngineError(
                    "bank_change_not_pending",
                    f"merchant {merchant_id} has no bank account change awaiting confirmation",
                )
            if row.bank_change_by == actor.key_id:
                raise EngineError(
                    "bank_change_same_key", "a bank account change must be confirmed by a different key than made it"
                )
            # A key made after the change cannot confirm it: whoever made the change could otherwise
            # make a second key and confirm with it.
            changed_at = row.bank_change_at_us
            assert changed_at is not None, merchant_id  # set and cleared with bank_change_by
            confirming = session.get(ApiKeyRow, actor.key_id)
            if confirming is None or _made_after_the_change(
                session, actor.key_id, merchant_id, confirming.created_at_us >= changed_at
            ):
                raise EngineError(
                    "bank_change_same_key",
                    "a bank account change must be confirmed by another key that existed before it",
                )
            # Nor can a key that shares a maker with it (SPEC §9.6's different key is another
            # holder): the changing key's own key made beforehand, the key that made the changing
            # one, or another key made by the same key, whose maker saw both secrets.
            if _key_and_makers(session, row.bank_change_by) & _key_and_makers(session, actor.key_id):
                raise EngineError(
                    "bank_change_same_key",
                    "a bank account change must be confirmed by a key that shares no maker with the key"
                    " that made it: make confirming keys with `setapay keys create`",
                )
            masked = json.loads(row.record_json).get(MASKED_ACCOUNT)
            if set_at_us != _set_at_us(masked):
                # The change named is not the one pending (a later change superseded it). Which
                # one is pending is not said here: the confirming key reads it again and checks it.
                raise EngineError(
                    "bank_change_superseded",
                    "the bank account change named is not the one awaiting confirmation: "
                    "read the pending change again and confirm that one",
                )
            if self.bank_account(merchant_id, session) != account:
                # Which field differs is not said: the account awaiting confirmation is shown to
                # nobody whole, and this answer must not become a way to read it.
                raise EngineError(
                    "bank_change_mismatch",
                    "the bank account given is not the one awaiting confirmation: confirm only the account "
                    "the merchant gave you, and ask the merchant if they differ",
                )
            before = {
                "bank_account": masked,
                "changed_by": row.bank_change_by,
                "changed_at": format_instant(changed_at),
                "pending_confirmation": True,
            }
            row.bank_change_by = row.bank_change_at_us = None
            now = self.clock.now_us()
            after = {"bank_account": masked, "pending_confirmation": False}
            audit.record(
                session, actor, "merchant.bank_account.confirm", f"merchant:{merchant_id}", before, after, at_us=now
            )
            return self.public_record(row)

    @staticmethod
    def _add_version(session: Session, row: MerchantRow, now: int) -> None:
        """Keep the record as of `now`, so re-rating uses the one in force at each acceptance."""
        latest = session.execute(
            select(func.max(MerchantVersionRow.version)).where(MerchantVersionRow.merchant_id == row.id)
        ).scalar_one()
        session.add(
            MerchantVersionRow(
                merchant_id=row.id, version=(latest or 0) + 1, record_json=row.record_json, created_at_us=now
            )
        )

    def get_merchant(self, merchant_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = session.get(MerchantRow, merchant_id)
            if row is None:
                raise EngineError("not_found", f"merchant {merchant_id} is not known")
            return self.public_record(row)

    def list_merchants(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.execute(select(MerchantRow).order_by(MerchantRow.id)).scalars()
            return [self.public_record(r) for r in rows]

    # -- campaigns ---------------------------------------------------------

    @staticmethod
    def _check_active_limit(session: Session, campaign_id: str, now: int) -> None:
        """Refuse a campaign that would become the (CAMPAIGNS_ACTIVE_MAX + 1)-th not yet ended at
        `now` (running or scheduled). Called under the sequencer lock, so the count is exact."""
        records = session.execute(
            select(CampaignVersionRow.record_json)
            .join(CampaignRow, CampaignRow.id == CampaignVersionRow.campaign_id)
            .where(CampaignVersionRow.version == CampaignRow.current_version, CampaignRow.id != campaign_id)
        ).scalars()
        active = sum(to_us(Campaign.model_validate_json(r).ends_at) > now for r in records)
        if active >= limits.CAMPAIGNS_ACTIVE_MAX:
            raise EngineError(
                "too_many_active_campaigns",
                f"{active} campaigns are running or scheduled (at most {limits.CAMPAIGNS_ACTIVE_MAX}); end one first",
            )

    def _check_tags_together(self, session: Session, campaign: Campaign, before: Campaign | None = None) -> None:
        """Refuse a campaign whose item tags and those of the campaigns whose windows come within
        a group's span of its own would name more than CAMPAIGN_TAGS_DISTINCT_MAX tags together:
        the kernel holds the tags of the campaigns it rates a group against as bits of one
        integer (`CatalogSnapshot.rating_for`: those whose window holds an instant between the
        group's first and last purchase, whose `occurred_at` the API keeps within
        `occurred_at_max_past_days` behind and `occurred_at_max_future_s` ahead of its clock;
        reconciliation's re-rate rates a day of acceptance at a time, one day more, and an hour
        for a request accepted a while after its `occurred_at` was checked).

        `before`: the version an update replaces. Only an update that names a tag the campaign
        did not, or widens its window, is checked: one that ends a campaign early or changes
        its budget always passes, whatever campaigns were made before this check."""
        settings = self.settings
        past_days = settings.occurred_at_max_past_days if settings else limits.OCCURRED_AT_MAX_PAST_DAYS
        future_s = settings.occurred_at_max_future_s if settings else limits.OCCURRED_AT_MAX_FUTURE_S
        span = ((past_days + 1) * 86_400 + future_s + 3_600) * 1_000_000
        tags = set(campaign.item_tags or ())
        if not tags:
            return
        if (
            before is not None
            and tags <= set(before.item_tags or ())
            and to_us(before.starts_at) <= to_us(campaign.starts_at)
            and to_us(campaign.ends_at) <= to_us(before.ends_at)
        ):
            return
        starts, ends = to_us(campaign.starts_at) - span, to_us(campaign.ends_at) + span
        records = session.execute(
            select(CampaignVersionRow.record_json)
            .join(CampaignRow, CampaignRow.id == CampaignVersionRow.campaign_id)
            .where(CampaignVersionRow.version == CampaignRow.current_version, CampaignRow.id != campaign.id)
        ).scalars()
        for record in records:
            other = Campaign.model_validate_json(record)
            if other.item_tags and to_us(other.starts_at) < ends and starts < to_us(other.ends_at):
                tags.update(other.item_tags)
        if len(tags) > limits.CAMPAIGN_TAGS_DISTINCT_MAX:
            raise EngineError(
                "too_many_item_tags",
                f"with the campaigns whose windows come within {past_days + 1} days of this one's, the item tags "
                f"would number {len(tags)} (at most {limits.CAMPAIGN_TAGS_DISTINCT_MAX})",
            )

    @staticmethod
    def _check_funding(session: Session, campaign: Campaign) -> None:
        """A merchant-funded campaign names a known merchant: settlement charges its points to
        that merchant's payable (SPEC §9.6), which must be a real merchant's."""
        merchant_id = campaign.funding_merchant
        if merchant_id is not None and session.get(MerchantRow, merchant_id) is None:
            raise EngineError(
                "unknown_merchant",
                f"funding_source names merchant {merchant_id}, which is not known: name a known merchant or a "
                "ward fund (an update of a campaign funded so may correct funding_source in the same patch)",
            )

    def create_campaign(self, campaign: Campaign, actor: Actor = OPERATOR) -> Campaign:
        campaign = campaign.model_copy(update={"version": 1})
        with Session(self.engine) as session, session.begin():
            head = _bump(session)
            if session.get(CampaignRow, campaign.id) is not None:
                raise EngineError("already_exists", f"campaign {campaign.id} exists")
            self._check_funding(session, campaign)
            self._check_tags_together(session, campaign)
            now = date_catalog_change(session, head, self.clock.now_us())
            if to_us(campaign.ends_at) > now:
                self._check_active_limit(session, campaign.id, now)
            session.add(
                CampaignRow(id=campaign.id, current_version=1, issued_net=0, budget=campaign.budget, created_at_us=now)
            )
            session.flush()
            session.add(
                CampaignVersionRow(campaign_id=campaign.id, version=1, record_json=_dump(campaign), created_at_us=now)
            )
            audit.record(
                session,
                actor,
                "campaign.create",
                f"campaign:{campaign.id}",
                None,
                campaign.model_dump(mode="json"),
                at_us=now,
            )
        return campaign

    def update_campaign(self, campaign_id: str, patch: Mapping[str, Any], actor: Actor = OPERATOR) -> Campaign:
        """A new version; a started campaign may not end before now nor budget below what it issued."""
        with Session(self.engine) as session, session.begin():
            head = _bump(session)
            row = session.get(CampaignRow, campaign_id)
            if row is None:
                raise EngineError("not_found", f"campaign {campaign_id} is not known")
            current_row = session.get(CampaignVersionRow, (campaign_id, row.current_version))
            assert current_row is not None, (campaign_id, row.current_version)  # written with current_version
            current = Campaign.model_validate_json(current_row.record_json)
            if "id" in patch and patch["id"] != campaign_id:
                raise EngineError("invalid_request", "id cannot change")
            patch = {k: v for k, v in patch.items() if k != "version"}
            updated = Campaign.model_validate(
                {**json.loads(current_row.record_json), **patch, "version": row.current_version + 1}
            )
            if _stored(updated.model_copy(update={"version": current.version})) == json.loads(current_row.record_json):
                return _unchanged(session, current)
            now = date_catalog_change(session, head, self.clock.now_us())
            if to_us(current.starts_at) <= now:
                if to_us(updated.starts_at) != to_us(current.starts_at):
                    raise EngineError("campaign_started", "starts_at of a started campaign cannot change")
                if to_us(updated.ends_at) != to_us(current.ends_at) and to_us(updated.ends_at) < now:
                    raise EngineError("campaign_started", "a campaign cannot end before now")
            if updated.budget is not None and updated.budget < row.issued_net:
                raise EngineError("campaign_started", f"budget below the {row.issued_net} points already issued")
            self._check_funding(session, updated)
            self._check_tags_together(session, updated, current)
            if to_us(current.ends_at) <= now < to_us(updated.ends_at):  # an ended campaign runs again
                self._check_active_limit(session, campaign_id, now)
            row.current_version = updated.version
            row.budget = updated.budget
            session.add(
                CampaignVersionRow(
                    campaign_id=campaign_id, version=updated.version, record_json=_dump(updated), created_at_us=now
                )
            )
            audit.record(
                session,
                actor,
                "campaign.update",
                f"campaign:{campaign_id}",
                current.model_dump(mode="json"),
                updated.model_dump(mode="json"),
                at_us=now,
            )
        return updated

    def get_campaign(self, campaign_id: str, version: int | None = None) -> Campaign:
        with Session(self.engine) as session:
            row = session.get(CampaignRow, campaign_id)
            if row is None:
                raise EngineError("not_found", f"campaign {campaign_id} is not known")
            v = session.get(CampaignVersionRow, (campaign_id, version or row.current_version))
            if v is None:
                raise EngineError("not_found", f"campaign {campaign_id} has no version {version}")
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

    def create_terminal(self, terminal_id: str, merchant_id: str, actor: Actor = OPERATOR) -> dict[str, Any]:
        with Session(self.engine) as session, session.begin():
            head = _bump(session)
            if session.get(MerchantRow, merchant_id) is None:
                raise EngineError("unknown_merchant", f"merchant {merchant_id} is not known")
            if session.get(TerminalRow, terminal_id) is not None:
                raise EngineError("already_exists", f"terminal {terminal_id} exists")
            now = date_catalog_change(session, head, self.clock.now_us())
            session.add(TerminalRow(id=terminal_id, merchant_id=merchant_id, created_at_us=now))
            audit.record(
                session,
                actor,
                "terminal.create",
                f"terminal:{terminal_id}",
                None,
                {"id": terminal_id, "merchant_id": merchant_id, "public_key": None},
                at_us=now,
            )
        return {"id": terminal_id, "merchant_id": merchant_id, "public_key": None}

    @staticmethod
    def terminal_record(row: TerminalRow) -> dict[str, Any]:
        """A terminal as the API shows it (and as the audit log holds it: the key is public)."""
        return {"id": row.id, "merchant_id": row.merchant_id, "public_key": row.public_key}

    def get_terminal(self, terminal_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = session.get(TerminalRow, terminal_id)
            if row is None:
                raise EngineError("not_found", f"terminal {terminal_id} is not known")
            return self.terminal_record(row)

    def update_terminal(self, terminal_id: str, patch: Mapping[str, Any], actor: Actor = OPERATOR) -> dict[str, Any]:
        """Move a terminal to a merchant and/or set (`public_key`: canonical base64, already
        checked) or remove (`public_key`: None) its request-signing key."""
        with Session(self.engine) as session, session.begin():
            _bump(session)
            row = session.get(TerminalRow, terminal_id)
            if row is None:
                raise EngineError("not_found", f"terminal {terminal_id} is not known")
            merchant_id = patch.get("merchant_id", row.merchant_id)
            if session.get(MerchantRow, merchant_id) is None:
                raise EngineError("unknown_merchant", f"merchant {merchant_id} is not known")
            before = self.terminal_record(row)
            row.merchant_id = merchant_id
            if "public_key" in patch:
                row.public_key = patch["public_key"]
            after = self.terminal_record(row)
            if after == before:
                return _unchanged(session, before)
            action = "terminal.move" if before["merchant_id"] != after["merchant_id"] else "terminal.public_key"
            audit.record(session, actor, action, f"terminal:{terminal_id}", before, after, at_us=self.clock.now_us())
            return after

    def terminal_merchant(self, terminal_id: str | None) -> str | None:
        """The terminal's merchant now (None for an unknown terminal)."""
        with Session(self.engine) as session:
            row = session.get(TerminalRow, terminal_id) if terminal_id else None
            return row.merchant_id if row is not None else None

    def list_terminals(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.execute(select(TerminalRow).order_by(TerminalRow.id)).scalars()
            return [self.terminal_record(r) for r in rows]

    def terminal_public_key(self, terminal_id: str) -> str | None:
        """The terminal's registered signing key (base64), or None: bearer-only (or no such terminal)."""
        return self.terminal_public_keys([terminal_id]).get(terminal_id)

    def terminal_public_keys(self, terminal_ids: Sequence[str]) -> dict[str, str | None]:
        """The registered signing key (base64, or None: bearer-only) of each terminal that exists
        among `terminal_ids`, in one query."""
        with self._reader.connect() as connection:
            rows = connection.execute(_PUBLIC_KEYS, {"terminal_ids": list(terminal_ids)}).all()
        return {terminal_id: public_key for terminal_id, public_key in rows}

    # -- keys (engine/store/keys.py) ----------------------------------------

    def create_key(
        self,
        role: str,
        merchant_id: str | None = None,
        terminal_id: str | None = None,
        expires_in_days: int | None = None,
        actor: Actor = OPERATOR,
    ) -> str:
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
