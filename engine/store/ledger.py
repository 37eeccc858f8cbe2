"""The ledger unit of work: rate a group of requests and post it in one transaction.

`Ledger.submit` is the one place that owns a database transaction on the
money path. It takes the sequencer lock (the `ledger_head` row: FOR UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), answers remembered idempotency keys,
loads exactly the rating state the group needs, rates the whole group with one
kernel call, and writes payments, awards, postings (hash-chained), cached
balances, cap usage, budget meters and idempotent answers before committing.
Nothing is acknowledged before that commit, and because every writer of every
process holds the same lock while it rates, caps and budgets stay exact and
the acceptance sequence stays gapless.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import crediting
from engine import ledger_rules as rules
from engine.clock import SystemClock
from engine.errors import decline
from engine.model import Campaign, Merchant, Purchase, Refund
from engine.rating import AwardState, Catalog, PurchaseState, RatingState, build_catalog, rate, window_key
from engine.rating._kernel_py import share_target
from engine.receipts import Receipt
from engine.store import bulk
from engine.store.books import load_books, save_books
from engine.store.models import (
    AccountRow,
    AwardRow,
    CampaignRow,
    CampaignVersionRow,
    IdempotencyRow,
    LedgerHead,
    MerchantRow,
    PaymentRow,
    PostingRow,
    RedemptionLegRow,
    TerminalRow,
    WalletWindowUsageRow,
)
from engine.timeutil import format_instant, to_us
from engine.wallet_book import Lot, WalletBook, lot_id


@dataclasses.dataclass
class Submission:
    """One purchase or refund as a terminal sent it, already validated."""

    terminal_id: str
    idempotency_key: str
    request_hash: str
    body: Purchase | Refund
    request_json: str
    merchant_id: str | None = None  # the terminal's merchant, resolved under the lock
    receipt: Receipt | None = None  # the payment app's verified receipt (the API requires one)

    @property
    def receipt_key(self) -> tuple[str, str] | None:
        return (self.receipt.app_id, self.receipt.jti) if self.receipt is not None else None


@dataclasses.dataclass
class Result:
    status: int
    body: dict
    replayed: bool = False
    remember: bool = True  # scope failures are not business outcomes and are not remembered


class Ledger:
    """Storage-backed engine operations; one instance per process."""

    def __init__(self, engine: Engine, clock=None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self._catalog: tuple | None = None

    # -- the sequencer -----------------------------------------------------

    def _lock_head(self, session: Session) -> LedgerHead:
        stmt = select(LedgerHead).where(LedgerHead.id == 1)
        if session.bind.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        head = session.execute(stmt).scalar_one()
        return head

    def _lock_head_readonly(self, session: Session) -> LedgerHead:
        """The head for readers: no lock, a consistent snapshot of the catalog version."""
        return session.execute(select(LedgerHead).where(LedgerHead.id == 1)).scalar_one()

    def _catalog_for(self, session: Session, version: int):
        if self._catalog is None or self._catalog[0] != version:
            campaigns = [
                Campaign.model_validate_json(row.record_json)
                for row in session.execute(
                    select(CampaignVersionRow)
                    .join(CampaignRow, CampaignRow.id == CampaignVersionRow.campaign_id)
                    .where(CampaignVersionRow.version == CampaignRow.current_version)
                ).scalars()
            ]
            merchants = [
                Merchant.from_stored(row.record_json)
                for row in session.execute(select(MerchantRow).order_by(MerchantRow.id)).scalars()
            ]
            terminals = {r.id: r.merchant_id for r in session.execute(select(TerminalRow.id, TerminalRow.merchant_id))}
            self._catalog = (
                version,
                build_catalog(merchants, campaigns),
                {c.id: c for c in campaigns},
                {m.id: m for m in merchants},
                terminals,
            )
        return self._catalog

    # -- the money path ----------------------------------------------------

    def submit(self, submissions: list[Submission]) -> list[Result]:
        """Accept, decline or replay each submission in order.

        A group is one transaction, except for a receipt used again in the group under
        another idempotency key: whether that later use is `receipt_already_used` depends
        on whether the earlier one is accepted. When it is, the later use is declined in
        the same transaction; when the earlier one is declined, the later use is rated in
        a next transaction (a loop, each round deciding at least its first submission).
        """
        results: list[Result | None] = [None] * len(submissions)
        todo = list(range(len(submissions)))
        while todo:
            for i, result in zip(todo, self._submit_one([submissions[i] for i in todo])):
                results[i] = result
            todo = [i for i in todo if results[i] is None]
        return results  # type: ignore[return-value]

    def _submit_one(self, submissions: list[Submission]) -> list[Result | None]:
        """Accept, decline or replay each submission in order, in one transaction; None for
        a submission left to the next round (its receipt's earlier use here was not accepted)."""
        keys = {(s.terminal_id, s.idempotency_key) for s in submissions}
        with Session(self.engine) as session, session.begin():
            if session.bind.dialect.name == "postgresql":
                # A group of pure retries needs no lock: a remembered answer is committed and final.
                remembered = self._remembered(session, keys)
                if len(remembered) == len(keys):
                    return [self._replay(*remembered[(s.terminal_id, s.idempotency_key)][2:], s) for s in submissions]
            return self._post_group(session, submissions, keys)

    def _post_group(
        self, session: Session, submissions: list[Submission], keys: set[tuple[str, str]]
    ) -> list[Result | None]:
        """`_submit_one` from the sequencer lock on."""
        head = self._lock_head(session)
        _, catalog, campaigns, merchants, terminals = self._catalog_for(session, head.catalog_version)
        results: list[Result | None] = [None] * len(submissions)

        # 1. Remembered keys answer first (looked up again under the lock); a key twice
        # in one group answers like a retry.
        remembered = self._remembered(session, keys)
        first_in_group: dict[tuple[str, str], int] = {}
        fresh: list[int] = []
        for i, s in enumerate(submissions):
            key = (s.terminal_id, s.idempotency_key)
            row = remembered.get(key)
            if row is not None:
                results[i] = self._replay(row[2], row[3], row[4], s)
            elif key in first_in_group:
                continue  # answered after the group is rated, from the first one's result
            else:
                first_in_group[key] = i
                fresh.append(i)

        # 2. References the rating kernel cannot see: originals and their merchant.
        originals = self._load_originals(
            session, {submissions[i].body.original_id for i in fresh if submissions[i].body.type == "refund"}
        )
        used_receipts = self._used_receipts(session, {submissions[i].receipt_key for i in fresh} - {None})
        claimed: dict[tuple[str, str], int] = {}  # receipt -> its first fresh use in this group
        deferred: dict[int, int] = {}  # a later use of a receipt -> that first use
        events = []
        payment_ids: dict[int, str] = {}
        for i in fresh:
            s = submissions[i]
            s.merchant_id = terminals.get(s.terminal_id)
            if s.merchant_id is None or (s.body.type == "purchase" and s.body.merchant_id != s.merchant_id):
                results[i] = Result(*decline("forbidden", "a terminal posts only for its own merchant"), remember=False)
                continue
            if s.body.type == "refund":
                original = originals.get(s.body.original_id)
                if original is None:
                    results[i] = self._decline("original_not_found", s)
                    continue
                if original["merchant_id"] != s.merchant_id:
                    results[i] = self._decline("refund_merchant_mismatch", s)
                    continue
                if s.receipt is not None and (original["receipt_app_id"], original["receipt_jti"]) != (
                    s.receipt.app_id,
                    s.receipt.original_jti,
                ):
                    results[i] = Result(
                        *decline("receipt_mismatch", "the receipt's original_jti is not the purchase's receipt"),
                        remember=False,
                    )
                    continue
            if s.receipt_key in used_receipts:
                results[i] = self._decline("receipt_already_used", s)
                continue
            if s.receipt_key is not None:
                if s.receipt_key in claimed:
                    deferred[i] = claimed[s.receipt_key]
                    continue
                claimed[s.receipt_key] = i
            payment_ids[i] = "tx_" + secrets.token_hex(12)
            events.append((payment_ids[i], s.body))

        accepted_at = self.clock.now_us()
        if events:
            state, books = self._load_state(session, catalog, events, originals)
            usage_before, spend_before = dict(state.usage), dict(state.spend)
            pending_before = {
                (pid, cid): a.pending for pid, p in state.purchases.items() for cid, a in p.awards.items()
            }
            outcomes = rate(catalog, events, state)
            writer = _GroupWriter(session, head, accepted_at, campaigns, books)
            by_payment = dict(zip((pid for pid, _ in events), outcomes))
            for i in fresh:
                if results[i] is not None or i in deferred:
                    continue
                s = submissions[i]
                outcome = by_payment[payment_ids[i]]
                if outcome.declined:
                    results[i] = self._decline(outcome.declined, s)
                elif s.body.type == "purchase":
                    results[i] = Result(201, writer.purchase(payment_ids[i], s, outcome, state))
                else:
                    results[i] = Result(
                        201,
                        writer.refund(payment_ids[i], s, outcome, state, originals[s.body.original_id], pending_before),
                    )
            writer.flush(state, usage_before, spend_before, send=False)
            batch = writer.batch
        else:
            batch = bulk.WriteBatch(session)

        # 3. A receipt's later uses: declined if its first use here was accepted, else left
        # to the next round. Then duplicates of keys inside the group, and remember every answer.
        for i, first_use in deferred.items():
            if results[first_use] is not None and results[first_use].status == 201:
                results[i] = self._decline("receipt_already_used", submissions[i])
        for i, s in enumerate(submissions):
            first = first_in_group.get((s.terminal_id, s.idempotency_key))
            if results[i] is None and first != i and results[first] is not None:
                base = submissions[first]
                done = results[first]
                results[i] = self._replay(base.request_hash, done.status, json.dumps(done.body), s)
        remember = []
        for key, i in first_in_group.items():
            r = results[i]
            if r is None or not r.remember:
                continue
            remember.append(
                dict(
                    terminal_id=key[0],
                    key=key[1],
                    request_hash=submissions[i].request_hash,
                    response_status=r.status,
                    response_json=json.dumps(r.body, ensure_ascii=False),
                    payment_id=r.body.get("id") if r.status == 201 else None,
                    created_at_us=accepted_at,
                )
            )
        batch.insert(IdempotencyRow.__table__, remember)
        batch.send()
        return results

    @staticmethod
    def _remembered(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
        return {
            (row[0], row[1]): row
            for row in bulk.select_where_tuples(
                session,
                IdempotencyRow.__table__,
                ["terminal_id", "key", "request_hash", "response_status", "response_json"],
                ["terminal_id", "key"],
                sorted(keys),
            )
        }

    def remembered_answer(self, terminal_id: str, key: str, request_hash: str) -> Result | None:
        """The answer remembered under (terminal, key) for this very request, as a replay; None when
        nothing is remembered or another request used the key. Reads committed rows; takes no lock."""
        with Session(self.engine) as session:
            row = self._remembered(session, {(terminal_id, key)}).get((terminal_id, key))
        if row is None or row[2] != request_hash:
            return None
        return Result(row[3], json.loads(row[4]), replayed=True)

    @staticmethod
    def _used_receipts(session: Session, receipt_keys: set) -> set[tuple[str, str]]:
        """Which of these (app, jti) an accepted transaction carries already."""
        if not receipt_keys:
            return set()
        return {
            (row[0], row[1])
            for row in bulk.select_where_tuples(
                session,
                PaymentRow.__table__,
                ["receipt_app_id", "receipt_jti"],
                ["receipt_app_id", "receipt_jti"],
                sorted(receipt_keys),
            )
        }

    @staticmethod
    def _replay(request_hash: str, status: int, response_json: str, s: Submission) -> Result:
        if request_hash != s.request_hash:
            return Result(*decline("idempotency_key_reused"))
        return Result(status, json.loads(response_json), replayed=True)

    @staticmethod
    def _decline(code: str, s: Submission) -> Result:
        return Result(*decline(code))  # the status is the error catalog's (engine/errors.py)

    def _load_originals(self, session: Session, ids: set[str]) -> dict[str, dict]:
        if not ids:
            return {}
        out: dict[str, dict] = {}
        for row in session.execute(
            select(PaymentRow).where(PaymentRow.id.in_(ids), PaymentRow.type == "purchase")
        ).scalars():
            out[row.id] = dict(
                merchant_id=row.merchant_id,
                wallet_id=row.wallet_id,
                amount=row.amount,
                points_used=row.points_used,
                refunded=row.refunded_amount,
                receipt_app_id=row.receipt_app_id,
                receipt_jti=row.receipt_jti,
                awards={},
                redemption_legs=[],
            )
        for award in session.execute(select(AwardRow).where(AwardRow.payment_id.in_(list(out)))).scalars():
            out[award.payment_id]["awards"][award.campaign_id] = award
        for leg in session.execute(
            select(RedemptionLegRow)
            .where(RedemptionLegRow.payment_id.in_(list(out)))
            .order_by(RedemptionLegRow.payment_id, RedemptionLegRow.position)
        ).scalars():
            out[leg.payment_id]["redemption_legs"].append((leg.lot_id, leg.points))
        return out

    def _load_state(self, session: Session, catalog: Catalog, events: list, originals: dict):
        state = RatingState(balance={})
        usage_keys: set[tuple[str, str, int]] = set()
        wallets: set[str] = set()
        for _, body in events:
            if body.type == "purchase":
                wallets.add(body.wallet_id)
                at = to_us(body.occurred_at)
                for c in catalog.campaigns:
                    usage_keys.add((c.id, body.wallet_id, window_key(c.per_wallet_cap_period, at)))
            else:
                o = originals[body.original_id]
                if body.original_id in state.purchases:
                    continue
                wallets.add(o["wallet_id"])
                awards = {
                    cid: AwardState(cid, a.campaign_version, a.points, a.pending, a.window_key)
                    for cid, a in sorted(o["awards"].items(), key=lambda kv: _order(catalog, kv[0]))
                }
                for cid, a in awards.items():
                    usage_keys.add((cid, o["wallet_id"], a.window_key))
                state.purchases[body.original_id] = PurchaseState(
                    o["wallet_id"], o["merchant_id"], o["amount"], o["points_used"], o["refunded"], awards
                )
        for cid, wid, wkey, points in bulk.select_where_tuples(
            session,
            WalletWindowUsageRow.__table__,
            ["campaign_id", "wallet_id", "window_key", "points"],
            ["campaign_id", "wallet_id", "window_key"],
            sorted(usage_keys),
        ):
            state.usage[(cid, wid, wkey)] = points
        for row in session.execute(select(CampaignRow.id, CampaignRow.issued_net)):
            state.spend[row.id] = row.issued_net
        lot_ids = set()
        for _, body in events:
            if body.type == "refund":
                o = originals[body.original_id]
                lot_ids.update(lot for lot, _ in o["redemption_legs"])
                lot_ids.update(lot_id(body.original_id, cid) for cid in o["awards"])
        books = load_books(session, wallets, lot_ids)
        state.balance = {w: books[w].spendable() for w in wallets}
        return state, books


def _order(catalog: Catalog, campaign_id: str) -> tuple[int, str]:
    ids = catalog.campaign_ids
    return (ids.index(campaign_id), "") if campaign_id in ids else (len(ids), campaign_id)


class _GroupWriter:
    """Turns one group's outcomes into rows, postings and balance deltas, then writes them."""

    def __init__(self, session, head, accepted_at, campaigns, books: dict[str, WalletBook]) -> None:
        self.session = session
        self.head = head
        self.accepted_at = accepted_at
        self.campaigns = campaigns
        self.books = books  # wallet -> its lots and debt, kept current in acceptance order
        self.batch = bulk.WriteBatch(session)
        self.redemption_legs: list[dict] = []
        self.payments: list[dict] = []
        self.awards: list[dict] = []
        self.award_updates: list[dict] = []
        self.refunded_updates: dict[str, int] = {}
        self.postings: list[dict] = []
        self.deltas: dict[str, int] = defaultdict(int)

    def post(self, posting: rules.Posting) -> None:
        self.head.last_posting_sequence += 1
        sequence = self.head.last_posting_sequence
        digest = rules.chain_hash(self.head.last_hash, sequence, posting, self.accepted_at)
        self.head.last_hash = digest
        self.postings.append(
            dict(
                sequence=sequence,
                payment_id=posting.payment_id,
                campaign_id=posting.campaign_id,
                campaign_version=posting.campaign_version,
                reason=posting.reason,
                debit_account_id=posting.debit_account_id,
                credit_account_id=posting.credit_account_id,
                amount=posting.amount,
                posted_at_us=self.accepted_at,
                hash=digest,
            )
        )
        self.deltas[posting.debit_account_id] -= posting.amount
        self.deltas[posting.credit_account_id] += posting.amount

    def drain(self, book: WalletBook) -> None:
        """Post what the wallet book decided (settlements between its campaign buckets)."""
        for posting in book.postings:
            self.post(posting)
        book.postings.clear()

    def new_lot(self, source_id: str, wallet_id: str, campaign_id: str, credit_at: int) -> Lot:
        campaign = self.campaigns.get(campaign_id)
        validity = campaign.validity_months if campaign else 6
        return Lot(
            lot_id(source_id, campaign_id),
            wallet_id,
            campaign_id,
            source_id,
            credit_at,
            crediting.expires_at_us(credit_at, validity),
            0,
            0,
            new=True,
        )

    def credit_points(self, book: WalletBook, lot: Lot, points: int, payment_id: str | None) -> None:
        """Points just posted into available(w, c): repay debt, then fill the lot."""
        lot.points += points if lot.new else 0
        book.inflow(lot, points, payment_id)
        self.drain(book)

    def _next_sequence(self) -> int:
        self.head.last_payment_sequence += 1
        return self.head.last_payment_sequence

    def purchase(self, pid: str, s: Submission, outcome, state: RatingState) -> dict:
        body: Purchase = s.body
        sequence = self._next_sequence()
        at = to_us(body.occurred_at)
        book = self.books[body.wallet_id]
        if body.coin:
            self.post(
                rules.Posting(
                    rules.COIN_SALE, rules.COIN_CLEARING, rules.payable_account(body.merchant_id), body.coin, pid
                )
            )
        for position, (lot, amount) in enumerate(book.consume(body.points_used) if body.points_used else []):
            self.post(
                rules.Posting(
                    rules.REDEMPTION,
                    rules.available_account(body.wallet_id, lot.campaign_id),
                    rules.payable_account(body.merchant_id),
                    amount,
                    pid,
                    lot.campaign_id,
                )
            )
            self.redemption_legs.append(
                dict(payment_id=pid, position=position, lot_id=lot.id, campaign_id=lot.campaign_id, points=amount)
            )
        awards = []
        for award in outcome.awards:
            campaign = self.campaigns[award.campaign_id]
            credit_at = crediting.credit_at_us(
                campaign.credit.schedule, campaign.credit.delay_business_days, at, self.accepted_at
            )
            immediate = campaign.credit.schedule == "immediate"
            target = (rules.available_account if immediate else rules.pending_account)(
                body.wallet_id, award.campaign_id
            )
            self.post(
                rules.Posting(
                    rules.AWARD,
                    rules.funding_account(award.campaign_id),
                    target,
                    award.points,
                    pid,
                    award.campaign_id,
                    award.campaign_version,
                )
            )
            if immediate:
                lot = self.new_lot(pid, body.wallet_id, award.campaign_id, credit_at)
                self.credit_points(book, lot, award.points, pid)
            self.awards.append(
                dict(
                    payment_id=pid,
                    campaign_id=award.campaign_id,
                    campaign_version=award.campaign_version,
                    wallet_id=body.wallet_id,
                    points=award.points,
                    pending=0 if immediate else award.points,
                    clawed_back=0,
                    capped_by=award.capped_by,
                    window_key=state.purchases[pid].awards[award.campaign_id].window_key,
                    credit_at_us=credit_at,
                )
            )
            awards.append(
                {
                    "campaign_id": award.campaign_id,
                    "campaign_version": award.campaign_version,
                    "points": award.points,
                    "capped_by": award.capped_by,
                    "status": "credited" if immediate else "pending",
                    "credit_at": format_instant(credit_at),
                    "expires_at": format_instant(crediting.expires_at_us(credit_at, campaign.validity_months)),
                }
            )
        response = {
            "id": pid,
            "sequence": sequence,
            "type": "purchase",
            "wallet_id": body.wallet_id,
            "merchant_id": body.merchant_id,
            "terminal_id": body.terminal_id,
            "occurred_at": body.occurred_at.isoformat(),
            "accepted_at": format_instant(self.accepted_at),
            "amount": body.amount,
            "points_used": body.points_used,
            "points_awarded": outcome.points_awarded,
            "awards": awards,
        }
        self.payments.append(self._payment_row(pid, sequence, s, body.wallet_id, at, None, response))
        return response

    def refund(self, pid: str, s: Submission, outcome, state: RatingState, original: dict, pending_before) -> dict:
        body: Refund = s.body
        sequence = self._next_sequence()
        oid = body.original_id
        wallet_id, merchant_id = original["wallet_id"], original["merchant_id"]
        book = self.books[wallet_id]
        purchase_state = state.purchases[oid]
        # Running totals, not the group's final state: two refunds of one purchase may share a group.
        refunded_before = self.refunded_updates.get(oid, original["refunded"])
        coin_refunded = body.amount - outcome.points_returned
        if coin_refunded:
            self.post(
                rules.Posting(
                    rules.COIN_REFUND, rules.payable_account(merchant_id), rules.COIN_CLEARING, coin_refunded, pid
                )
            )
        if outcome.points_returned:
            used = original["points_used"]
            returned_before = share_target(used, refunded_before, original["amount"])
            # Returned points go back to the lots they were taken from, with their expiry.
            for returned_lot_id, amount in rules.split_in_order(
                original["redemption_legs"], returned_before, outcome.points_returned
            ):
                lot = book.lots[returned_lot_id]
                self.post(
                    rules.Posting(
                        rules.POINTS_RETURN,
                        rules.payable_account(merchant_id),
                        rules.available_account(wallet_id, lot.campaign_id),
                        amount,
                        pid,
                        lot.campaign_id,
                    )
                )
                self.credit_points(book, lot, amount, pid)
        for clawback in outcome.clawbacks:
            cid = clawback.campaign_id
            award_state = purchase_state.awards[cid]
            # Pending points are cancelled first (as the kernel decided), then available ones.
            from_pending = min(clawback.points, pending_before[(oid, cid)])
            pending_before[(oid, cid)] -= from_pending
            from_available = clawback.points - from_pending
            version = award_state.campaign_version
            if from_pending:
                self.post(
                    rules.Posting(
                        rules.CLAWBACK,
                        rules.pending_account(wallet_id, cid),
                        rules.funding_account(cid),
                        from_pending,
                        pid,
                        cid,
                        version,
                    )
                )
            if from_available:
                book.claw_available(cid, from_available, lot_id(oid, cid), pid)
                self.drain(book)
                self.post(
                    rules.Posting(
                        rules.CLAWBACK,
                        rules.available_account(wallet_id, cid),
                        rules.funding_account(cid),
                        from_available,
                        pid,
                        cid,
                        version,
                    )
                )
            self.award_updates.append(
                dict(p_id=oid, c_id=cid, pending=pending_before[(oid, cid)], clawed=clawback.points)
            )
        self.refunded_updates[oid] = refunded_before + body.amount
        response = {
            "id": pid,
            "sequence": sequence,
            "type": "refund",
            "original_id": oid,
            "wallet_id": wallet_id,
            "merchant_id": merchant_id,
            "terminal_id": s.terminal_id,
            "occurred_at": body.occurred_at.isoformat(),
            "accepted_at": format_instant(self.accepted_at),
            "amount": body.amount,
            "points_used": 0,
            "points_awarded": 0,
            "awards": [],
            "clawbacks": [{"campaign_id": c.campaign_id, "points": c.points} for c in outcome.clawbacks],
            "points_clawed_back": outcome.points_clawed_back,
            "points_returned": outcome.points_returned,
            "coin_refunded": coin_refunded,
        }
        self.payments.append(self._payment_row(pid, sequence, s, wallet_id, to_us(body.occurred_at), oid, response))
        return response

    def _payment_row(self, pid, sequence, s: Submission, wallet_id, at, original_id, response) -> dict:
        row = dict(
            id=pid,
            sequence=sequence,
            type=s.body.type,
            terminal_id=s.terminal_id,
            merchant_id=s.merchant_id,
            wallet_id=wallet_id,
            occurred_at_us=at,
            accepted_at_us=self.accepted_at,
            amount=s.body.amount,
            points_used=getattr(s.body, "points_used", 0),
            original_id=original_id,
            refunded_amount=0,
            request_json=s.request_json,
            response_json=json.dumps(response, ensure_ascii=False),
            has_items=getattr(s.body, "items", None) is not None,
            receipt_app_id=s.receipt.app_id if s.receipt is not None else None,
            receipt_jti=s.receipt.jti if s.receipt is not None else None,
        )
        row["hash"] = self.head.last_payment_hash = rules.payment_hash(self.head.last_payment_hash, row)
        return row

    def flush(
        self,
        state: RatingState | None = None,
        usage_before: dict | None = None,
        spend_before: dict | None = None,
        send: bool = True,
    ) -> None:
        """Queue everything the group decided (and send it unless the caller adds more);
        `state` is given when the group was rated."""
        if state is not None:
            # The kernel decided redemptions on net balances; the wallet books posted here must agree.
            for wallet_id, book in self.books.items():
                assert book.spendable() == state.balance[wallet_id], (
                    wallet_id,
                    book.spendable(),
                    state.balance[wallet_id],
                )
        batch = self.batch
        save_books(batch, self.books)
        batch.insert(RedemptionLegRow.__table__, self.redemption_legs)
        batch.insert(PaymentRow.__table__, self.payments)
        batch.insert(AwardRow.__table__, self.awards)
        # Two refunds of one purchase in a group touch its awards twice: fold them into one update.
        award_updates: dict[tuple[str, str], dict] = {}
        for u in self.award_updates:
            previous = award_updates.get((u["p_id"], u["c_id"]))
            award_updates[(u["p_id"], u["c_id"])] = dict(
                payment_id=u["p_id"],
                campaign_id=u["c_id"],
                pending=u["pending"],
                clawed_back=u["clawed"] + (previous["clawed_back"] if previous else 0),
            )
        batch.update(
            AwardRow.__table__, ["payment_id", "campaign_id"], list(award_updates.values()), add=("clawed_back",)
        )
        batch.update(
            PaymentRow.__table__, ["id"], [dict(id=oid, refunded_amount=r) for oid, r in self.refunded_updates.items()]
        )
        batch.insert(PostingRow.__table__, self.postings)
        batch.upsert(
            AccountRow.__table__,
            [dict(id=a, **rules.account_parts(a), balance=d) for a, d in sorted(self.deltas.items()) if d],
            key=["id"],
            add="balance",
        )
        if state is not None:
            batch.upsert(
                WalletWindowUsageRow.__table__,
                [
                    dict(campaign_id=c, wallet_id=w, window_key=k, points=v)
                    for (c, w, k), v in sorted(state.usage.items())
                    if v != usage_before.get((c, w, k), 0)
                ],
                key=["campaign_id", "wallet_id", "window_key"],
                replace="points",
            )
            batch.update(
                CampaignRow.__table__,
                ["id"],
                [dict(id=cid, issued_net=v) for cid, v in state.spend.items() if v != spend_before.get(cid)],
            )
        if send:
            batch.send()
