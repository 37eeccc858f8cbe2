"""The history import (issue 14): past payments of the program posted through `Ledger.submit`.

`import_history` reads the file's lines (`engine.importing` parses and checks each
one with the API's own models) and posts the good ones in groups through the
ledger's money path, so an imported payment is rated, posted, chained and
metered exactly as a live one, with three differences a past instant needs:

- a group is rated against what was in force at its payments' instants (the
  campaign and merchant versions of `rerate.load_versions(...).in_force`), and
  groups are cut where a version changes (`Versions.changes()`), so every
  payment of a group falls in one configuration era;
- a group is accepted at its latest `occurred_at` (not the clock's now), which
  puts every payment in the era reconciliation re-rates it under (reconciliation
  rates by acceptance instant) and keeps acceptance stamps monotonic, because
  lines are in time order and none may be older than the ledger's last payment
  or posting (`out_of_order`) or in the future (`in_future`);
- no answer is remembered under an idempotency key (`remember_answers=False`):
  a declined row writes nothing, and an accepted one is imported once by its
  receipt, its answer kept on its payment row;
- the wallet lifecycle runs as it did then: groups are cut at every Asia/Tokyo
  day, and before a day's first group the crediting and expiry runs post what
  was due by that day's start, stamped at it (`lifecycle.credit_due`,
  `expire_due` on a ledger whose clock is the history's), so a point-back
  credited on a dekad's crediting day is there for the redemptions that spent
  it, and a lot that had expired is not spent.

Each payment carries the receipt (app = `source`, jti = the app's payment id,
original_jti = the original's app payment id for a refund), and the ledger holds
(app, jti) unique: a payment id is imported once. Every group commits alone, so
a killed import re-run skips what is there (`already`) and continues. Only lines up to
the latest acceptance instant of the payments imported from `source` before the run can
be there (a group is accepted at its latest line's instant): those are looked up, the
rest are not (a first import looks up nothing), and should one be there all the same
(the same payment id on a later line of another file), the ledger's receipt check
declines it as `receipt_already_used`, counted as `already` too. An imported
payment's id is derived from the app's (`engine.importing.imported_payment_id`), so
a refund refers to its original by that id without waiting for the original's group
to commit (or by its stored id when it was imported before); a refund whose original
is in the group being built cuts the group first (the original must be posted
before it is refunded), and one whose original was declined or never imported is
declined by the ledger as `original_not_found`, reported as `unknown_original`.

Groups go through a `PostingPipeline` (`engine.store.pipeline`, PostgreSQL): the
next group is rated and posted in memory while the last one's rows are written,
and each group's results are taken in, in order, once it has committed; bad lines
are written to the error report in line order.

The tables an import fills grow from nothing to millions of rows faster than autovacuum's
analyze follows (or at all, where it is off): without statistics PostgreSQL guesses that a
look-up of a group's fifteen refunded originals matches thousands of award rows and scans the
whole table (22 ms a group, 22 s of a million-row import). So the import runs `ANALYZE` on the tables a
group's reads look up by lists of keys (`ANALYZED`) itself, once `ANALYZE_FIRST` rows are in
and again each time the count has grown `ANALYZE_GROWTH` times (four times in a million rows),
in a thread of its own: the database works on it while the import goes on. Between analyses
the planner scales the row counts it knows by the tables' sizes, and the shape of the data
(rows per wallet, per payment) does not change with them; each analysis costs the database
a sample of every table (at doublings, eight in a million rows, one was running 8% of the time).

Bad lines import nothing and are reported one per line (line, payment_id, code,
message): the reader's codes, `out_of_order`, `unknown_original`,
and the ledger's own decline codes (insufficient_points, refund_exceeds_original,
forbidden for a terminal of another merchant, ...).
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import dataclasses
import hashlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from engine.clock import ManualClock
from engine.importing import Line, LineError, Reader, imported_payment_id, spreadsheet_safe, stated_mismatch
from engine.model import Refund
from engine.receipts import Receipt
from engine.store import bulk, db, lifecycle
from engine.store.ledger import CatalogSnapshot, Ledger, Result, Submission
from engine.store.models import (
    AwardRow,
    LedgerHead,
    PaymentRow,
    PointLotRow,
    PostingRow,
    RedemptionLegRow,
    SettlementRunRow,
    TerminalRow,
    WalletDebtRow,
    WalletWindowUsageRow,
)
from engine.store.pipeline import PostingPipeline
from engine.store.rerate import load_versions
from engine.timeutil import S_PER_DAY, TOKYO_OFFSET_S, US_PER_S, format_instant, tokyo_day_key

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "import"
DEFAULT_GROUP = 1_000
KEY_PREFIX = "import:"  # the idempotency key of an imported payment: import:<payment id>, under its terminal
ERROR_COLUMNS = ("line", "payment_id", "code", "message")
_EARLIEST = -(1 << 62)
ANALYZE_FIRST = 5_000  # rows imported before the import first analyzes the tables it fills
ANALYZE_GROWTH = 4  # and how many times the rows imported grow before it analyzes them again
# The tables a group reads by lists of keys (`= ANY`: originals, their awards and legs, lots,
# debts; usage by wallet, `bulk.ReadBatch.where_each`), whose plans follow their statistics.
# The others are only written, or read by one index probe per key
# (`bulk.ReadBatch.where_tuples`), which needs none.
ANALYZED = (PaymentRow, AwardRow, RedemptionLegRow, PointLotRow, WalletDebtRow, WalletWindowUsageRow)


@dataclasses.dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    already: int = 0  # imported before (an earlier run, or a killed one)
    errors: int = 0
    groups: int = 0
    redecided: int = 0  # groups decided again under the lock (`engine.store.pipeline`)
    analyzed: int = 0  # times the import refreshed the tables' statistics
    seconds: float = 0.0
    codes: Counter[str] = dataclasses.field(default_factory=Counter)

    def summary(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "already_imported": self.already,
            "errors": self.errors,
            "error_codes": dict(sorted(self.codes.items())),
            "groups": self.groups,
            "groups_decided_again": self.redecided,
            "tables_analyzed": self.analyzed,
            "seconds": round(self.seconds, 3),
        }


class _Importer:
    def __init__(
        self,
        ledger: Ledger,
        source: str,
        group: int,
        errors: TextIO,
        progress: Callable[[int], object] | None,
        pipelined: bool = True,
    ) -> None:
        self.ledger = ledger
        self.source = source
        self.group_max = max(1, group)
        self.writer = csv.writer(errors)
        self.writer.writerow(ERROR_COLUMNS)
        self.progress = progress
        self.report = ImportReport()
        with Session(ledger.engine) as session:
            self.versions = load_versions(session.connection())
            self.terminals = {t: m for t, m in session.execute(select(TerminalRow.id, TerminalRow.merchant_id))}
            last_payment = session.execute(
                select(PaymentRow.accepted_at_us).order_by(PaymentRow.sequence.desc()).limit(1)
            ).scalar()
            last_posting = session.execute(select(func.max(PostingRow.posted_at_us))).scalar()
            # A settled period is closed (SPEC §7) even when its run wrote no posting (nothing
            # paid, a held or failed payout, no fee): nothing is stamped inside it afterwards.
            settled_until = session.execute(select(func.max(SettlementRunRow.period_end_us))).scalar()
            # ... nor before what the head says no unit may stamp before (a signed day's end too).
            head_floor = session.execute(select(LedgerHead.stamp_floor_us)).scalar()
            # A payment imported before was accepted at its group's latest instant, so no line
            # after the latest acceptance of an earlier import from `source` can be in the ledger:
            # only lines up to it are looked up (none at all on a first import).
            self.stored_until_us: int | None = session.execute(
                select(func.max(PaymentRow.accepted_at_us)).where(PaymentRow.receipt_app_id == source)
            ).scalar()
        # Nothing may be stamped before what the ledger stamped last, nor inside a settled period
        # (settlement relies on it).
        self.floor_us = max(
            last_payment or _EARLIEST, last_posting or _EARLIEST, settled_until or _EARLIEST, head_floor or _EARLIEST
        )
        # Rows older than what the ledger held before, or than rows already posted, are out of order.
        self.rows_floor_us = self.floor_us
        self.now_us = ledger.clock.now_us()
        self.changes: list[int] = [int(c) for c in self.versions.changes()]
        self.catalogs: dict[int, CatalogSnapshot] = {}
        # The lifecycle runs of the history's days, on the history's clock.
        self.history_clock = ManualClock(self.floor_us)
        self.history = Ledger(ledger.engine, self.history_clock)
        self.day: int | None = None  # the Tokyo day whose runs are done
        self.pipeline = PostingPipeline(ledger, enabled=pipelined)
        self.pending: list[tuple[list[tuple[Line, Submission]], Future[list[Result]]]] = []  # results not taken in
        self.errors: list[tuple[int, str, str, str]] = []  # reported lines not written yet (written in line order)
        # Rows imported at which the tables are analyzed next; never on SQLite, whose planner
        # keeps no statistics these reads need.
        self.analyze_at: int | None = ANALYZE_FIRST if ledger.engine.dialect.name == "postgresql" else None
        self.analyzer = ThreadPoolExecutor(1, thread_name_prefix="import-analyze")
        self.analyzing: Future[None] | None = None

    # -- reporting --

    def error(self, line: int, payment_id: str, code: str, message: str) -> None:
        self.report.errors += 1
        self.report.codes[code] += 1
        heapq.heappush(self.errors, (line, payment_id, code, message))

    def unknown_original(self, x: Line) -> None:
        self.error(
            x.line,
            x.payment_id,
            "unknown_original",
            f"no imported purchase {x.original_payment_id!r} (it must come on an earlier line and be imported, "
            "or be imported before)",
        )

    def write_errors(self) -> None:
        """Write the reported lines before the first line of a group still being posted."""
        first_pending = self.pending[0][0] if self.pending else None  # the oldest group in flight
        bound = first_pending[0][0].line if first_pending else None
        while self.errors and (bound is None or self.errors[0][0] < bound):
            self.writer.writerow([spreadsheet_safe(cell) for cell in heapq.heappop(self.errors)])

    # -- configuration in force --

    def era(self, at_us: int) -> int:
        return bisect.bisect_right(self.changes, at_us) - 1

    def catalog(self, era: int) -> CatalogSnapshot:
        if era not in self.catalogs:
            campaigns, merchants = self.versions.in_force(self.changes[era] if era >= 0 else _EARLIEST)
            self.catalogs[era] = CatalogSnapshot(
                version=-1,  # never the head's: a past instant's catalog, used by this import only
                campaigns={c.id: c for c in campaigns},
                merchants={m.id: m for m in merchants},
                merchant_by_terminal=self.terminals,
            )
        return self.catalogs[era]

    # -- the run --

    def run(self, lines: Iterable[str]) -> ImportReport:
        started = time.perf_counter()
        chunk: list[Line | LineError] = []
        try:
            with self.pipeline:
                for item in Reader(self.now_us).read(lines):
                    chunk.append(item)
                    if len(chunk) >= self.group_max:
                        self.chunk(chunk)
                        chunk = []
                if chunk:
                    self.chunk(chunk)
                self.take_in(wait=True)
        finally:
            self.analyzer.shutdown()  # waits for an ANALYZE still running
        self.report.redecided = self.pipeline.redecided
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _stored(self, app_ids: set[str]) -> dict[str, tuple[str, str, tuple[str, str]]]:
        """app payment id -> (payment id, type, (wallet_id, merchant_id)) of those already in the
        ledger under `source`."""
        with Session(self.ledger.engine) as session:
            rows = bulk.select_where_tuples(
                session,
                PaymentRow.__table__,
                ["receipt_jti", "id", "type", "wallet_id", "merchant_id"],
                ["receipt_app_id", "receipt_jti"],
                sorted((self.source, a) for a in app_ids),
            )
        return {jti: (pid, kind, (wallet, merchant)) for jti, pid, kind, wallet, merchant in rows}

    def chunk(self, items: list[Line | LineError]) -> None:
        """Up to one group's worth of lines: look up what of them is in the ledger, then post
        the rest in groups of one configuration era each."""
        until = self.stored_until_us
        wanted: set[str] = set()
        if until is not None:
            for x in items:
                if isinstance(x, Line):
                    if x.occurred_at_us <= until:
                        wanted.add(x.payment_id)
                    if (original := x.original_payment_id) is not None:
                        wanted.add(original)
        stored = self._stored(wanted) if wanted else {}
        group: list[tuple[Line, Submission]] = []
        in_group: set[str] = set()
        group_era = 0
        for x in items:
            self.report.rows += 1
            if isinstance(x, LineError):
                self.error(x.line, x.payment_id, x.code, x.message)
                continue
            if x.payment_id in stored:
                self.report.already += 1
                continue
            if x.occurred_at_us < self.rows_floor_us:
                self.error(
                    x.line,
                    x.payment_id,
                    "out_of_order",
                    "earlier than the ledger's last payment or posting, or inside a settled period "
                    f"({format_instant(self.rows_floor_us)})",
                )
                continue
            body = x.body
            original_app_id = x.original_payment_id
            if original_app_id is not None:
                if original_app_id in in_group:  # its original must be committed first
                    self.post(group, group_era)
                    group, in_group = [], set()
                # Imported before (its id as stored), else by this run if its line was accepted: the
                # ledger finds no such purchase otherwise (reported as `unknown_original`).
                found = stored.get(original_app_id)
                if (
                    found is not None
                    and found[1] == "purchase"
                    and (why := stated_mismatch(x.stated, original_app_id, found[2])) is not None
                ):
                    self.error(x.line, x.payment_id, "bad_field", why)
                    continue
                assert isinstance(body, Refund)
                body = body.model_copy(
                    update={
                        "original_id": found[0]
                        if found is not None and found[1] == "purchase"
                        else imported_payment_id(self.source, original_app_id)
                    }
                )
            era = self.era(x.occurred_at_us)
            day = tokyo_day_key(x.occurred_at_us)
            if group and (era != group_era or len(group) >= self.group_max or day != self.day):
                self.post(group, group_era)
                group, in_group = [], set()
            if day != self.day:
                self.lifecycle(day)
            canonical = body.model_dump_json()
            group.append(
                (
                    x,
                    Submission(
                        x.terminal_id,
                        KEY_PREFIX + x.payment_id,
                        hashlib.sha256(canonical.encode()).hexdigest(),
                        body,
                        canonical,
                        receipt=Receipt(self.source, x.payment_id, original_app_id),
                        payment_id=imported_payment_id(self.source, x.payment_id),
                    ),
                )
            )
            in_group.add(x.payment_id)
            group_era = era
        self.post(group, group_era)
        self.take_in(wait=False)
        if self.progress is not None:
            self.progress(len(items))

    def lifecycle(self, day: int) -> None:
        """The crediting and expiry runs of Tokyo day `day`, as of its start (00:00 JST)."""
        start = (day * S_PER_DAY - TOKYO_OFFSET_S) * US_PER_S
        if start >= self.floor_us:
            self.take_in(wait=True)  # the runs post what the groups before them committed
            self.history_clock.set(start)
            catalog = self.catalog(self.era(start))  # lots get the validity in force then
            lifecycle.credit_due(self.history, start, catalog=catalog)
            lifecycle.expire_due(self.history, start, catalog=catalog)
            self.floor_us = max(self.floor_us, self.history_clock.now_us())
        self.day = day

    def post(self, group: list[tuple[Line, Submission]], era: int) -> None:
        if not group:
            return
        accepted_at = max(self.floor_us, *(x.occurred_at_us for x, _ in group))
        results = self.pipeline.submit(
            [s for _, s in group],
            accepted_at_us=accepted_at,
            catalog=self.catalog(era),
            remember_answers=False,
            # A first import from `source`: no payment carried one of its receipts before it, and
            # each of its payment ids is on one line of the file.
            receipts_unused=self.stored_until_us is None,
        )
        self.pending.append((group, results))
        self.report.groups += 1
        self.floor_us = max(self.floor_us, accepted_at)
        self.rows_floor_us = max(self.rows_floor_us, *(x.occurred_at_us for x, _ in group))

    def take_in(self, wait: bool) -> None:
        """Take in the results of the groups posted, in order: every one with `wait`, else those
        committed already."""
        while self.pending and (wait or self.pending[0][1].done()):
            group, results = self.pending.pop(0)
            for (x, _), r in zip(group, results.result()):
                if r.status == 201:
                    if r.replayed:
                        self.report.already += 1
                    else:
                        self.report.imported += 1
                elif r.body.get("code") == "receipt_already_used":  # imported before (not looked up)
                    self.report.already += 1
                elif r.body.get("code") == "original_not_found":  # its original's line was declined
                    self.unknown_original(x)
                else:
                    code = str(r.body.get("code", "declined"))
                    self.error(x.line, x.payment_id, code, str(r.body.get("detail") or r.body.get("title") or code))
        self.write_errors()
        due = self.analyze_at is not None and self.report.imported >= self.analyze_at
        if due and (self.analyzing is None or self.analyzing.done()):
            self.analyzing = self.analyzer.submit(self.analyze)
            self.analyze_at = ANALYZE_GROWTH * self.report.imported

    def analyze(self) -> None:
        """Refresh PostgreSQL's statistics of the tables the import fills (see the module's text).
        Only a matter of speed: a failure is logged, the import goes on."""
        try:
            with self.ledger.engine.connect() as connection:
                connection.execute(text("ANALYZE " + ", ".join(row.__tablename__ for row in ANALYZED)))
                connection.commit()
        except Exception as failure:
            log.warning("the import could not analyze the ledger's tables: %s", type(failure).__name__)
            return
        self.report.analyzed += 1


def import_history(
    ledger: Ledger,
    lines: Iterable[str],
    errors: TextIO,
    *,
    source: str = DEFAULT_SOURCE,
    group: int = DEFAULT_GROUP,
    progress: Callable[[int], object] | None = None,
    pipelined: bool = True,
    slot_held: bool = False,
) -> ImportReport:
    """Import the lines of a history file (header first); bad lines go to `errors` as CSV
    (line, payment_id, code, message). Raises `engine.importing.HeaderError` on a bad header.

    Run it before the ledger takes live traffic from the same period (or with the API
    stopped): imported payments are stamped at their own instants. In the database's import
    slot (`import_slot`; taken here unless the caller holds it, `slot_held`)."""
    with contextlib.ExitStack() as held:
        if not slot_held:
            held.enter_context(import_slot(ledger))
        try:
            return _Importer(ledger, source, group, errors, progress, pipelined).run(lines)
        except Exception as error:
            # The meter row's budget is the campaign's latest; the group was rated under the
            # version in force at its instant, whose budget was higher (the database's check
            # `issued_within_budget` refused the write, a traceback: helper-110).
            if "issued_within_budget" in str(error):
                raise BudgetLoweredLater() from error
            raise


@contextlib.contextmanager
def import_slot(ledger: Ledger) -> Iterator[None]:
    """Hold the database's one import slot for the block, or `ImportBusy` at once: two imports at
    once each read the ledger's last stamp once, then interleaved their groups, stamps going back
    and a redemption spending points earned later in the history (helper-99). Take it before
    anything of the run is written (the command's error report: helper-100)."""
    held = False
    try:
        with db.alone(ledger.engine, IMPORT_LOCK, wait=False):
            held = True
            yield
    except db.Busy:
        if held:  # not the slot's: raised by the block
            raise
        raise ImportBusy("another import is running on this database; run one at a time") from None


class ImportBusy(Exception):
    """Another history import holds the database's import slot."""


class BudgetLoweredLater(Exception):
    """A group issued more points than a campaign's latest budget allows, under an earlier version
    with a higher budget: a budget lowered later in the history, after refunds brought what was
    issued under it. The database keeps every campaign within its latest budget; nothing of the
    group is written."""

    def __init__(self) -> None:
        super().__init__(
            "a group of lines issued more points than a campaign's latest budget, which a version entered "
            "for a later instant lowered: enter that version only once the lines before its instant are "
            "imported (docs/IMPORT.md)"
        )


IMPORT_LOCK = 0x5E7A_1A90  # `db.alone`'s key: one history import at a time a database
