"""Ward finance reads and checks: budget burn, terminal closeouts, signed daily chain
heads, and the reconciliation report that gathers every invariant of SPEC §5 and §7."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from engine import audit as core_audit
from engine import crediting, keyring, limits, metrics, posting_columns, sealing
from engine import ledger_rules as rules
from engine.audit import OPERATOR, Actor
from engine.errors import EngineError
from engine.model import Campaign
from engine.settlement import signing, statement, zengin
from engine.store import audit, bulk, db, queries, rerate, settlement
from engine.store.ledger import Ledger
from engine.store.models import (
    WALLET_LOT,
    AuditLogRow,
    CampaignBurnRow,
    CampaignRow,
    CampaignVersionRow,
    ChainHeadRow,
    CloseoutRow,
    LedgerHead,
    MerchantRow,
    MerchantVersionRow,
    PaymentRow,
    PostingRow,
    RedemptionLegRow,
    SettlementLineRow,
    SettlementRunRow,
    TerminalRow,
)
from engine.timeutil import TOKYO, format_instant, to_us, tokyo_date

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from engine.settings import Settings
    from engine.store.rerate import Progress

log = logging.getLogger(__name__)
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


# -- budget --------------------------------------------------------------------


def budget(ledger: Ledger, campaign_id: str, now: int | None = None) -> dict[str, Any]:
    """Budget, issued, clawed back, net, remaining, recent burn and the forecast exhaustion instant."""
    now = now or ledger.clock.now_us()
    with ledger.read_view() as view:
        session = view.session
        campaigns = view.catalog.campaigns
        meter = session.get(CampaignRow, campaign_id)
        if meter is None or campaign_id not in campaigns:
            raise EngineError("not_found", f"campaign {campaign_id} is not known")
        campaign = campaigns[campaign_id]

        issued, clawed = _burn_since(session, campaign_id, None)
        hour_issued, hour_clawed = _burn_since(session, campaign_id, now - HOUR_US)
        day_issued, day_clawed = _burn_since(session, campaign_id, now - DAY_US)
    remaining = None if campaign.budget is None else campaign.budget - meter.issued_net
    burn_hour, burn_day = hour_issued - hour_clawed, day_issued - day_clawed
    forecast = None
    # The last hour is the freshest signal; a quiet hour falls back to the day.
    if remaining is not None and remaining > 0:
        rate_per_us = burn_hour / HOUR_US if burn_hour > 0 else (burn_day / DAY_US if burn_day > 0 else 0)
        if rate_per_us > 0:
            at = now + int(remaining / rate_per_us)
            # Beyond the last instant the engine can show, the budget is as good as never exhausted.
            if at < to_us(dt.datetime(limits.INSTANT_YEAR_MAX, 12, 31, tzinfo=TOKYO)):
                forecast = format_instant(at)
    return {
        "campaign_id": campaign_id,
        "campaign_version": campaign.version,
        "budget": campaign.budget,
        "issued": issued,
        "clawed_back": clawed,
        "net_issued": meter.issued_net,
        "remaining": remaining,
        "exhausted": remaining == 0,
        "burn_last_hour": burn_hour,
        "burn_last_day": burn_day,
        "forecast_exhaustion_at": forecast,
        "as_of": format_instant(now),
    }


def _burn_since(session: Session, campaign_id: str, since: int | None) -> tuple[int, int]:
    """Points the campaign issued (awards, grants) and clawed back at or after `since` (ever, with
    None): its hour meters (`campaign_burn`) from the first whole hour at or after `since`, and
    the postings of the part of an hour before it (found by `posted_at_us`, an hour of the
    ledger's postings at most)."""
    where = [CampaignBurnRow.campaign_id == campaign_id]
    edge = None if since is None else posting_columns.burn_hour(since + posting_columns.BURN_HOUR_US - 1)
    if edge is not None:  # from the first whole hour at or after `since`
        where.append(CampaignBurnRow.hour_us >= edge)
    issued, clawed = session.execute(
        select(
            func.coalesce(func.sum(CampaignBurnRow.issued), 0), func.coalesce(func.sum(CampaignBurnRow.clawed_back), 0)
        ).where(*where)
    ).one()
    issued, clawed = int(issued), int(clawed)
    if since is not None and edge is not None and since < edge:  # the part hour before it
        for reason, total in session.execute(
            select(PostingRow.reason, func.sum(PostingRow.amount))
            .where(
                PostingRow.posted_at_us >= since,
                PostingRow.posted_at_us < edge,
                PostingRow.campaign_id == campaign_id,
                PostingRow.reason.in_(sorted(posting_columns.BURN_REASONS)),
            )
            .group_by(PostingRow.reason)
        ):
            if reason == rules.CLAWBACK:
                clawed += int(total)
            else:
                issued += int(total)
    return issued, clawed


def burn_by_day(ledger: Ledger, campaign_id: str) -> list[dict[str, Any]]:
    """Points the campaign issued and clawed back per day (Asia/Tokyo), the days with postings in order:
    the same postings `budget` sums (awards and grants issue, clawbacks take back), from their
    hour meters (a Tokyo day is 24 whole UTC hours)."""
    offset = 9 * HOUR_US  # Asia/Tokyo has no daylight saving time
    day = ((CampaignBurnRow.hour_us + offset) // DAY_US).label("day")
    with Session(ledger.engine) as session:
        totals = session.execute(
            select(day, func.sum(CampaignBurnRow.issued), func.sum(CampaignBurnRow.clawed_back))
            .where(CampaignBurnRow.campaign_id == campaign_id)
            .group_by(day)
            .order_by(day)
        ).all()
    return [
        {
            "day": (dt.date(1970, 1, 1) + dt.timedelta(days=int(n))).isoformat(),
            "issued": int(issued),
            "clawed_back": int(clawed),
            "net": int(issued) - int(clawed),
        }
        for n, issued, clawed in totals
    ]


# -- closeouts -----------------------------------------------------------------


def _day_bounds(business_date: str) -> tuple[int, int]:
    day = dt.date.fromisoformat(business_date)
    start = dt.datetime.combine(day, dt.time(), TOKYO)
    return to_us(start), to_us(start + dt.timedelta(days=1))


def ledger_day(
    session: Session, terminal_id: str, business_date: str, merchant_id: str | None = None
) -> dict[str, Any]:
    """The terminal's transactions of one Asia/Tokyo day (by occurred_at) as the ledger holds them;
    with `merchant_id`, only those made at that merchant."""
    start, end = _day_bounds(business_date)
    stmt = select(PaymentRow.id, PaymentRow.type, PaymentRow.amount, PaymentRow.occurred_at_us).where(
        PaymentRow.terminal_id == terminal_id, PaymentRow.occurred_at_us >= start, PaymentRow.occurred_at_us < end
    )
    if merchant_id is not None:
        stmt = stmt.where(PaymentRow.merchant_id == merchant_id)
    rows = list(session.execute(stmt.order_by(PaymentRow.sequence)))
    total = sum(r.amount if r.type == "purchase" else -r.amount for r in rows)
    return {
        "count": len(rows),
        "total": total,
        "transactions": [
            {"id": r.id, "type": r.type, "amount": r.amount, "occurred_at": format_instant(r.occurred_at_us)}
            for r in rows
        ],
    }


def closeout(
    ledger: Ledger, terminal_id: str, business_date: str, count: int, total: int, actor: Actor = OPERATOR
) -> dict[str, Any]:
    """Store a terminal's end-of-day count and net total and compare them with the ledger."""
    with Session(ledger.engine) as session, session.begin():
        # The terminal's row locked first (PostgreSQL; SQLite's writer is alone already): closeouts of
        # one terminal, in any process, take turns, so a first one is inserted once (two at once
        # were a primary key violation: a 500) and each correction's `before` is the one it replaced.
        terminal = session.get(TerminalRow, terminal_id, with_for_update=True)
        now = ledger.clock.now_us()
        today = tokyo_date(now).isoformat()
        if business_date > today:  # ISO dates order as text
            raise EngineError(
                "invalid_request", f"business_date {business_date} has not begun (today is {today} in Tokyo)"
            )
        # The terminal's day at its merchant now: a terminal moved from another merchant is not
        # shown that merchant's sales (and reconciliation compares with the same day).
        merchant_id = terminal.merchant_id if terminal else ""
        row = session.get(CloseoutRow, (terminal_id, business_date))
        before = None
        if row is None:
            session.add(
                CloseoutRow(
                    terminal_id=terminal_id,
                    business_date=business_date,
                    count=count,
                    total=total,
                    submitted_at_us=now,
                    merchant_id=merchant_id,
                )
            )
        else:  # a corrected count replaces the earlier one; the comparison is always against the ledger
            before = {"business_date": business_date, "count": row.count, "total": row.total}
            row.count, row.total, row.submitted_at_us, row.merchant_id = count, total, now, merchant_id
        held = ledger_day(session, terminal_id, business_date, merchant_id)
        matches = held["count"] == count and held["total"] == total
        audit.record(
            session,
            actor,
            "closeout.submit",
            f"terminal:{terminal_id}",
            before,
            {"business_date": business_date, "count": count, "total": total, "matches": matches},
            at_us=now,
        )
    report = {
        "terminal_id": terminal_id,
        "business_date": business_date,
        "submitted": {"count": count, "total": total},
        "ledger": {"count": held["count"], "total": held["total"]},
        "matches": matches,
    }
    if not matches:
        report["transactions"] = held["transactions"]
    return report


# -- signed chain heads ------------------------------------------------------------


def sign_chain_heads(ledger: Ledger, settings: Settings, as_of: int | None = None) -> list[str]:
    """Sign the posting chain head at the end of every finished business day not yet signed, and
    with it the audit log's head at that instant, so a rewritten audit chain (re-hashed by someone
    who can drop its triggers) no longer matches what the ward's key signed."""
    as_of = as_of or ledger.clock.now_us()
    today = tokyo_date(as_of)
    key = keyring.signing_key(settings)
    signed_days: list[str] = []
    while True:
        signed = _sign_days(ledger, key, today, SIGN_DAYS_PER_UNIT)
        signed_days += signed
        if len(signed) < SIGN_DAYS_PER_UNIT:
            break
    if settings.heads_dir is not None:
        try:
            keep_head_copies(ledger, Path(settings.heads_dir))
        except OSError as error:  # signed all the same; the next signing copies what is missing
            log.error(
                "chain heads: copies not kept in %s: %s", settings.heads_dir, error.strerror or type(error).__name__
            )
    return signed_days


# Days signed per unit of work: the days of a long history (after an import) are signed a few at a
# time, each few under the lock, so postings never wait for more than a few days' queries.
SIGN_DAYS_PER_UNIT = 5


def _sign_days(ledger: Ledger, key: Ed25519PrivateKey, today: dt.date, most: int) -> list[str]:
    """Sign the chain heads of up to `most` finished days not signed yet, oldest first, in one unit
    of work. Under the sequencer lock: one signer at a time (a cron job and a finance officer's
    click at once: the second waits, then finds the days signed), no posting of a day in flight
    while its head is read, and none stamped inside a signed day afterwards (the head's stamp floor
    moves to its end; a process whose clock is behind the signer's stamps after it all the same)."""
    signed_days: list[str] = []
    with ledger.unit_of_work() as unit:
        session = unit.session
        first = session.execute(select(func.min(PostingRow.posted_at_us))).scalar_one()
        if first is None:
            return []
        # From the day after the last signed one: a day missing before it is a head deleted, which
        # reconciliation names (`_check_chain_heads`); signed again here, it would sign whatever the
        # chain was made to say meanwhile (helper-101).
        last_signed = session.execute(select(func.max(ChainHeadRow.business_date))).scalar_one()
        day = tokyo_date(first) if last_signed is None else dt.date.fromisoformat(last_signed) + dt.timedelta(days=1)
        while day < today and len(signed_days) < most:
            name = day.isoformat()
            _, end = _day_bounds(name)
            last = session.execute(
                select(PostingRow.sequence, PostingRow.hash)
                .where(PostingRow.posted_at_us < end)
                .order_by(PostingRow.sequence.desc())
                .limit(1)
            ).first()
            # The first posting was made before the end of its own day, so every day from it on has a last one.
            assert last is not None
            audit_sequence, audit_hash = audit.last_before(session, end)
            document = {
                "business_date": name,
                "last_sequence": last.sequence,
                "hash": last.hash,
                "audit_last_sequence": audit_sequence,
                "audit_hash": audit_hash,
            }
            session.add(
                ChainHeadRow(
                    business_date=name,
                    last_sequence=last.sequence,
                    hash=last.hash,
                    signed_json=json.dumps(signing.sign_document(key, document)),
                )
            )
            signed_days.append(name)
            unit.raise_floor(end)
            day += dt.timedelta(days=1)
    return signed_days


def _check_chain_heads(
    session: Session, public_key: Ed25519PublicKey | None, copies: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Each signed head against its signature, the posting chain and the audit log; and every day
    from the first posting's to the last signed one has its head (signing leaves none out: one
    missing was deleted). With `copies` (the heads the ward keeps outside the database, by business
    date: `read_head_copies`), each copy too, and the database's heads and the copies must be the
    same: a head deleted or rewritten in the database, the last days' included, is named by its copy."""
    bad: list[dict[str, Any]] = []
    days = [r[0] for r in session.execute(select(ChainHeadRow.business_date).order_by(ChainHeadRow.business_date))]
    first = session.execute(select(func.min(PostingRow.posted_at_us))).scalar_one()
    if days and first is not None:
        signed, day, last = set(days), tokyo_date(first), dt.date.fromisoformat(days[-1])
        while day < last and len(bad) < rerate.MISMATCH_ROWS_MAX:
            if day.isoformat() not in signed:
                bad.append({"business_date": day.isoformat(), "problem": "no signed head: it was deleted"})
            day += dt.timedelta(days=1)
    stored: dict[str, Any] = {}
    for head in session.execute(select(ChainHeadRow).order_by(ChainHeadRow.business_date)).scalars():
        signed = stored[head.business_date] = json.loads(head.signed_json)
        document = signed.get("document", {})
        if public_key is not None and {k: document.get(k) for k in ("business_date", "last_sequence", "hash")} != {
            "business_date": head.business_date,
            "last_sequence": head.last_sequence,
            "hash": head.hash,
        }:
            problem: dict[str, Any] | None = {"problem": "row differs from the signed document"}
        else:
            problem = _head_problem(session, public_key, signed)
        if problem is not None:
            bad.append({"business_date": head.business_date, **problem})
    for day_name, text in sorted((copies or {}).items()):
        try:
            copy = json.loads(text)
            if not isinstance(copy, dict) or not isinstance(copy.get("document"), dict):
                raise ValueError("not a signed document")
        except ValueError as error:
            bad.append({"business_date": day_name, "copy": True, "problem": f"copy unreadable: {type(error).__name__}"})
            continue
        if copy["document"].get("business_date") != day_name:
            problem = {"problem": "copy signs another day"}
        elif day_name not in stored:
            problem = _head_problem(session, public_key, copy) or {"problem": "signed head deleted from the database"}
        elif stored[day_name] != copy:
            problem = {"problem": "database's head differs from the copy kept outside it"}
        else:
            continue  # checked above as the database's own
        bad.append({"business_date": day_name, "copy": True, **problem})
    if copies is not None:
        bad += [
            {"business_date": d, "problem": "no copy kept outside the database"}
            for d in sorted(set(stored) - set(copies))
        ]
    return bad


def _head_problem(
    session: Session, public_key: Ed25519PublicKey | None, signed: dict[str, Any]
) -> dict[str, Any] | None:
    """What is wrong with one signed head (its signature, where the posting chain and the audit
    log end by it), as a row's fields; None when nothing is."""
    document = signed.get("document", {})
    if public_key is None:
        return {"problem": keyring.NO_SIGNING_KEY}
    if not signing.verify_document(public_key, signed):
        return {"problem": "signature does not verify"}
    posting = session.get(PostingRow, document.get("last_sequence"))
    if posting is None or posting.hash != document.get("hash"):
        return {"problem": "posting chain no longer ends there"}
    if document.get("audit_last_sequence"):  # heads signed before the audit log carry none
        entry = session.get(AuditLogRow, document["audit_last_sequence"])
        if entry is None or entry.hash != document.get("audit_hash"):
            return {"audit_sequence": document["audit_last_sequence"], "problem": "audit chain no longer ends there"}
    return None


# -- the copies of the signed heads kept outside the database ------------------------------------

HEAD_COPY = "chain-head-{}.json"
_HEAD_COPY_NAME = re.compile(r"chain-head-(\d{4}-\d{2}-\d{2})\.json")


def keep_head_copies(ledger: Ledger, directory: Path) -> list[str]:
    """Write into `directory` a copy of every signed head it does not hold yet (`chain-head-<business
    date>.json`, the signed document as stored), oldest first; never replaces a file. The ward
    keeps the directory outside the database (another host, write-once storage), so that a head
    deleted or rewritten in the database, the latest included, is named by reconciliation
    (`read_head_copies`). Returns the business dates copied; an OSError (a full disk) leaves the
    rest for the next signing, and reconciliation names each head without its copy meanwhile."""
    directory.mkdir(parents=True, exist_ok=True)
    with Session(ledger.engine) as session:
        heads = session.execute(
            select(ChainHeadRow.business_date, ChainHeadRow.signed_json).order_by(ChainHeadRow.business_date)
        ).all()
    copied: list[str] = []
    for business_date, signed_json in heads:
        name = HEAD_COPY.format(business_date)
        if _HEAD_COPY_NAME.fullmatch(name) is None:
            # Not a date: a row written behind the engine's back must not name a path elsewhere.
            log.warning("chain heads: a head's business date is not a date; not copied")
            continue
        path = directory / name
        if path.exists():
            continue
        descriptor, partial = tempfile.mkstemp(dir=directory, prefix=".chain-head-", suffix=".partial")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(signed_json)
                out.flush()
                os.fsync(out.fileno())
            os.link(partial, path)  # whole or not at all, and never over a file another signer wrote
            copied.append(business_date)
        except FileExistsError:
            pass  # another signer copied it meanwhile
        finally:
            os.unlink(partial)
    return copied


def read_head_copies(directory: Path) -> dict[str, str]:
    """The copies `keep_head_copies` wrote, by business date (a directory not there holds none)."""
    if not directory.is_dir():
        return {}
    found: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        named = _HEAD_COPY_NAME.fullmatch(path.name)
        if named is not None:
            found[named.group(1)] = path.read_text(encoding="utf-8", errors="replace")
    return found


# -- reconciliation ------------------------------------------------------------------


def _check_statements(
    session: Session, public_key: Ed25519PublicKey | None, settings: Settings
) -> list[dict[str, Any]]:
    bad = []
    merchants = {r.id: json.loads(r.record_json) for r in session.execute(select(MerchantRow)).scalars()}
    funded_by = settlement._funded_by(session)
    for run in session.execute(select(SettlementRunRow).order_by(SettlementRunRow.period_start_us)).scalars():
        signed = json.loads(run.statement_json)
        if public_key is None or not signing.verify_document(public_key, signed):
            problem = keyring.NO_SIGNING_KEY if public_key is None else "statement signature does not verify"
            bad.append({"run_id": run.id, "problem": problem})
            continue
        signed_lines = {line["merchant_id"]: line for line in signed["document"]["lines"]}
        # Recompute with the fee rates the run used: a later fee change does not reopen a closed period.
        rates = {m: {"fee_bp": line["fee_bp"]} for m, line in signed_lines.items()}
        activities, _ = settlement.aggregate(
            session,
            run.period_start_us,
            run.period_end_us,
            {**merchants, **rates},
            funded_by,
            run.last_posting_sequence,
        )
        recomputed = {a.merchant_id: statement.line_for(a).as_dict() for a in activities}
        stored = {
            line.merchant_id: line
            for line in session.execute(select(SettlementLineRow).where(SettlementLineRow.run_id == run.id)).scalars()
        }
        for merchant_id in sorted(set(recomputed) | set(stored) | set(signed_lines)):
            again, line, doc = recomputed.get(merchant_id), stored.get(merchant_id), signed_lines.get(merchant_id)
            fields = (
                "coin_sales",
                "coin_refunds",
                "points_redeemed",
                "points_returned",
                "merchant_funded_points",
                "fee",
                "carried_in",
                "net_payout",
            )
            if (
                again is None
                or line is None
                or doc is None
                or any(again[f] != getattr(line, f) or again[f] != doc[f] for f in fields)
            ):
                bad.append(
                    {"run_id": run.id, "merchant_id": merchant_id, "problem": "statement line differs from the ledger"}
                )
        bad.extend(
            {"run_id": run.id, **problem} for problem in _run_outputs_problems(session, settings, run, signed, stored)
        )
    return bad


def _run_outputs_problems(
    session: Session,
    settings: Settings,
    run: SettlementRunRow,
    signed: dict[str, Any],
    lines: dict[str, SettlementLineRow],
) -> list[dict[str, Any]]:
    """What of a run's stored outputs the signed statement and the ledger do not vouch for: the
    CSV (made from the signed lines), the Zengin file (its hash, when the statement carries one;
    each transfer against the run's payout postings, in order), and each line's payout status
    (against the run's payout postings and the status the statement signed)."""
    problems: list[dict[str, Any]] = []
    document = signed["document"]
    if statement.to_csv(document["lines"]) != run.csv_text:
        problems.append({"problem": "the stored CSV differs from the signed statement"})
    try:
        zengin_file: bytes | None = settlement.payout_file(settings, run)
    except sealing.SealingError as exc:
        problems.append({"problem": f"the stored Zengin file does not open ({exc})"})
        zengin_file = None
    payout_file = document.get("payout_file")  # statements signed before it was added carry none
    if (
        zengin_file is not None
        and payout_file is not None
        and payout_file.get("sha256") != (hashlib.sha256(zengin_file).hexdigest() if zengin_file else None)
    ):
        problems.append({"problem": "the stored Zengin file is not the one the statement signed"})
    postings = list(
        session.execute(
            select(PostingRow.reason, PostingRow.debit_account_id, PostingRow.credit_account_id, PostingRow.amount)
            .where(
                PostingRow.payment_id == run.id,
                PostingRow.reason.in_((rules.PAYOUT, rules.PAYOUT_PAID, rules.PAYOUT_FAILED)),
            )
            .order_by(PostingRow.sequence)
        )
    )
    merchant_of = {rules.payout_account(m): m for m in lines}
    payouts = [(merchant_of.get(p.credit_account_id), p.amount) for p in postings if p.reason == rules.PAYOUT]
    transfers = None
    try:
        if zengin_file is not None:
            transfers = zengin.parse(zengin_file).transfers if zengin_file else ()
    except zengin.ZenginError as exc:
        problems.append({"problem": f"the stored Zengin file does not parse ({exc})"})
    # A file's transfer names its merchant by the merchant's number, or (files written before
    # migration `20261216_customer_code`) by the digits of its id.
    if transfers is not None and (
        len(transfers) != len(payouts)
        or any(
            t.amount_yen != amount
            or t.customer_code_1
            not in {settlement.customer_code(session, m or ""), settlement.legacy_customer_code(m or "")}
            for t, (m, amount) in zip(transfers, payouts)
        )
    ):
        problems.append({"problem": "the stored Zengin file's transfers differ from the run's payout postings"})
    answered = {
        merchant_of.get(p.debit_account_id): ("paid" if p.reason == rules.PAYOUT_PAID else "failed")
        for p in postings
        if p.reason != rules.PAYOUT
    }
    sent = {m for m, _ in payouts}
    signed_status = {line["merchant_id"]: line.get("payout_status") for line in document["lines"]}
    for merchant_id, line in sorted(lines.items()):
        at_run = signed_status.get(merchant_id)
        expected = answered.get(merchant_id, "pending") if merchant_id in sent else at_run
        if (merchant_id in sent and at_run != "pending") or line.payout_status != expected:
            problems.append(
                {
                    "merchant_id": merchant_id,
                    "problem": f"payout status {line.payout_status} is not what the ledger holds ({expected})",
                }
            )
    return problems


# Fields of a merchant's audited record (`Config.public_record`) its version does not hold: they
# say whether an account is on file and awaits confirmation, which the sealed account tells.
_PUBLIC_ONLY = ("bank_account_on_file", "bank_account_pending_confirmation")


def _check_versions_audited(session: Session) -> list[dict[str, Any]]:
    """Each merchant and campaign version made since the audit log began is the record its audit
    entry (`<kind>.create` / `<kind>.update`, in order) holds, one entry a version: a version's
    record edited behind the engine's back (a fee, a rate, a funding source) with the current
    record no longer passes unless the audit chain is rewritten too, which the signed heads name.
    Versions dated before the log's first entry were made before it existed, and are not checked."""
    first = session.execute(select(func.min(AuditLogRow.at_us))).scalar()
    if first is None:
        return []
    bad: list[dict[str, Any]] = []
    for kind, table, key in (
        ("merchant", MerchantVersionRow, MerchantVersionRow.merchant_id),
        ("campaign", CampaignVersionRow, CampaignVersionRow.campaign_id),
    ):
        versions: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for owner, version, record_json in session.execute(
            select(key, table.version, table.record_json)
            .where(table.created_at_us >= first)
            .order_by(key, table.version)
        ):
            versions[f"{kind}:{owner}"].append((version, record_json))
        entries: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
        for target, sequence, after_json in session.execute(
            select(AuditLogRow.target, AuditLogRow.sequence, AuditLogRow.after_json)
            .where(AuditLogRow.action.in_((f"{kind}.create", f"{kind}.update")))
            .order_by(AuditLogRow.sequence)
        ):
            entries[target].append((sequence, after_json))
        for target in sorted(set(versions) | set(entries)):
            made, logged = versions.get(target, []), entries.get(target, [])
            for i in range(max(len(made), len(logged))):
                if i >= len(made) or i >= len(logged):
                    row: dict[str, Any] = {"target": target}
                    row.update({"audit_sequence": logged[i][0]} if i < len(logged) else {"version": made[i][0]})
                    bad.append({**row, "problem": "a version without its audit entry, or an entry without its version"})
                    continue
                (version, record_json), (sequence, after_json) = made[i], logged[i]
                record = json.loads(record_json)
                logged_record = json.loads(after_json or "null")
                if kind == "merchant":
                    record.pop("bank_account", None)
                    if isinstance(logged_record, dict):
                        for name in _PUBLIC_ONLY:
                            logged_record.pop(name, None)
                record = json.loads(core_audit.canonical_json(core_audit.mask(record)) or "null")
                if record != logged_record and not _names_mended(record, logged_record):
                    bad.append(
                        {
                            "target": target,
                            "version": version,
                            "audit_sequence": sequence,
                            "problem": "the version is not the record its audit entry holds",
                        }
                    )
                if len(bad) >= rerate.MISMATCH_ROWS_MAX:
                    return bad
    return bad


def _names_mended(record: dict[str, Any], logged: Any) -> bool:
    """Whether `record` is the `logged` one but for its name and certification schemes mended by
    migration `20261211_label_names` (each refused character one U+FFFD; a name with nothing
    visible the record's id, a scheme U+FFFD), which changed stored versions without an entry."""

    def mended(mine: Any, theirs: Any, fallback: str) -> bool:
        if mine in (theirs, fallback):
            return True
        return (
            isinstance(mine, str)
            and isinstance(theirs, str)
            and len(mine) == len(theirs)
            and all(a == b or a == "\ufffd" for a, b in zip(mine, theirs, strict=True))
        )

    if not isinstance(logged, dict) or not mended(record.get("name"), logged.get("name"), str(record.get("id"))):
        return False
    mine, theirs = record.get("ethical_certifications"), logged.get("ethical_certifications")
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        if not all(
            isinstance(m, dict) and isinstance(t, dict) and mended(m.get("scheme"), t.get("scheme"), "\ufffd")
            for m, t in zip(mine, theirs, strict=True)
        ):
            return False
        logged = {**logged, "ethical_certifications": [{**t, "scheme": m.get("scheme")} for m, t in zip(mine, theirs)]}
    if "name" in record:
        logged = {**logged, "name": record["name"]}
    return bool(logged == record)


def _check_closeouts(session: Session) -> list[dict[str, Any]]:
    bad = []
    for c in session.execute(select(CloseoutRow)).scalars():
        held = ledger_day(session, c.terminal_id, c.business_date, c.merchant_id)
        if (held["count"], held["total"]) != (c.count, c.total):
            bad.append(
                {
                    "terminal_id": c.terminal_id,
                    "business_date": c.business_date,
                    "submitted": {"count": c.count, "total": c.total},
                    "ledger": {"count": held["count"], "total": held["total"]},
                    "transactions": held["transactions"],
                }
            )
    return bad


def _check_spent_before_expiry(session: Session) -> list[dict[str, Any]]:
    """Redemption legs that took points from a lot already past its end when their purchase was
    accepted (SPEC §4: expired points are not available; before 9b58300 a purchase between a
    lot's end and the next expiry run could spend them)."""
    lot = WALLET_LOT.c
    rows = session.execute(
        select(RedemptionLegRow.payment_id, RedemptionLegRow.lot_id, RedemptionLegRow.points, lot.expires_at_us)
        .join(PaymentRow, PaymentRow.id == RedemptionLegRow.payment_id)
        .join(WALLET_LOT, lot.id == RedemptionLegRow.lot_id)
        .where(lot.expires_at_us <= PaymentRow.accepted_at_us)
        .order_by(PaymentRow.sequence, RedemptionLegRow.position)
        .limit(rerate.MISMATCH_ROWS_MAX)
    )
    return [
        {"payment_id": pid, "lot_id": lot_id, "points": points, "lot_expired_at": format_instant(expired_at)}
        for pid, lot_id, points, expired_at in rows
    ]


# Payments from the head's `ordered_from_sequence` on whose acceptance instant is before the one
# before them in the chain; a window over the sequence's index, one pass.
_ACCEPTANCE_ORDER_SQL = (
    "SELECT id, accepted_at_us, before_id, before_us FROM (SELECT p.id, p.sequence, p.accepted_at_us, "
    "LAG(p.id) OVER (ORDER BY p.sequence) AS before_id, "
    "LAG(p.accepted_at_us) OVER (ORDER BY p.sequence) AS before_us FROM payment p "
    "WHERE p.sequence >= :start) t "
    "WHERE accepted_at_us < before_us ORDER BY sequence LIMIT :rows"
)


def _check_acceptance_order(session: Session) -> tuple[int, list[dict[str, Any]]]:
    """Payments accepted before the payment before them in the chain, from the head's
    `ordered_from_sequence` on, each with the one before it. Live stamps never go back (the order
    floor) and the history import refuses to (`StampBehindLedger`), so each payment's instant lies
    between its neighbours': one moved past either (to fall under other campaign versions in the
    re-rate), with the chains hashed again, makes an inversion. Ledgers written before the order
    floor hold inversions by design: the check starts where migration `20261219_ordered_from`
    found the chain's end. With the rows, that start (`ordered_from_sequence`), for the report: a
    column someone who can write the database can move too, so a report showing it moved between
    runs is the sign (it is not signed; ARCHITECTURE's open edges)."""
    start = session.execute(select(LedgerHead.ordered_from_sequence).where(LedgerHead.id == 1)).scalar() or 0
    rows = session.execute(sql_text(_ACCEPTANCE_ORDER_SQL), {"start": start, "rows": rerate.MISMATCH_ROWS_MAX})
    return start, [
        {
            "payment_id": pid,
            "accepted_at": format_instant(at),
            "payment_before_id": before_id,
            "payment_before_accepted_at": format_instant(before),
        }
        for pid, at, before_id, before in rows
    ]


_AWARD_DATES_SQL = (
    "SELECT a.payment_id, a.campaign_id, a.campaign_version, a.credit_at_us, a.lot_expires_at_us, "
    "p.occurred_at_us, p.accepted_at_us FROM award a JOIN payment p ON p.id = a.payment_id"
)
# Calendar days past a dekad's close within which its crediting day falls, beyond twice the delay
# in business days: a week of holidays (New Year, Golden Week) and the dekad's own weekend.
_DEKAD_SLACK_DAYS = 10


def _credit_bounds(
    schedule: str, delay_business_days: int, occurred_at_us: int, accepted_at_us: int
) -> tuple[int, int]:
    """The instants an award's credit may be at under its version's schedule: its acceptance for an
    immediate award; for a dekad award from the day after its dekad's close to that close plus
    twice the delay and `_DEKAD_SLACK_DAYS` (never before its acceptance). Not the exact business
    day (`crediting.credit_at_us`): that follows the installed holiday calendar, and a release that
    adds a holiday would make a credit instant answered and stored before it look moved."""
    if schedule == "immediate":
        return accepted_at_us, accepted_at_us
    close = crediting.dekad_close(tokyo_date(occurred_at_us))
    start = to_us(dt.datetime.combine(close + dt.timedelta(days=1), dt.time(), TOKYO))
    end = start + (2 * max(delay_business_days, 1) + _DEKAD_SLACK_DAYS) * DAY_US
    return max(start, accepted_at_us), max(end, accepted_at_us)


# A lot of `point_lot` with its source: a grant's, or an award's credited before migration
# `20261213_award_lots` (its award row keeps the credit instant and version).
_POINT_LOT_DATES_SQL = (
    "SELECT l.id, l.credited_at_us, l.expires_at_us, g.granted_at_us, g.campaign_id, g.campaign_version, "
    "a.credit_at_us, a.campaign_id, a.campaign_version FROM point_lot l "
    "LEFT JOIN point_grant g ON g.id = l.source_id "
    "LEFT JOIN award a ON a.payment_id = l.source_id AND a.campaign_id = l.campaign_id ORDER BY l.id"
)


def _check_lot_dates(session: Session) -> list[dict[str, Any]]:
    """Awards and lots whose credit instant or expiry is not the one their campaign version gives
    (`engine.crediting`): an award's credit instant from its purchase's instants and the version's
    credit schedule, a lot's end from its credit instant and the version's validity. A lot's end
    moved later kept its points from expiring, and nothing checked it (helper-101)."""
    versions = {
        (cid, int(version)): Campaign.model_validate_json(record)
        for cid, version, record in session.execute(
            select(CampaignVersionRow.campaign_id, CampaignVersionRow.version, CampaignVersionRow.record_json)
        )
    }
    any_validity: dict[str, set[int]] = defaultdict(set)  # campaign -> the validities of its versions
    for (cid, _), version in versions.items():
        any_validity[cid].add(version.validity_months)
    bad: list[dict[str, Any]] = []

    def wrong(**row: Any) -> bool:
        bad.append(row)
        return len(bad) >= rerate.MISMATCH_ROWS_MAX

    for pid, cid, version, credit_at, expires_at, occurred_at, accepted_at in bulk.stream(session, _AWARD_DATES_SQL):
        campaign = versions.get((cid, int(version)))
        if campaign is None:
            if wrong(payment_id=pid, campaign_id=cid, problem=f"no version {version} of the campaign"):
                return bad
            continue
        credit = campaign.credit
        earliest, latest = _credit_bounds(credit.schedule, credit.delay_business_days, occurred_at, accepted_at)
        if not earliest <= credit_at <= latest:
            problem = f"credited at {format_instant(credit_at)}, outside what its version's schedule allows"
        elif expires_at is not None and expires_at != crediting.expires_at_us(credit_at, campaign.validity_months):
            problem = f"its lot ends at {format_instant(expires_at)}, not at the end its version gives"
        else:
            continue
        if wrong(payment_id=pid, campaign_id=cid, problem=problem):
            return bad
    for lot_id, credited_at, expires_at, granted_at, g_cid, g_version, a_credit_at, a_cid, a_version in bulk.stream(
        session, _POINT_LOT_DATES_SQL
    ):
        source = (
            (granted_at, g_cid, g_version)
            if granted_at is not None
            else (a_credit_at, a_cid, a_version)
            if a_credit_at is not None
            else None
        )
        campaign = None if source is None else versions.get((source[1], int(source[2])))
        # An award's lot kept here (credited before migration `20261213_award_lots`) took the
        # validity of the version in force at its crediting, which may be a later one.
        validities = (
            set()
            if campaign is None
            else {campaign.validity_months}
            if granted_at is not None
            else any_validity[campaign.id]
        )
        if source is None or campaign is None:
            problem = "its grant or award (and its campaign version) is not in the ledger"
        elif credited_at != source[0]:
            problem = f"credited at {format_instant(credited_at)}, its source at {format_instant(source[0])}"
        elif all(expires_at != crediting.expires_at_us(credited_at, v) for v in validities):
            problem = f"it ends at {format_instant(expires_at)}, not at the end its version gives"
        else:
            continue
        if wrong(lot_id=lot_id, problem=problem):
            return bad
    return bad


def _check_budgets(ledger: Ledger, session: Session) -> list[dict[str, Any]]:
    with ledger.read_view(session) as view:
        campaigns = view.catalog.campaigns
    bad = []
    for meter in session.execute(select(CampaignRow)).scalars():
        campaign = campaigns.get(meter.id)
        if campaign and campaign.budget is not None and meter.issued_net > campaign.budget:
            bad.append({"campaign_id": meter.id, "budget": campaign.budget, "net_issued": meter.issued_net})
    return bad


@metrics.job("reconcile")
def payment_count(ledger: Ledger) -> int:
    """How many payments `reconcile`'s re-rate goes through: the total its `progress` counts to."""
    with Session(ledger.engine) as session:
        return int(session.execute(select(func.count()).select_from(PaymentRow)).scalar_one())


RECONCILIATION_LOCK = 0x5E7A_0EC0  # `db.alone`'s key: one reconciliation at a time per database


@contextlib.contextmanager
def reconciliation_slot(ledger: Ledger, *, wait: bool) -> Iterator[None]:
    """Hold the database's one reconciliation slot for the block. Each run holds a snapshot and a
    few connections for as long as its re-rate takes, so many at once (reloads of the page, a
    script calling `GET /v1/reconciliation` in a loop) would take the pool from the money path.
    `wait=False` (the API, the page) answers 409 `reconciliation_in_progress` while another runs, in
    any process; `wait=True` (`setapay reconcile`) queues behind it."""
    try:
        with db.alone(ledger.engine, RECONCILIATION_LOCK, wait=wait):
            yield
    except db.Busy:
        raise EngineError("reconciliation_in_progress") from None


# What a check raises reading a row not of its kind (a tampered or corrupt ledger): a failed
# assertion, JSON or a record that does not parse (pydantic's errors are ValueErrors), a field of
# the wrong type. Not the database's errors: a lost connection is not a finding.
UNREADABLE = (
    AssertionError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    ArithmeticError,
    NoResultFound,  # a row every ledger has (the head) deleted
)


def reconcile(
    ledger: Ledger,
    settings: Settings,
    progress: Progress | None = None,
    *,
    wait: bool = False,
    slot_held: bool = False,
) -> dict[str, Any]:
    """Every invariant, each pass or fail with the offending rows; in the database's reconciliation
    slot (`reconciliation_slot`), unless the caller holds it already (`slot_held`)."""
    if not slot_held:
        with reconciliation_slot(ledger, wait=wait):
            return reconcile(ledger, settings, progress, slot_held=True)
    public_key = keyring.signing_public_key(settings)
    unreadable: dict[str, str] = {}  # a check that could not read its rows -> why

    def guarded(name: str, check: Callable[[], Any], failed: Any) -> Any:
        """`check()`, or `failed` when a row it reads is not of its kind (a tampered or corrupt
        ledger): reported as that check's failure, never a traceback or a 500 (helper-101)."""
        try:
            return check()
        except UNREADABLE as error:
            # With its traceback in the log: a bug of the check's own reads the same way.
            log.warning("reconciliation: %s could not read the ledger", name, exc_info=True)
            unreadable[name] = f"a row it reads is malformed: {type(error).__name__}: {str(error)[:200]}"
            return failed

    # Every check reads the one snapshot (PostgreSQL): a group committed between two of their
    # statements made the chain, the balances and the identities look broken under load.
    with db.one_snapshot(ledger.engine) as engine:
        ledger_report = guarded("ledger", lambda: queries.ledger_check(engine), None)
        with Session(engine) as session:
            budgets = guarded("budget_never_exceeded", lambda: _check_budgets(ledger, session), [])
            copies = None
            if settings.heads_dir is not None:
                try:
                    copies = read_head_copies(Path(settings.heads_dir))
                except OSError as error:  # every head then lacks its copy, and the check says why
                    unreadable["signed_chain_heads_valid"] = f"the copies could not be read: {error.strerror}"
                    copies = {}
            heads = guarded("signed_chain_heads_valid", lambda: _check_chain_heads(session, public_key, copies), [])
            statements = guarded(
                "statements_match_ledger", lambda: _check_statements(session, public_key, settings), []
            )
            closeouts = guarded("closeouts_match_ledger", lambda: _check_closeouts(session), [])
            versions = guarded("versions_match_audit", lambda: _check_versions_audited(session), [])
            spent_expired = guarded("no_points_spent_past_expiry", lambda: _check_spent_before_expiry(session), [])
            lot_dates = guarded("lot_dates_match_campaigns", lambda: _check_lot_dates(session), [])
            ordered_from, in_order = guarded(
                "payments_accepted_in_order", lambda: _check_acceptance_order(session), (None, [])
            )
            audit_report = guarded("audit", lambda: audit.check(session), {"breaks": [], "gaps": []})
        rerated = guarded(
            "rerate_matches_ledger",
            lambda: rerate.rerate_check(engine, progress),
            {"ok": False, "mismatches": [], "checked": 0},
        )
    if ledger_report is None:
        report = unreadable.pop("ledger")
        ledger_report = queries.unread_ledger_report()
        unreadable.update((name, report) for name in ledger_report["checks"])
    if "audit" in unreadable:
        unreadable["audit_chain_intact"] = unreadable["audit_sequence_gapless"] = unreadable.pop("audit")
    checks = {name: {"pass": ok} for name, ok in ledger_report["checks"].items()}
    details = {
        "cached_balances_match": ledger_report["mismatched_accounts"],
        "hash_chain_intact": ledger_report["chain_breaks"],
        "posting_sequence_gapless": ledger_report["sequence_gaps"],
        "payment_chain_intact": ledger_report["payment_chain_breaks"],
        "lots_match_balances": ledger_report["lots_mismatched"],
        "liability_identity_per_wallet": ledger_report["wallets_broken"],
        "burn_meters_match": ledger_report["burn_mismatched"],
        "postings_of_their_kind": ledger_report["malformed_postings"],
        "postings_match_payments": [
            {"source": kind, "id": i}
            for kind in ("coin_sale", "redemption", "refund")
            for i in ledger_report["sources_mismatched"][kind]
        ],
        "postings_match_awards_and_grants": [
            {"source": kind, "id": i} for kind in ("award", "grant") for i in ledger_report["sources_mismatched"][kind]
        ],
        "cap_usage_matches_awards": ledger_report["sources_mismatched"]["usage"],
        "liability_identity_per_campaign": [
            {"campaign_id": c, **v} for c, v in ledger_report["campaigns"].items() if not v["identity_holds"]
        ],
        "budget_meters_match": [
            {"campaign_id": c, **v} for c, v in ledger_report["campaigns"].items() if not v["meter_matches"]
        ],
    }
    for name, rows in details.items():
        checks[name]["rows"] = rows
    checks["budget_never_exceeded"] = {"pass": not budgets, "rows": budgets}
    checks["signed_chain_heads_valid"] = {"pass": not heads, "rows": heads}
    if copies is not None:
        checks["signed_chain_heads_valid"]["copies_compared"] = len(copies)
    checks["statements_match_ledger"] = {"pass": not statements, "rows": statements}
    checks["closeouts_match_ledger"] = {"pass": not closeouts, "rows": closeouts}
    checks["versions_match_audit"] = {"pass": not versions, "rows": versions}
    checks["no_points_spent_past_expiry"] = {"pass": not spent_expired, "rows": spent_expired}
    checks["lot_dates_match_campaigns"] = {"pass": not lot_dates, "rows": lot_dates}
    checks["payments_accepted_in_order"] = {"pass": not in_order, "rows": in_order, "from_sequence": ordered_from}
    checks["audit_chain_intact"] = {"pass": not audit_report["breaks"], "rows": audit_report["breaks"]}
    checks["audit_sequence_gapless"] = {"pass": not audit_report["gaps"], "rows": audit_report["gaps"]}
    checks["rerate_matches_ledger"] = {
        "pass": rerated["ok"],
        "rows": rerated["mismatches"],
        "checked": rerated["checked"],
    }
    for name, why in unreadable.items():
        checks[name]["pass"] = False
        checks[name]["problem"] = why
    return {
        "ok": all(c["pass"] for c in checks.values()),
        "as_of": format_instant(ledger.clock.now_us()),
        "postings": ledger_report["postings"],
        "checks": checks,
    }
