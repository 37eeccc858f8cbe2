"""The history import's file (issue 14): one CSV line into a validated purchase or refund.

`setapay import FILE.csv` brings the program's past transactions into the ledger
(`engine.store.importer` posts them). This module is the pure half: it reads
the documented layout (docs/IMPORT.md), header row first, UTF-8,

    payment_id,type,wallet_id,merchant_id,terminal_id,occurred_at,amount,points_used,items,original_payment_id

and turns each line into a `Line` (the app's payment id, the terminal, and a
`Purchase` or `Refund` validated by the API's own models, so the rules are the
API's rules) or a `LineError` with a stable code:

- `bad_csv`: not a CSV record of the layout's ten fields;
- `bad_field`: a field the API would refuse (an id, an instant, an amount, items
  that are not a JSON array of {"amount", "tags"}, points over the amount, ...);
- `duplicate_in_file`: a payment id already seen earlier in the file;
- `in_future`: after the engine's clock;
- `out_of_order`: earlier than the line before it (lines are in time order).

A refund's `original_payment_id` is the app's id of the purchase; until the
store resolves it, the `Refund`'s `original_id` holds that app id. The checks
that need the ledger (already imported, the ledger's last instant, the
original's existence, the ledger's own declines) are the store's.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from pydantic import ValidationError

from engine import limits
from engine.model import Purchase, Refund
from engine.timeutil import to_us

COLUMNS = (
    "payment_id",
    "type",
    "wallet_id",
    "merchant_id",
    "terminal_id",
    "occurred_at",
    "amount",
    "points_used",
    "items",
    "original_payment_id",
)
CODES = ("bad_csv", "bad_field", "duplicate_in_file", "in_future", "out_of_order")
_ID = re.compile(limits.ID_PATTERN)
_INT = re.compile(r"-?[0-9]{1,19}")


class HeaderError(ValueError):
    """The file does not start with the layout's header row."""


class Line(NamedTuple):
    """One good line: the app's payment id, the posting terminal and the validated body. A
    NamedTuple, immutable and made at a third of a frozen dataclass's cost (one per line)."""

    line: int
    payment_id: str
    terminal_id: str
    body: Purchase | Refund  # a refund's original_id is the app's id of the purchase here
    occurred_at_us: int
    # A refund's wallet_id and merchant_id as the file gives them ("" where empty): the layout
    # leaves them empty, and given, they must be its original's (checked here against a purchase
    # earlier in the file, by the store against one imported before).
    stated: tuple[str, str] = ("", "")

    @property
    def original_payment_id(self) -> str | None:
        return self.body.original_id if isinstance(self.body, Refund) else None


@dataclasses.dataclass(frozen=True, slots=True)
class LineError:
    """One bad line: nothing of it is imported."""

    line: int
    payment_id: str
    code: str
    message: str


# A cell a spreadsheet would read as a formula when it starts with one of these (OWASP's CSV
# injection list): the error report quotes the file's own text back, a payment id included.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: object) -> object:
    """`cell` as a spreadsheet shows it as text: a string starting like a formula gets a leading
    apostrophe (which spreadsheets hide); anything else as it is."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def imported_payment_id(source: str, app_payment_id: str) -> str:
    """The ledger's id of the payment the app knows as `app_payment_id` (imported from `source`):
    derived, not drawn, so the importer knows a purchase's id before its group commits (a refund
    of it in the next group refers to it) and a group decided again gets the same ids: "tx_" and 24
    hex digits, shorter than the ids the ledger draws (32: a millisecond and 80 random bits), so
    the two never meet; being a hash, it tells nothing of volumes either."""
    return "tx_" + hashlib.sha256(f"{source}\x00{app_payment_id}".encode()).hexdigest()[:24]


def _int(name: str, value: str, default: int | None = None) -> int:
    if value == "" and default is not None:
        return default
    if not _INT.fullmatch(value):
        raise _FieldError(f"{name} must be an integer, not {value!r}")
    return int(value)


class _FieldError(ValueError):
    pass


def _validation_message(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else str(e["msg"]))
    return "; ".join(parts)


def stated_mismatch(stated: tuple[str, str], original_app_id: str, original: tuple[str, str]) -> str | None:
    """Why a refund's stated (wallet_id, merchant_id) are not those of its original purchase
    (`original`), or None: an empty field states nothing."""
    for name, given, actual in zip(("wallet_id", "merchant_id"), stated, original, strict=True):
        if given != "" and given != actual:
            return (
                f"{name} {given!r} is not that of the purchase it refunds ({original_app_id!r}: {actual!r}); "
                "leave it empty or give the original's"
            )
    return None


def parse_fields(fields: list[str]) -> tuple[str, Purchase | Refund]:
    """(terminal_id, body) of one record's fields, or `_FieldError` / `ValidationError`."""
    payment_id, kind, wallet_id, merchant_id, terminal_id, occurred_at, amount, points_used, items, original = fields
    if kind == "purchase":
        record: dict[str, Any] = {
            "type": "purchase",
            "wallet_id": wallet_id,
            "merchant_id": merchant_id,
            "terminal_id": terminal_id,
            "occurred_at": occurred_at,
            "amount": _int("amount", amount),
            "points_used": _int("points_used", points_used, 0),
        }
        if items != "":
            try:
                record["items"] = json.loads(items)
            except ValueError as error:
                raise _FieldError(f"items is not JSON: {error}") from None
            except RecursionError:  # nested deeper than the parser goes: one bad line, not the import
                raise _FieldError("items is nested too deeply") from None
        if original != "":
            raise _FieldError("a purchase has no original_payment_id")
        return terminal_id, Purchase.model_validate(record)
    if kind == "refund":
        if items != "":
            raise _FieldError("a refund has no items")
        if points_used not in ("", "0"):
            raise _FieldError("a refund has no points_used (the points it returns follow from its original)")
        if original == "":
            raise _FieldError("a refund needs original_payment_id")
        if not _ID.fullmatch(terminal_id):
            raise _FieldError(f"terminal_id must match {limits.ID_PATTERN}")
        body = Refund.model_validate(
            {"type": "refund", "original_id": original, "amount": _int("amount", amount), "occurred_at": occurred_at}
        )
        return terminal_id, body
    raise _FieldError(f"type must be purchase or refund, not {kind!r}")


class Reader:
    """The lines of one import file in order, each a `Line` or a `LineError`.

    Keeps what a line is checked against in the file itself: the payment ids seen
    (`duplicate_in_file`), each purchase's wallet and merchant (a refund's stated ones), and
    the last good line's instant (`out_of_order`)."""

    def __init__(self, now_us: int | None = None) -> None:
        self.now_us = now_us  # the engine's clock: a line after it is `in_future`
        # payment id -> a purchase's (wallet_id, merchant_id), None for a refund; the pairs are
        # shared through `_pairs` (a wallet buys many times), so a line costs about a set's entry.
        self.seen: dict[str, tuple[str, str] | None] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self.last_us: int | None = None

    def read(self, text_lines: Iterable[str]) -> Iterator[Line | LineError]:
        """`text_lines`: the file's lines (an open text file). `HeaderError` when the first line
        is not the header."""
        ended = [True]  # whether the last physical line read so far had its line ending

        def watched(lines: Iterable[str]) -> Iterator[str]:
            for line in lines:
                ended[0] = line.endswith(("\n", "\r"))
                yield line

        records = csv.reader(watched(text_lines), strict=True)
        try:
            header = next(records)
        except StopIteration:
            raise HeaderError("the file is empty; its first line must be the header") from None
        except csv.Error as error:
            raise HeaderError(f"the header is not CSV: {error}") from None
        if tuple(h.strip() for h in header) != COLUMNS:
            raise HeaderError(f"the first line must be the header {','.join(COLUMNS)}")
        while True:
            start = records.line_num + 1
            try:
                fields = next(records)
            except StopIteration:
                return
            except csv.Error as error:
                span = f"lines {start}–{records.line_num}" if records.line_num > start else f"line {start}"
                yield LineError(start, "", "bad_csv", f"not a CSV record ({span}, none imported): {error}")
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line (or only spaces: no payment id starts with one; helper-100)
            if not ended[0]:
                # Only the file's last line can lack its line ending: a file cut short mid-line
                # ends so, and its cut last field read as another value (helper-99: a refund of P12
                # cut to P1 refunded P1). Reported, not imported; a whole line gets its newline back.
                yield LineError(
                    start,
                    fields[0],
                    "incomplete_line",
                    "the file's last line has no line ending: it may have been cut short; if it is whole, "
                    "end it with a newline and run the import again",
                )
                continue
            checked = self.check(start, fields)
            if isinstance(checked, LineError) and checked.code == "bad_csv" and records.line_num > start:
                # A stray quote joins the lines after it into this record: each is named (helper-99:
                # valid lines vanished from the report).
                checked = dataclasses.replace(
                    checked,
                    message=f"{checked.message} (lines {start}–{records.line_num}, joined by a quote; none imported)",
                )
            yield checked

    def check(self, number: int, fields: list[str]) -> Line | LineError:
        payment_id = fields[0] if fields else ""
        if len(fields) != len(COLUMNS):
            return LineError(number, payment_id, "bad_csv", f"{len(fields)} fields; the layout has {len(COLUMNS)}")
        if not _ID.fullmatch(payment_id):
            return LineError(number, payment_id, "bad_field", f"payment_id must match {limits.ID_PATTERN}")
        try:
            terminal_id, body = parse_fields(fields)
        except _FieldError as error:
            return LineError(number, payment_id, "bad_field", str(error))
        except ValidationError as error:
            return LineError(number, payment_id, "bad_field", _validation_message(error))
        if payment_id in self.seen:
            return LineError(number, payment_id, "duplicate_in_file", "this payment id is on an earlier line")
        stated = ("", "")
        if isinstance(body, Refund):
            stated = (fields[2], fields[3])
            original = self.seen.get(body.original_id)
            if original is not None and (why := stated_mismatch(stated, body.original_id, original)) is not None:
                return LineError(number, payment_id, "bad_field", why)
        at = to_us(body.occurred_at)
        if self.now_us is not None and at > self.now_us:
            return LineError(number, payment_id, "in_future", "occurred_at is after the engine's clock")
        if self.last_us is not None and at < self.last_us:
            return LineError(number, payment_id, "out_of_order", "earlier than the line before it")
        if isinstance(body, Refund):
            self.seen[payment_id] = None
        else:
            pair = (body.wallet_id, body.merchant_id)
            self.seen[payment_id] = self._pairs.setdefault(pair, pair)
        self.last_us = at
        return Line(number, payment_id, terminal_id, body, at, stated)
