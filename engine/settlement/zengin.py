"""Zengin 総合振込 (general transfer) payout files: the writer and its parser.

A payout file is what ward finance hands to its bank to pay merchants (SPEC
§7). The format is the one fixed by 全国銀行協会 for 総合振込: records of
exactly 120 bytes in cp932 (Shift_JIS), text in half-width katakana,
upper-case letters and digits, in this order:

    1 header   種別コード 21, コード区分 0, 依頼人コード, 依頼人名, 振込指定日 MMDD,
               仕向銀行番号/銀行名, 仕向支店番号/支店名, 預金種目, 口座番号
    2 data     one per payee: 被仕向銀行番号/銀行名, 被仕向支店番号/支店名,
               手形交換所番号, 預金種目, 口座番号, 受取人名, 振込金額, 新規コード,
               顧客コード1, 顧客コード2, 振込指定区分, 識別表示
    8 trailer  合計件数 and 合計金額 of the data records
    9 end

Numeric fields (N) are right-aligned and zero-filled; text fields (C) are
left-aligned and space-filled. The exact offsets are the `*_LAYOUT` tables
below, which both the writer and the parser read, so the two cannot drift
apart.

Records are separated by CRLF by default: each record is followed by CR LF,
the last one included, which is how banks accept "改行あり" files (122 bytes a
record on disk). `record_separator=b""` writes the bare 120-byte stream that
some transmission channels require. `parse` accepts either.

Names are converted, never guessed: full-width katakana, hiragana, full-width
letters and digits become their half-width forms (a voiced kana such as ガ
becomes two characters, ｶﾞ), letters are upper-cased, small kana become large
ones (banks do not carry ｯ, ｬ, …), and long-vowel marks and dashes become
"-". A character that still cannot be written (kanji, ・, &, …) is an error
that names the field. A name longer than its field is truncated, as banks do.

The records are frozen dataclasses that normalise and validate themselves on
construction, so a `Transfer` holds exactly what its record will carry and
`parse(write(header, transfers))` gives back equal objects.

This module is pure: bytes and plain values in and out, no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import unicodedata
from collections.abc import Callable, Sequence
from typing import Literal, TypedDict, TypeVar, Unpack, cast

from engine.model import BankAccount

__all__ = [
    "AMOUNT_YEN_MAX",
    "CRLF",
    "DATA_LAYOUT",
    "END_LAYOUT",
    "HEADER_LAYOUT",
    "RECORD_BYTES",
    "RECORD_COUNT_MAX",
    "TOTAL_AMOUNT_YEN_MAX",
    "TRAILER_LAYOUT",
    "Header",
    "Trailer",
    "Transfer",
    "ZenginError",
    "ZenginFile",
    "mmdd",
    "parse",
    "to_zengin_text",
    "trailer_for",
    "transfer_from_account",
    "write",
]

ENCODING = "cp932"
RECORD_BYTES = 120
CRLF = b"\r\n"

# Named limits: the widths of 振込金額 (10 digits), 合計件数 (6) and 合計金額 (12).
AMOUNT_YEN_MAX = 9_999_999_999
RECORD_COUNT_MAX = 999_999
TOTAL_AMOUNT_YEN_MAX = 999_999_999_999

KIND_CODE_GENERAL_TRANSFER = "21"  # 種別コード: 総合振込
CODE_DIVISION_SJIS = "0"  # コード区分: JIS/SJIS (as opposed to 1 EBCDIC)

RECORD_TYPE_HEADER = "1"
RECORD_TYPE_DATA = "2"
RECORD_TYPE_TRAILER = "8"
RECORD_TYPE_END = "9"

# (field, width) in record order; each table sums to RECORD_BYTES.
HEADER_LAYOUT: tuple[tuple[str, int], ...] = (
    ("record_type", 1),
    ("kind_code", 2),
    ("code_division", 1),
    ("requester_code", 10),
    ("requester_name", 40),
    ("transfer_mmdd", 4),
    ("bank_code", 4),
    ("bank_name", 15),
    ("branch_code", 3),
    ("branch_name", 15),
    ("account_type", 1),
    ("account_number", 7),
    ("dummy", 17),
)
DATA_LAYOUT: tuple[tuple[str, int], ...] = (
    ("record_type", 1),
    ("bank_code", 4),
    ("bank_name", 15),
    ("branch_code", 3),
    ("branch_name", 15),
    ("clearing_house_code", 4),
    ("account_type", 1),
    ("account_number", 7),
    ("recipient_name", 30),
    ("amount_yen", 10),
    ("new_code", 1),
    ("customer_code_1", 10),
    ("customer_code_2", 10),
    ("transfer_method", 1),
    ("identification_mark", 1),
    ("dummy", 7),
)
TRAILER_LAYOUT: tuple[tuple[str, int], ...] = (
    ("record_type", 1),
    ("record_count", 6),
    ("total_amount_yen", 12),
    ("dummy", 101),
)
END_LAYOUT: tuple[tuple[str, int], ...] = (
    ("record_type", 1),
    ("dummy", 119),
)
_WIDTH = {
    "header": dict(HEADER_LAYOUT),
    "data": dict(DATA_LAYOUT),
}

AccountType = Literal["ordinary", "checking", "savings", "other"]
# 預金種目. The requester's own account is never a savings (貯蓄) account:
# the header admits 1, 2 and 9 only.
_DATA_ACCOUNT_CODE: dict[AccountType, str] = {"ordinary": "1", "checking": "2", "savings": "4", "other": "9"}
_HEADER_ACCOUNT_CODE: dict[AccountType, str] = {"ordinary": "1", "checking": "2", "other": "9"}
_DATA_ACCOUNT_TYPE = {code: name for name, code in _DATA_ACCOUNT_CODE.items()}
_HEADER_ACCOUNT_TYPE = {code: name for name, code in _HEADER_ACCOUNT_CODE.items()}

NewCode = Literal["0", "1", "2"]  # 新規コード: 0 other, 1 first transfer, 2 changed details
TransferMethod = Literal["7", "8"]  # 振込指定区分: 7 電信 (telegraphic), 8 文書 (by document)

_Record = TypeVar("_Record")


class ZenginError(ValueError):
    """A value that cannot go into a Zengin file, or bytes that are not one.

    `field` names the offending field and `record` the 1-based record number
    in the file (parse only), so the message can be shown to finance as is.
    """

    def __init__(self, message: str, *, field: str | None = None, record: int | None = None) -> None:
        where = []
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(field)
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.message = message
        self.field = field
        self.record = record


# --- Text: conversion to the Zengin character set ---------------------------------

# Half-width katakana that a Zengin file may carry: ｦ, ｱ..ﾝ and the two sound
# marks. Small kana (ｧ..ｯ), ｰ and the half-width punctuation ｡､･ are not in
# the bank character set.
_KANA = {"\uff66"} | {chr(c) for c in range(0xFF71, 0xFF9E)} | {"\uff9e", "\uff9f"}
_ALLOWED = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ ().,-/") | {"\uff62", "\uff63"} | _KANA
_ALLOWED_DESCRIPTION = "half-width katakana, A-Z, 0-9, space and ( ) , - . / ｢ ｣"

_SMALL_TO_LARGE = str.maketrans("ァィゥェォッャュョヮヵヶ", "アイウエオツヤユヨワカケ")
# The long-vowel mark and the dashes people type all become the hyphen, the one
# dash the bank character set has.
_DASHES = str.maketrans({c: "-" for c in "ー‐‑‒–—―−"})


def _full_to_half_table() -> dict[str, str]:
    """Full-width katakana (and 「」) to half-width, voiced kana to two characters."""
    table: dict[str, str] = {}
    for code in range(0xFF61, 0xFF9E):
        half = chr(code)
        full = unicodedata.normalize("NFKC", half)
        table.setdefault(full, half)
    for half in list(table.values()):
        full = unicodedata.normalize("NFKC", half)
        for mark, half_mark in (("\u3099", "\uff9e"), ("\u309a", "\uff9f")):
            voiced = unicodedata.normalize("NFC", full + mark)
            if len(voiced) == 1:
                table[voiced] = half + half_mark
    # Sound marks standing alone, combining or spacing, as NFKC leaves them.
    table.update({"\u3099": "\uff9e", "\u309a": "\uff9f", "\u309b": "\uff9e", "\u309c": "\uff9f"})
    return table


_FULL_TO_HALF = _full_to_half_table()


def _hiragana_to_katakana(text: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else c for c in text)


def to_zengin_text(text: str, field: str, width: int, *, required: bool = False) -> str:
    """`text` in the Zengin character set, at most `width` characters, no trailing spaces.

    Raises ZenginError naming `field` when a character cannot be represented,
    or when `required` and nothing is left.
    """
    if not isinstance(text, str):
        raise ZenginError(f"must be text, got {type(text).__name__}", field=field)
    # NFKC first: it turns half-width kana into composed full-width ones (ｶﾞ -> ガ),
    # and full-width letters, digits and spaces into ASCII, so every spelling of a
    # name reaches the table below in one form.
    text = unicodedata.normalize("NFKC", text)
    text = _hiragana_to_katakana(text).upper().translate(_SMALL_TO_LARGE).translate(_DASHES)
    text = "".join(_FULL_TO_HALF.get(c, c) for c in text)
    for c in text:
        if c not in _ALLOWED:
            raise ZenginError(
                f"character {c!r} in {text!r} cannot be written in a Zengin file ({_ALLOWED_DESCRIPTION} only)",
                field=field,
            )
    if len(text) > width:
        cut = width
        # Never leave a voiced kana without its mark: ｶﾞ cut after ｶ would name
        # someone else, so the base character goes too.
        if text[cut] in ("\uff9e", "\uff9f"):
            cut -= 1
        text = text[:cut]
    text = text.rstrip(" ")
    if required and not text:
        raise ZenginError("must not be empty", field=field)
    return text


def _digits(value: str, width: int, field: str) -> str:
    if not (isinstance(value, str) and len(value) == width and value.isascii() and value.isdigit()):
        raise ZenginError(f"must be exactly {width} digits, got {value!r}", field=field)
    return value


def _optional_digits(value: str, width: int, field: str) -> str:
    """Empty (the field is unused) or exactly `width` digits."""
    return value if value == "" else _digits(value, width, field)


def _amount(value: int, maximum: int, field: str, *, minimum: int = 1) -> int:
    # bool is an int in Python; True yen is a programming error, not one yen.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZenginError(f"must be an integer, got {value!r}", field=field)
    if not minimum <= value <= maximum:
        raise ZenginError(f"must be between {minimum:,} and {maximum:,}, got {value:,}", field=field)
    return value


def mmdd(date: dt.date) -> str:
    """振込指定日 of `date` as the header carries it (the file holds no year)."""
    return f"{date.month:02d}{date.day:02d}"


def _check_mmdd(value: str) -> str:
    _digits(value, 4, "transfer_mmdd")
    try:
        # A leap year, so that 0229 is accepted; the bank knows which year is meant.
        dt.date(2000, int(value[:2]), int(value[2:]))
    except ValueError:
        raise ZenginError(f"is not a month and day (MMDD), got {value!r}", field="transfer_mmdd") from None
    return value


def _set(record: object, name: str, value: object) -> None:
    object.__setattr__(record, name, value)


# --- Records ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Header:
    """The header record: who pays, from which account, on which day."""

    requester_code: str  # 振込依頼人コード: 10 digits assigned by the bank
    requester_name: str  # 振込依頼人名
    transfer_mmdd: str  # 振込指定日, MMDD (see `mmdd`)
    bank_code: str  # 仕向銀行番号
    branch_code: str  # 仕向支店番号
    account_type: AccountType  # ordinary, checking or other (never savings)
    account_number: str
    bank_name: str = ""
    branch_name: str = ""

    def __post_init__(self) -> None:
        width = _WIDTH["header"]
        _digits(self.requester_code, 10, "requester_code")
        _set(
            self,
            "requester_name",
            to_zengin_text(self.requester_name, "requester_name", width["requester_name"], required=True),
        )
        _check_mmdd(self.transfer_mmdd)
        _digits(self.bank_code, 4, "bank_code")
        _digits(self.branch_code, 3, "branch_code")
        _digits(self.account_number, 7, "account_number")
        if self.account_type not in _HEADER_ACCOUNT_CODE:
            raise ZenginError(
                f"must be one of {sorted(_HEADER_ACCOUNT_CODE)}, got {self.account_type!r}", field="account_type"
            )
        _set(self, "bank_name", to_zengin_text(self.bank_name, "bank_name", width["bank_name"]))
        _set(self, "branch_name", to_zengin_text(self.branch_name, "branch_name", width["branch_name"]))


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One data record: pay `amount_yen` into one account."""

    bank_code: str  # 被仕向銀行番号
    branch_code: str  # 被仕向支店番号
    account_type: AccountType
    account_number: str
    recipient_name: str  # 受取人名: the account holder as the bank knows it
    amount_yen: int
    bank_name: str = ""
    branch_name: str = ""
    clearing_house_code: str = "0000"  # 手形交換所番号: unused, zeros
    new_code: NewCode = "0"
    # 顧客コード1/2: the payer's own references (e.g. the merchant id's number);
    # empty means unused and is written as spaces.
    customer_code_1: str = ""
    customer_code_2: str = ""
    transfer_method: TransferMethod = "7"

    def __post_init__(self) -> None:
        width = _WIDTH["data"]
        _digits(self.bank_code, 4, "bank_code")
        _digits(self.branch_code, 3, "branch_code")
        _digits(self.account_number, 7, "account_number")
        _digits(self.clearing_house_code, 4, "clearing_house_code")
        if self.account_type not in _DATA_ACCOUNT_CODE:
            raise ZenginError(
                f"must be one of {sorted(_DATA_ACCOUNT_CODE)}, got {self.account_type!r}", field="account_type"
            )
        _set(
            self,
            "recipient_name",
            to_zengin_text(self.recipient_name, "recipient_name", width["recipient_name"], required=True),
        )
        _amount(self.amount_yen, AMOUNT_YEN_MAX, "amount_yen")
        _set(self, "bank_name", to_zengin_text(self.bank_name, "bank_name", width["bank_name"]))
        _set(self, "branch_name", to_zengin_text(self.branch_name, "branch_name", width["branch_name"]))
        if self.new_code not in ("0", "1", "2"):
            raise ZenginError(f"must be 0, 1 or 2, got {self.new_code!r}", field="new_code")
        _optional_digits(self.customer_code_1, 10, "customer_code_1")
        _optional_digits(self.customer_code_2, 10, "customer_code_2")
        if self.transfer_method not in ("7", "8"):
            raise ZenginError(f"must be 7 (電信) or 8 (文書), got {self.transfer_method!r}", field="transfer_method")


@dataclasses.dataclass(frozen=True)
class Trailer:
    """The trailer record: how many data records and their total."""

    record_count: int
    total_amount_yen: int

    def __post_init__(self) -> None:
        _amount(self.record_count, RECORD_COUNT_MAX, "record_count")
        _amount(self.total_amount_yen, TOTAL_AMOUNT_YEN_MAX, "total_amount_yen")


@dataclasses.dataclass(frozen=True)
class ZenginFile:
    """A parsed payout file."""

    header: Header
    transfers: tuple[Transfer, ...]
    trailer: Trailer


class TransferOptions(TypedDict, total=False):
    """The fields of a `Transfer` that a payout account does not give."""

    bank_name: str
    branch_name: str
    clearing_house_code: str
    new_code: NewCode
    customer_code_1: str
    customer_code_2: str
    transfer_method: TransferMethod


def transfer_from_account(account: BankAccount, amount_yen: int, **fields: Unpack[TransferOptions]) -> Transfer:
    """The data record paying `amount_yen` into a merchant's payout account (engine.model)."""
    return Transfer(
        bank_code=account.bank_code,
        branch_code=account.branch_code,
        account_type=account.account_type,
        account_number=account.account_number,
        recipient_name=account.holder_kana,
        amount_yen=amount_yen,
        **fields,
    )


def trailer_for(transfers: Sequence[Transfer]) -> Trailer:
    """The trailer that closes `transfers`; refuses an empty file or totals beyond the field widths."""
    if not transfers:
        raise ZenginError("a payout file needs at least one transfer", field="record_count")
    return Trailer(record_count=len(transfers), total_amount_yen=sum(t.amount_yen for t in transfers))


# --- Writing ---------------------------------------------------------------------


def _record(layout: tuple[tuple[str, int], ...], values: dict[str, str]) -> bytes:
    parts = []
    for name, width in layout:
        value = values.get(name, " " * width)
        assert len(value) == width, (name, value, width)
        parts.append(value)
    encoded = "".join(parts).encode(ENCODING)
    # Every allowed character is one byte in cp932; a longer record means a
    # character slipped past validation.
    assert len(encoded) == RECORD_BYTES, len(encoded)
    return encoded


def _header_record(header: Header) -> bytes:
    return _record(
        HEADER_LAYOUT,
        {
            "record_type": RECORD_TYPE_HEADER,
            "kind_code": KIND_CODE_GENERAL_TRANSFER,
            "code_division": CODE_DIVISION_SJIS,
            "requester_code": header.requester_code,
            "requester_name": header.requester_name.ljust(40),
            "transfer_mmdd": header.transfer_mmdd,
            "bank_code": header.bank_code,
            "bank_name": header.bank_name.ljust(15),
            "branch_code": header.branch_code,
            "branch_name": header.branch_name.ljust(15),
            "account_type": _HEADER_ACCOUNT_CODE[header.account_type],
            "account_number": header.account_number,
        },
    )


def _data_record(transfer: Transfer) -> bytes:
    return _record(
        DATA_LAYOUT,
        {
            "record_type": RECORD_TYPE_DATA,
            "bank_code": transfer.bank_code,
            "bank_name": transfer.bank_name.ljust(15),
            "branch_code": transfer.branch_code,
            "branch_name": transfer.branch_name.ljust(15),
            "clearing_house_code": transfer.clearing_house_code,
            "account_type": _DATA_ACCOUNT_CODE[transfer.account_type],
            "account_number": transfer.account_number,
            "recipient_name": transfer.recipient_name.ljust(30),
            "amount_yen": f"{transfer.amount_yen:010d}",
            "new_code": transfer.new_code,
            "customer_code_1": transfer.customer_code_1.ljust(10),
            "customer_code_2": transfer.customer_code_2.ljust(10),
            "transfer_method": transfer.transfer_method,
            # 識別表示 "Y" would turn the customer codes into EDI information; we never send EDI.
            "identification_mark": " ",
        },
    )


def _trailer_record(trailer: Trailer) -> bytes:
    return _record(
        TRAILER_LAYOUT,
        {
            "record_type": RECORD_TYPE_TRAILER,
            "record_count": f"{trailer.record_count:06d}",
            "total_amount_yen": f"{trailer.total_amount_yen:012d}",
        },
    )


def write(header: Header, transfers: Sequence[Transfer], *, record_separator: bytes = CRLF) -> bytes:
    """The payout file: header, one data record per transfer, trailer, end.

    Each record is followed by `record_separator` (CRLF by default; b"" for a
    bare stream of 120-byte records).
    """
    if record_separator not in (CRLF, b""):
        raise ZenginError(f"record_separator must be CRLF or empty, got {record_separator!r}")
    trailer = trailer_for(transfers)
    records = [_header_record(header)]
    records.extend(_data_record(t) for t in transfers)
    records.append(_trailer_record(trailer))
    records.append(_record(END_LAYOUT, {"record_type": RECORD_TYPE_END}))
    return b"".join(record + record_separator for record in records)


# --- Parsing ---------------------------------------------------------------------


def _split_records(data: bytes) -> list[bytes]:
    if not isinstance(data, (bytes, bytearray)):
        raise ZenginError(f"a Zengin file is bytes, got {type(data).__name__}")
    if b"\n" in data or b"\r" in data:
        # CR and LF cannot occur inside a record (no field admits them, and no
        # cp932 double-byte character contains them), so splitting is safe.
        if data.endswith(CRLF):
            data = data[: -len(CRLF)]
        records = data.split(CRLF)
    else:
        records = [data[i : i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]
    for number, record in enumerate(records, start=1):
        if len(record) != RECORD_BYTES:
            raise ZenginError(f"is {len(record)} bytes; every record must be exactly {RECORD_BYTES}", record=number)
    return [bytes(r) for r in records]


def _fields(record: bytes, layout: tuple[tuple[str, int], ...], number: int) -> dict[str, str]:
    try:
        text = record.decode(ENCODING)
    except UnicodeDecodeError as error:
        raise ZenginError(f"is not cp932 text ({error.reason} at byte {error.start})", record=number) from None
    if len(text) != RECORD_BYTES:
        raise ZenginError("holds double-byte characters; Zengin text is half-width only", record=number)
    values, offset = {}, 0
    for name, width in layout:
        values[name] = text[offset : offset + width]
        offset += width
    if values["dummy"].strip(" "):
        raise ZenginError(f"must be spaces, got {values['dummy']!r}", field="dummy", record=number)
    return values


def _parsed_digits(values: dict[str, str], name: str, number: int) -> str:
    value = values[name]
    if not (value.isascii() and value.isdigit()):
        raise ZenginError(f"must be digits, got {value!r}", field=name, record=number)
    return value


def _parsed_text(values: dict[str, str], name: str, width: int, number: int) -> str:
    """A text field exactly as written, refusing what our writer would have converted."""
    raw = values[name].rstrip(" ")
    if to_zengin_text(raw, name, width) != raw:
        raise ZenginError(f"{raw!r} is not in the Zengin character set", field=name, record=number)
    return raw


def _expect(values: dict[str, str], name: str, expected: str, number: int) -> None:
    if values[name] != expected:
        raise ZenginError(f"must be {expected!r}, got {values[name]!r}", field=name, record=number)


def _account_type(values: dict[str, str], table: dict[str, AccountType], number: int) -> AccountType:
    code = values["account_type"]
    if code not in table:
        raise ZenginError(f"must be one of {sorted(table)}, got {code!r}", field="account_type", record=number)
    return table[code]


def _with_record(number: int, build: Callable[[], _Record]) -> _Record:
    """Run `build`, stamping any validation error with the record number."""
    try:
        return build()
    except ZenginError as error:
        if error.record is not None:
            raise
        raise ZenginError(error.message, field=error.field, record=number) from None


def _parse_header(record: bytes, number: int) -> Header:
    v = _fields(record, HEADER_LAYOUT, number)
    _expect(v, "kind_code", KIND_CODE_GENERAL_TRANSFER, number)
    _expect(v, "code_division", CODE_DIVISION_SJIS, number)
    return _with_record(
        number,
        lambda: Header(
            requester_code=_parsed_digits(v, "requester_code", number),
            requester_name=_parsed_text(v, "requester_name", 40, number),
            transfer_mmdd=_parsed_digits(v, "transfer_mmdd", number),
            bank_code=_parsed_digits(v, "bank_code", number),
            bank_name=_parsed_text(v, "bank_name", 15, number),
            branch_code=_parsed_digits(v, "branch_code", number),
            branch_name=_parsed_text(v, "branch_name", 15, number),
            account_type=_account_type(v, _HEADER_ACCOUNT_TYPE, number),
            account_number=_parsed_digits(v, "account_number", number),
        ),
    )


def _parse_customer_code(values: dict[str, str], name: str, number: int) -> str:
    return "" if values[name] == " " * 10 else _parsed_digits(values, name, number)


def _parse_transfer(record: bytes, number: int) -> Transfer:
    v = _fields(record, DATA_LAYOUT, number)
    if v["identification_mark"] != " ":
        raise ZenginError(
            f"must be a space (EDI records are not supported), got {v['identification_mark']!r}",
            field="identification_mark",
            record=number,
        )
    return _with_record(
        number,
        lambda: Transfer(
            bank_code=_parsed_digits(v, "bank_code", number),
            bank_name=_parsed_text(v, "bank_name", 15, number),
            branch_code=_parsed_digits(v, "branch_code", number),
            branch_name=_parsed_text(v, "branch_name", 15, number),
            clearing_house_code=_parsed_digits(v, "clearing_house_code", number),
            account_type=_account_type(v, _DATA_ACCOUNT_TYPE, number),
            account_number=_parsed_digits(v, "account_number", number),
            recipient_name=_parsed_text(v, "recipient_name", 30, number),
            amount_yen=int(_parsed_digits(v, "amount_yen", number)),
            new_code=cast(NewCode, v["new_code"]),  # checked by Transfer.__post_init__
            customer_code_1=_parse_customer_code(v, "customer_code_1", number),
            customer_code_2=_parse_customer_code(v, "customer_code_2", number),
            transfer_method=cast(TransferMethod, v["transfer_method"]),  # checked likewise
        ),
    )


def _parse_trailer(record: bytes, number: int) -> Trailer:
    v = _fields(record, TRAILER_LAYOUT, number)
    return _with_record(
        number,
        lambda: Trailer(
            record_count=int(_parsed_digits(v, "record_count", number)),
            total_amount_yen=int(_parsed_digits(v, "total_amount_yen", number)),
        ),
    )


def _record_type(record: bytes) -> str:
    return record[:1].decode("ascii", errors="replace")


# Which record types may follow each one: one header, one or more data
# records, one trailer, one end record, and nothing after it.
_MAY_FOLLOW = {
    None: RECORD_TYPE_HEADER,
    RECORD_TYPE_HEADER: RECORD_TYPE_DATA,
    RECORD_TYPE_DATA: RECORD_TYPE_DATA + RECORD_TYPE_TRAILER,
    RECORD_TYPE_TRAILER: RECORD_TYPE_END,
    RECORD_TYPE_END: "",
}


def _either(types: str) -> str:
    return " or ".join(repr(t) for t in types)


def _check_order(records: list[bytes]) -> None:
    previous: str | None = None
    for number, record in enumerate(records, start=1):
        got, allowed = _record_type(record), _MAY_FOLLOW[previous]
        if got not in allowed:
            expected = f"{_either(allowed)} belongs" if allowed else "the end record must be the last"
            raise ZenginError(
                f"has record type {got!r} where {expected} (order: 1, 2…, 8, 9)", field="record_type", record=number
            )
        previous = got
    if _MAY_FOLLOW[previous]:
        where = f"after record {len(records)}" if records else "before any record"
        raise ZenginError(
            f"the file ends {where}; record type {_either(_MAY_FOLLOW[previous])} must follow", field="record_type"
        )


def parse(data: bytes) -> ZenginFile:
    """The header, transfers and trailer of a payout file, every rule checked.

    Raises ZenginError, naming the record and field, when a record is not
    exactly 120 bytes, the record types are not 1, 2…, 8, 9 in that order,
    a field is malformed, or the trailer's count or total differs from the
    data records.
    """
    records = _split_records(data)
    _check_order(records)
    header = _parse_header(records[0], 1)
    transfers = tuple(_parse_transfer(r, n) for n, r in enumerate(records[1:-2], start=2))
    trailer_number = len(records) - 1
    trailer = _parse_trailer(records[-2], trailer_number)
    _fields(records[-1], END_LAYOUT, len(records))
    # Plain sums, not trailer_for: a total too wide for the trailer is reported as a mismatch.
    count, total = len(transfers), sum(t.amount_yen for t in transfers)
    if trailer.record_count != count:
        raise ZenginError(
            f"says {trailer.record_count} data records, the file holds {count}",
            field="record_count",
            record=trailer_number,
        )
    if trailer.total_amount_yen != total:
        raise ZenginError(
            f"says {trailer.total_amount_yen:,} yen, the data records sum to {total:,}",
            field="total_amount_yen",
            record=trailer_number,
        )
    return ZenginFile(header=header, transfers=transfers, trailer=trailer)
