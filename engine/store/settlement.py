"""Settlement runs (SPEC §7): aggregate a closed period, post fees, merchant funding and
payouts, and keep the signed statement, its CSV and the Zengin payout file.

A run takes the sequencer lock, so no posting can land in the period while
it is read: every group stamps its postings with the instant it took the
lock, and a period is settled only once that instant has passed its end. The
run raises the ledger head's stamp floor to the period's end, so a process whose
clock is behind the run's (another host, a cron job) stamps after it all the same
(`UnitOfWork.now_us`), and the history import cannot post into it (`StampBehindFloor`).
A run is idempotent per period (a second request returns the first run) and
a settled period never changes: its lines, statement and files are stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from engine import events, keyring, metrics, sealing
from engine import ledger_rules as rules
from engine.audit import OPERATOR, Actor
from engine.crediting import add_business_days
from engine.errors import EngineError
from engine.model import Campaign
from engine.settlement import signing, statement, zengin
from engine.store import audit
from engine.store import events as outbox
from engine.store.config import Config
from engine.store.ledger import Ledger, lock_sequencer
from engine.store.models import (
    CampaignRow,
    CampaignVersionRow,
    MerchantRow,
    MerchantVersionRow,
    PaymentRow,
    PostingRow,
    SettlementLineRow,
    SettlementRunRow,
)
from engine.timeutil import format_instant, from_us, tokyo_date

if TYPE_CHECKING:
    from engine.settings import Settings

SALE_REASONS = {
    rules.COIN_SALE: "coin_sales",
    rules.COIN_REFUND: "coin_refunds",
    rules.REDEMPTION: "points_redeemed",
    rules.POINTS_RETURN: "points_returned",
}


def _payable_merchant(account_id: str) -> str | None:
    parts = account_id.split(":")
    return parts[1] if len(parts) == 3 and parts[0] == "merchant" and parts[2] == "payable" else None


SETTLEMENT_REASONS = [rules.SETTLEMENT_FEE, rules.MERCHANT_FUNDING, rules.PAYOUT, rules.PAYOUT_FAILED]


def aggregate(
    session: Session,
    start_us: int,
    end_us: int,
    merchants: dict[str, dict[str, Any]],
    funded_by: dict[tuple[str, int | None], str],
    settled_until_sequence: int,
) -> tuple[list[statement.MerchantActivity], dict[str, dict[str, int]]]:
    """Each merchant's activity in [start, end) and payable balance at `end`, from the postings,
    and the net points each merchant-funded campaign issued in the period, by merchant.

    `funded_by` maps (campaign, version) to the merchant funding it: points are charged
    to the funding source of the version that issued them (the version each award,
    grant and clawback posting records), never to a later version's (SPEC §9.6).

    The balance counts business postings stamped before `end`, and the postings of
    earlier settlement runs (fees, funding, payouts, failed payouts) up to
    `settled_until_sequence` whenever they were stamped: a run posts after its
    period ended, so its postings carry a later stamp than the sales they settle.
    """
    values: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    funded: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    business = and_(PostingRow.posted_at_us < end_us, PostingRow.reason.not_in(SETTLEMENT_REASONS))
    settled = and_(PostingRow.reason.in_(SETTLEMENT_REASONS), PostingRow.sequence <= settled_until_sequence)
    for side, sign in ((PostingRow.credit_account_id, 1), (PostingRow.debit_account_id, -1)):
        for account, total in session.execute(
            select(side, func.sum(PostingRow.amount))
            .where(side.like("merchant:%:payable"), or_(business, settled))
            .group_by(side)
        ):
            merchant_id = _payable_merchant(account)
            assert merchant_id is not None, account  # the pattern matched a merchant's payable account
            values[merchant_id]["payable_balance_at_end"] += sign * int(total)
    in_period = and_(PostingRow.posted_at_us >= start_us, PostingRow.posted_at_us < end_us)
    for reason, debit, credit, total in session.execute(
        select(
            PostingRow.reason, PostingRow.debit_account_id, PostingRow.credit_account_id, func.sum(PostingRow.amount)
        )
        .where(in_period, PostingRow.reason.in_(list(SALE_REASONS)))
        .group_by(PostingRow.reason, PostingRow.debit_account_id, PostingRow.credit_account_id)
    ):
        merchant_id = _payable_merchant(credit) or _payable_merchant(debit)
        assert merchant_id is not None, (debit, credit)  # every sale posting has a merchant's payable on one side
        values[merchant_id][SALE_REASONS[reason]] += int(total)
    if funded_by:
        for campaign_id, version, reason, total in session.execute(
            select(PostingRow.campaign_id, PostingRow.campaign_version, PostingRow.reason, func.sum(PostingRow.amount))
            .where(
                in_period,
                PostingRow.campaign_id.in_(sorted({c for c, _ in funded_by})),
                PostingRow.reason.in_([rules.AWARD, rules.GRANT, rules.CLAWBACK]),
            )
            .group_by(PostingRow.campaign_id, PostingRow.campaign_version, PostingRow.reason)
        ):
            assert campaign_id is not None  # the query selects campaigns by id
            merchant_id = funded_by.get((campaign_id, version))
            if merchant_id is None:
                continue  # that version was funded by the ward or a fund, not by a merchant
            sign = -1 if reason == rules.CLAWBACK else 1
            values[merchant_id]["merchant_funded_points"] += sign * int(total)
            funded[merchant_id][campaign_id] += sign * int(total)
    activities = [
        statement.MerchantActivity(merchant_id=m, fee_bp=merchants.get(m, {}).get("fee_bp", 0), **v)
        for m, v in sorted(values.items())
    ]
    return activities, funded


def _records_at(session: Session, end_us: int, current: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each merchant's record as it stood when a period ended (its last version made before
    `end_us`; its `current` record when it has none, made later or before versions were
    kept): the fee rate a period is charged at. A fee changed after a period ended, before it
    was settled, reached back over the whole period (helper-94: 5,000 bp set on 1 December
    charged November's sales at it)."""
    records = dict(current)
    for merchant_id, record_json in session.execute(
        select(MerchantVersionRow.merchant_id, MerchantVersionRow.record_json)
        .where(MerchantVersionRow.created_at_us < end_us)
        .order_by(MerchantVersionRow.merchant_id, MerchantVersionRow.version)
    ):
        records[merchant_id] = json.loads(record_json)  # in version order: the last one stands
    return records


def _funded_by(session: Session) -> dict[tuple[str, int | None], str]:
    """(campaign, version) → the merchant funding that version, for every merchant-funded
    version of every campaign; (campaign, None), for postings without a version, follows
    the current version."""
    current = dict(session.execute(select(CampaignRow.id, CampaignRow.current_version)).all())
    out: dict[tuple[str, int | None], str] = {}
    for campaign_id, version, record_json in session.execute(
        select(CampaignVersionRow.campaign_id, CampaignVersionRow.version, CampaignVersionRow.record_json)
    ):
        merchant_id = Campaign.model_validate_json(record_json).funding_merchant
        if merchant_id is not None:
            out[(campaign_id, version)] = merchant_id
            if current.get(campaign_id) == version:
                out[(campaign_id, None)] = merchant_id
    return out


@metrics.job("settle")
def run(
    ledger: Ledger, config: Config, settings: Settings, period_name: str | None = None, actor: Actor = OPERATOR
) -> tuple[bool, dict[str, Any]]:
    """Settle a period (by default the last one closed, of the configured kind); returns
    (created, run view). Idempotent per period. A merchant whose payout account change
    awaits confirmation (SPEC §9.6) is not paid: its line is `held_bank_change` and the
    amount stays payable, carried into the next period."""
    try:
        if period_name is None:
            period = statement.last_closed(from_us(ledger.clock.now_us()), settings.settlement_period)
        else:
            period = statement.parse_period(period_name)
    except ValueError as exc:
        raise EngineError("invalid_request", str(exc)) from None
    with ledger.unit_of_work() as unit:
        session = unit.session
        existing = session.execute(
            select(SettlementRunRow).where(SettlementRunRow.period_start_us == period.start_us)
        ).scalar_one_or_none()
        if existing is not None:
            if existing.period_end_us != period.end_us:
                raise EngineError("period_overlaps", f"settled already as part of run {existing.id}")
            return False, view(session, existing)
        overlapping = session.execute(
            select(SettlementRunRow.id).where(
                SettlementRunRow.period_start_us < period.end_us, SettlementRunRow.period_end_us > period.start_us
            )
        ).first()
        if overlapping:
            raise EngineError("period_overlaps", f"overlaps settled run {overlapping[0]}")
        # Periods settle in order: what an earlier period left unpaid is carried into the
        # next, which only works when the next is settled after it.
        later = session.execute(
            select(SettlementRunRow.id).where(SettlementRunRow.period_start_us >= period.end_us)
        ).first()
        if later:
            raise EngineError("period_out_of_order", f"a later period is settled already ({later[0]})")
        # ... one after another: a period left out between two runs would have its sales carried
        # into the next run's `carried_in`, never charged a fee nor its merchant-funded points.
        # A stretch in which nothing at all was posted may be left out: it has nothing to carry
        # (a first run mistyped years too early, 1999-01, then needs no empty runs to catch up).
        # The first run may start at any period from the ledger's first payment back: one that
        # starts after a payment would carry that payment's month into its `carried_in`, never
        # charged its fee or its merchant-funded points, and that month could never be settled
        # after (helper-88's probe: November's sales carried fee-free into a first run of
        # December). Postings of grants and lifecycle runs touch no merchant and may come before.
        last_end = session.execute(select(func.max(SettlementRunRow.period_end_us))).scalar()
        if last_end is None:
            first_paid = session.execute(
                select(PostingRow.posted_at_us)
                .join(PaymentRow, PaymentRow.id == PostingRow.payment_id)
                .where(PostingRow.posted_at_us < period.start_us)
                .order_by(PostingRow.posted_at_us)
                .limit(1)
            ).scalar()
            if first_paid is not None:
                raise EngineError(
                    "period_out_of_order",
                    f"nothing is settled yet and the ledger's first payment was posted at "
                    f"{format_instant(first_paid)}: the first run is of the period holding it (or an earlier "
                    f"one), not {period.name}",
                )
        elif period.start_us != last_end:
            posted_between = session.execute(
                select(PostingRow.sequence)
                .where(PostingRow.posted_at_us >= last_end, PostingRow.posted_at_us < period.start_us)
                .limit(1)
            ).first()
            if period.start_us < last_end or posted_between is not None:
                raise EngineError(
                    "period_out_of_order",
                    f"the last settled period ended at {format_instant(last_end)}: the next run is of the period "
                    f"that starts then, not {period.name} (a later one only when nothing was posted in between)",
                )
        now = unit.now_us()
        if now < period.end_us:
            raise EngineError("period_open", f"{period.name} ends at {format_instant(period.end_us)}")
        # Closed from here on, whatever another process's clock says: no unit stamps before it.
        unit.raise_floor(period.end_us)
        merchant_rows = list(session.execute(select(MerchantRow)).scalars())
        merchants = {r.id: json.loads(r.record_json) for r in merchant_rows}
        held = {r.id for r in merchant_rows if r.bank_change_by is not None}
        settled_until = unit.last_posting_sequence
        activities, funded = aggregate(
            session,
            period.start_us,
            period.end_us,
            _records_at(session, period.end_us, merchants),
            _funded_by(session),
            settled_until,
        )
        run_id = "st_" + secrets.token_hex(12)
        writer = unit.writer(now)
        lines: list[dict[str, Any]] = []
        transfers: list[zengin.Transfer] = []
        failed_reasons: dict[str, str] = {}  # merchant -> why its payout could not be sent
        for activity in activities:
            line = statement.line_for(activity)
            m = line.merchant_id
            if line.fee:
                writer.post(
                    rules.Posting(rules.SETTLEMENT_FEE, rules.payable_account(m), rules.WARD_FEES, line.fee, run_id)
                )
            # The merchant pays for the points its own campaigns issued (net of clawbacks).
            for campaign_id, points in sorted(funded.get(m, {}).items()):
                if points > 0:
                    writer.post(
                        rules.Posting(
                            rules.MERCHANT_FUNDING,
                            rules.payable_account(m),
                            rules.funding_account(campaign_id),
                            points,
                            run_id,
                            campaign_id,
                        )
                    )
                elif points < 0:
                    writer.post(
                        rules.Posting(
                            rules.MERCHANT_FUNDING,
                            rules.funding_account(campaign_id),
                            rules.payable_account(m),
                            -points,
                            run_id,
                            campaign_id,
                        )
                    )
            status = "nothing_due"
            if line.net_payout > 0:
                transfer, unpaid_reason = _transfer(config, session, m, line.net_payout)
                if transfer is not None and (
                    len(transfers) == zengin.RECORD_COUNT_MAX
                    or sum(t.amount_yen for t in transfers) + transfer.amount_yen > zengin.TOTAL_AMOUNT_YEN_MAX
                ):
                    # The file's trailer holds at most 12 digits of yen and 6 of records: what would
                    # not fit waits for the next run (it answered 500 and stopped every later run).
                    transfer, unpaid_reason = None, "payout_file_full"
                if m in held:
                    status = "held_bank_change"  # stays payable until another key confirms the new account
                elif transfer is None:
                    status = "failed"  # nothing can be sent; the amount stays payable and carries over
                    failed_reasons[m] = unpaid_reason
                else:
                    status = "pending"
                    writer.post(
                        rules.Posting(
                            rules.PAYOUT, rules.payable_account(m), rules.payout_account(m), line.net_payout, run_id
                        )
                    )
                    transfers.append(transfer)
            lines.append({**line.as_dict(), "name": merchants.get(m, {}).get("name", ""), "payout_status": status})
        writer.flush()
        zengin_file = _zengin(settings, transfers, now) if transfers else b""
        period_view = {
            "name": period.name,
            "kind": period.kind,
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
        }
        totals = {
            k: sum(line[k] for line in lines)
            for k in (
                "coin_sales",
                "coin_refunds",
                "points_redeemed",
                "points_returned",
                "merchant_funded_points",
                "fee",
                "net_payout",
            )
        }
        document = {
            "run_id": run_id,
            "period": period_view,
            "generated_at": format_instant(now),
            "currency": "JPY",
            "ledger": {
                "settled_until_sequence": settled_until,
                "last_posting_sequence": unit.last_posting_sequence,
                "last_hash": unit.last_hash,
            },
            "lines": lines,
            "totals": totals,
            # The payout file this statement pays by, bound by the signature (its every byte, the
            # accounts included, is checked by reconciliation against `sha256`): what goes to the
            # bank, which `totals.net_payout` is not (it also counts held, failed and negative lines).
            "payout_file": {
                "sha256": hashlib.sha256(zengin_file).hexdigest() if zengin_file else None,
                "transfers": len(transfers),
                "total_yen": sum(t.amount_yen for t in transfers),
            },
        }
        signed = signing.sign_document(keyring.signing_key(settings), document)
        row = SettlementRunRow(
            id=run_id,
            period_start_us=period.start_us,
            period_end_us=period.end_us,
            period_kind=period.kind,
            created_at_us=now,
            last_posting_sequence=settled_until,
            statement_json=json.dumps(signed, ensure_ascii=False),
            csv_text=statement.to_csv(lines),
            # Sealed with the data key, as the accounts it carries are (SPEC §3: bank details are
            # encrypted at rest); `payout_file` opens it.
            zengin_file=sealing.seal(keyring.data_key(settings), zengin_file, sealing.payout_file_associated(run_id))
            if zengin_file
            else b"",
        )
        session.add(row)
        session.flush()
        for entry in lines:
            session.add(
                SettlementLineRow(
                    run_id=run_id,
                    **{
                        k: entry[k]
                        for k in (
                            "merchant_id",
                            "coin_sales",
                            "coin_refunds",
                            "points_redeemed",
                            "points_returned",
                            "merchant_funded_points",
                            "fee",
                            "carried_in",
                            "net_payout",
                            "payout_status",
                        )
                    },
                )
            )
        session.flush()
        audit.record(
            session,
            actor,
            "settlement.run",
            f"settlement_run:{run_id}",
            None,
            {
                "period": document["period"],
                "totals": document["totals"],
                "payouts": [
                    {
                        "merchant_id": line["merchant_id"],
                        "net_payout": line["net_payout"],
                        "payout_status": line["payout_status"],
                    }
                    for line in lines
                ],
            },
            at_us=now,
        )
        outbox.record(
            session,
            [
                events.settlement_completed(run_id, period_view, totals, now),
                *(
                    events.payout_failed(
                        run_id, line["merchant_id"], line["net_payout"], failed_reasons[line["merchant_id"]], now
                    )
                    for line in lines
                    if line["payout_status"] == "failed"
                ),
            ],
            now,
        )
        return True, view(session, row)


def _transfer(config: Config, session: Session, merchant_id: str, amount: int) -> tuple[zengin.Transfer | None, str]:
    """The transfer paying `amount` into the merchant's payout account, or None and why not:
    `no_bank_account`, or `bank_account_unusable` for an account on file that no Zengin record
    can carry (a holder name with nothing a bank could read, kept before the model refused it).
    One merchant's account never stops the ward's run: its line fails and carries over. An amount
    over what one Zengin record carries (10 digits of yen) is `amount_over_transfer_limit`: the
    account is fine, finance pays it by other means (the amount stays payable)."""
    if amount > zengin.AMOUNT_YEN_MAX:
        return None, "amount_over_transfer_limit"
    try:
        account = config.bank_account(merchant_id, session)
        if account is None:
            return None, "no_bank_account"
        return zengin.transfer_from_account(account, amount, customer_code_1=customer_code(session, merchant_id)), ""
    except (zengin.ZenginError, ValidationError):
        return None, "bank_account_unusable"


def payout_file(settings: Settings, row: SettlementRunRow) -> bytes:
    """A run's Zengin file as the bank gets it: stored sealed with the data key and bound to the
    run (SealingError when it does not open: another key, or altered); a run stored before files
    were sealed holds it as it is (a Zengin file's first byte is its header record's "1", never a
    sealed blob's version byte)."""
    stored = bytes(row.zengin_file)
    if not _sealed(stored):
        return stored
    return sealing.open_sealed(keyring.data_key(settings), stored, sealing.payout_file_associated(row.id))


def _sealed(stored: bytes) -> bool:
    """Whether a stored payout file is sealed (else empty, or plain text from before)."""
    return bool(stored) and stored[:1] != b"1"


def seal_payout_files(ledger: Ledger, key: sealing.DataKey, key_from: str, actor: Actor = OPERATOR) -> dict[str, Any]:
    """Seal with `key` every stored payout file still in plain text (runs stored before files
    were sealed; no migration can seal them, it has no data key), each bound to its run as
    `run` seals one, so `payout_file` opens exactly the bytes that were stored. Idempotent: a
    sealed file is left as it is. `key_from` says where the key came from (for the audit log).

    The key is first held to what the database holds sealed already (the newest sealed payout
    file and a merchant's bank account): SealingError when it does not open them, and nothing
    is sealed, since a file sealed with another key than the engine's would open nowhere.

    One transaction per run, in the order of the lock-order rule (`engine/store/audit.py`): the
    sequencer lock (the one a settlement run holds while it writes its run), then the run's row,
    then the audit head; the row is read again under them, so a file sealed meanwhile is left."""
    with Session(ledger.engine) as session:
        first_bytes = session.execute(
            select(SettlementRunRow.id, func.substr(SettlementRunRow.zengin_file, 1, 1)).order_by(
                SettlementRunRow.period_start_us
            )
        ).all()
        kinds = {
            run_id: ("none" if not first else "sealed" if _sealed(bytes(first)) else "plain")
            for run_id, first in first_bytes
        }
        checked = _held_to_what_is_sealed(session, key, [r for r, kind in kinds.items() if kind == "sealed"])
    sealed: list[str] = []
    already = sum(kind == "sealed" for kind in kinds.values())
    for run_id in (r for r, kind in kinds.items() if kind == "plain"):
        with Session(ledger.engine) as session, session.begin():
            lock_sequencer(session)
            row = session.get(SettlementRunRow, run_id, with_for_update=True)
            assert row is not None, run_id  # runs are never deleted
            plain = bytes(row.zengin_file)
            if _sealed(plain):  # sealed meanwhile (another operator's run of this)
                already += 1
                continue
            associated = sealing.payout_file_associated(run_id)
            row.zengin_file = sealing.seal(key, plain, associated)
            if sealing.open_sealed(key, row.zengin_file, associated) != plain:  # never: AES-GCM round trip
                raise sealing.SealingError(f"run {run_id}'s payout file does not open to what was stored")
            file = {"sha256": hashlib.sha256(plain).hexdigest(), "bytes": len(plain)}
            audit.record(
                session,
                actor,
                "settlement.payout_file.seal",
                f"settlement_run:{run_id}",
                {"payout_file": {"stored": "plain", **file}},
                {"payout_file": {"stored": "sealed", "sealed_with": key_from, **file}},
                at_us=ledger.clock.now_us(),
            )
            sealed.append(run_id)
    return {
        "sealed": sealed,
        "already_sealed": already,
        "without_payout_file": sum(kind == "none" for kind in kinds.values()),
        "key_checked_against": checked,
    }


def _held_to_what_is_sealed(session: Session, key: sealing.DataKey, sealed_runs: list[str]) -> list[str]:
    """What `key` was checked against (the newest sealed payout file, a merchant's sealed bank
    account), or SealingError naming the one it does not open."""
    checked: list[str] = []
    if sealed_runs:
        run_id = sealed_runs[-1]
        stored = session.execute(select(SettlementRunRow.zengin_file).where(SettlementRunRow.id == run_id)).scalar_one()
        try:
            sealing.open_sealed(key, bytes(stored), sealing.payout_file_associated(run_id))
        except sealing.SealingError:
            raise sealing.SealingError(f"it does not open run {run_id}'s sealed payout file") from None
        checked.append(f"settlement_run:{run_id}")
    account = session.execute(
        select(MerchantRow.id, MerchantRow.bank_account_sealed)
        .where(MerchantRow.bank_account_sealed.is_not(None))
        .order_by(MerchantRow.id)
        .limit(1)
    ).first()
    if account is not None:
        merchant_id, sealed_account = account
        assert sealed_account is not None  # the query selects sealed accounts only
        try:
            sealing.open_sealed(key, bytes(sealed_account), sealing.merchant_bank_account_associated(merchant_id))
        except sealing.SealingError:
            raise sealing.SealingError(f"it does not open merchant {merchant_id}'s sealed bank account") from None
        checked.append(f"merchant:{merchant_id}")
    return checked


def _payout_file_length(stored: bytes) -> int:
    return len(stored) - sealing.SEALED_OVERHEAD if _sealed(stored) else len(stored)


def customer_code(session: Session, merchant_id: str) -> str:
    """顧客コード1, the ward's own reference of a transfer (a bank's notice of a failed one names
    it): the merchant's number, ten digits. It was the id's digits (`legacy_customer_code`), and
    `M4` and `MB004` were both `0000000004` in one file (helper-81)."""
    row = session.get(MerchantRow, merchant_id)  # the session's own row when loaded: no query
    return f"{row.customer_code:010d}" if row is not None and row.customer_code is not None else ""


def legacy_customer_code(merchant_id: str) -> str:
    """The code files written before migration `20261216_customer_code` carry: the id's digits,
    zero-filled (what reconciliation holds those files to)."""
    digits = "".join(ch for ch in merchant_id if ch.isdigit())[-10:]
    return digits.zfill(10) if digits else ""


def _zengin(settings: Settings, transfers: list[zengin.Transfer], now: int) -> bytes:
    transfer_day = add_business_days(tokyo_date(now) + dt.timedelta(days=1), 0)
    header = zengin.Header(
        requester_code=settings.payout_requester_code,
        requester_name=settings.payout_requester_name,
        transfer_mmdd=zengin.mmdd(transfer_day),
        bank_code=settings.payout_bank_code,
        branch_code=settings.payout_branch_code,
        account_type="ordinary",
        account_number=settings.payout_account_number,
    )
    return zengin.write(header, transfers)


def view(session: Session, row: SettlementRunRow) -> dict[str, Any]:
    lines = session.execute(
        select(SettlementLineRow).where(SettlementLineRow.run_id == row.id).order_by(SettlementLineRow.merchant_id)
    ).scalars()
    return {
        "id": row.id,
        "period": {
            "kind": row.period_kind,
            "start": format_instant(row.period_start_us),
            "end": format_instant(row.period_end_us),
        },
        "created_at": format_instant(row.created_at_us),
        "statement": json.loads(row.statement_json),
        "payouts": [
            {"merchant_id": line.merchant_id, "net_payout": line.net_payout, "payout_status": line.payout_status}
            for line in lines
        ],
        "zengin_bytes": _payout_file_length(row.zengin_file),
    }


def list_runs(ledger: Ledger) -> list[dict[str, Any]]:
    """Every run, newest period first: its id, period and when it was made (no lines, no files)."""
    with Session(ledger.engine) as session:
        rows = session.execute(
            select(
                SettlementRunRow.id,
                SettlementRunRow.period_kind,
                SettlementRunRow.period_start_us,
                SettlementRunRow.period_end_us,
                SettlementRunRow.created_at_us,
            ).order_by(SettlementRunRow.period_start_us.desc())
        ).all()
    return [
        {
            "id": r.id,
            "period": {
                "kind": r.period_kind,
                "start": format_instant(r.period_start_us),
                "end": format_instant(r.period_end_us),
            },
            "created_at": format_instant(r.created_at_us),
        }
        for r in rows
    ]


def get(ledger: Ledger, run_id: str) -> SettlementRunRow:
    with Session(ledger.engine) as session:
        row = session.get(SettlementRunRow, run_id)
        if row is None:
            raise EngineError("not_found", f"settlement run {run_id} is not known")
        session.expunge(row)
        return row


def get_view(ledger: Ledger, run_id: str) -> dict[str, Any]:
    with Session(ledger.engine) as session:
        row = session.get(SettlementRunRow, run_id)
        if row is None:
            raise EngineError("not_found", f"settlement run {run_id} is not known")
        return view(session, row)


MERCHANT_LINE_FIELDS = (*statement.CSV_COLUMNS, "name")


def merchant_line(run_view: dict[str, Any], merchant_id: str) -> dict[str, Any] | None:
    """One merchant's line of a run's signed statement, limited to the statement's own columns
    and the merchant's name (so nothing else a line might one day carry leaves in a merchant's
    download); None when the run has no line for it."""
    for line in run_view["statement"]["document"]["lines"]:
        if line["merchant_id"] == merchant_id:
            return {k: line[k] for k in MERCHANT_LINE_FIELDS if k in line}
    return None


def merchant_statement(settings: Settings, run_view: dict[str, Any], merchant_id: str) -> dict[str, Any] | None:
    """One merchant's own statement of a run, signed with the ward's statement key as the run's
    statement is (`setapay verify-statement` checks either): the run id, period, the merchant's
    line, and the run statement's key id, signature and SHA-256 of its canonical JSON, which tie
    it to the run's statement. None when the run has no line for the merchant."""
    line = merchant_line(run_view, merchant_id)
    if line is None:
        return None
    run_statement = run_view["statement"]
    document = {
        "kind": "merchant_statement",
        "run_id": run_view["id"],
        "period": run_statement["document"]["period"],
        "generated_at": run_statement["document"]["generated_at"],
        "currency": run_statement["document"]["currency"],
        "merchant_id": merchant_id,
        "line": line,
        "run_statement": {
            "key_id": run_statement["signature"]["key_id"],
            "signature": run_statement["signature"]["value"],
            "sha256": hashlib.sha256(signing.canonical_json(run_statement)).hexdigest(),
        },
    }
    return signing.sign_document(keyring.signing_key(settings), document)


@metrics.job("payout_results")
def import_payout_results(
    ledger: Ledger, run_id: str, results: list[dict[str, Any]], actor: Actor = OPERATOR
) -> dict[str, Any]:
    """The bank's answer per merchant: paid payouts close, failed ones return to payable
    and so are carried into the next period. Re-importing the same answer changes nothing. A
    result's `amount`, when given, must be the line's payout (409 `payout_amount_mismatch`,
    nothing applied)."""
    with ledger.unit_of_work() as unit:
        session = unit.session
        if session.get(SettlementRunRow, run_id) is None:
            raise EngineError("not_found", f"settlement run {run_id} is not known")
        lines = {
            line.merchant_id: line
            for line in session.execute(select(SettlementLineRow).where(SettlementLineRow.run_id == run_id)).scalars()
        }
        now = unit.now_us()
        writer = unit.writer(now)
        before = {m: line.payout_status for m, line in sorted(lines.items())}
        applied = unchanged = 0
        failed: list[events.Event] = []
        for result in results:
            line = lines.get(result["merchant_id"])
            if line is None:
                raise EngineError("invalid_request", f"merchant {result['merchant_id']} has no line in {run_id}")
            if result.get("amount") is not None and result["amount"] != line.net_payout:
                # Another run's transfer (helper-88: January's answer imported against December's
                # run failed December's payout, paid again in February, and left January's pending).
                raise EngineError(
                    "payout_amount_mismatch",
                    f"{run_id} pays {line.merchant_id} {line.net_payout}, not {result['amount']}: is the result "
                    "another run's?",
                )
            if line.payout_status == result["status"]:
                unchanged += 1
                continue
            if line.payout_status != "pending":
                raise EngineError(
                    "payout_already_settled", f"{line.merchant_id} is {line.payout_status}, not {result['status']}"
                )
            m = line.merchant_id
            if result["status"] == "paid":
                writer.post(
                    rules.Posting(
                        rules.PAYOUT_PAID, rules.payout_account(m), rules.BANK_PAYOUTS, line.net_payout, run_id
                    )
                )
            else:
                writer.post(
                    rules.Posting(
                        rules.PAYOUT_FAILED, rules.payout_account(m), rules.payable_account(m), line.net_payout, run_id
                    )
                )
            line.payout_status = result["status"]
            applied += 1
            if result["status"] == "failed":
                failed.append(events.payout_failed(run_id, m, line.net_payout, "bank_rejected", now))
        writer.flush()
        outbox.record(session, failed, now)
        if applied:
            audit.record(
                session,
                actor,
                "settlement.payout_results",
                f"settlement_run:{run_id}",
                {"payouts": before},
                {"payouts": {m: line.payout_status for m, line in sorted(lines.items())}, "results": results},
                at_us=now,
            )
        return {
            "run_id": run_id,
            "applied": applied,
            "unchanged": unchanged,
            "payouts": [{"merchant_id": m, "payout_status": line.payout_status} for m, line in sorted(lines.items())],
        }
