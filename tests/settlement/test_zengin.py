"""Zengin 総合振込 files: written, parsed back equal, and refused when wrong.

The layout tables are checked against the 全銀協 widths; round trips cover
both record separators; names are converted to half-width kana (voiced kana
become two characters) and truncated to their field; each refusal names its
field. The parser is fed files broken the ways real ones break: a short
record, a record out of order, a trailer whose count or total lies, bytes
that are not cp932.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from engine.model import BankAccount
from engine.settlement import zengin
from engine.settlement.zengin import Header, Trailer, Transfer, ZenginError
from tests.test_layers import ROOT, forbidden, imported

HEADER = Header(
    requester_code="0000012345",
    requester_name="ｾﾀｶﾞﾔｸ ｶｲｹｲｶ",
    transfer_mmdd="1225",
    bank_code="0001",
    bank_name="ﾐｽﾞﾎ",
    branch_code="123",
    branch_name="ｾﾀｶﾞﾔ",
    account_type="checking",
    account_number="1234567",
)


def transfer(**changes) -> Transfer:
    fields = dict(
        bank_code="0005",
        bank_name="ﾐﾂﾋﾞｼﾕ-ｴﾌｼﾞｴｲ",
        branch_code="001",
        branch_name="ﾎﾝﾃﾝ",
        account_type="ordinary",
        account_number="7654321",
        recipient_name="ｶ)ｾﾀｶﾞﾔｼﾖｳﾃﾝ",
        amount_yen=123_456,
    )
    fields.update(changes)
    return Transfer(**fields)


TRANSFERS = (
    transfer(),
    transfer(
        account_type="savings",
        account_number="0000001",
        recipient_name="ﾔﾏﾀﾞ ﾀﾛｳ",
        amount_yen=1,
        customer_code_1="0000000042",
        customer_code_2="2026120001",
        new_code="1",
    ),
    transfer(
        account_type="checking",
        recipient_name="ﾕ)ｷﾀｻﾞﾜ ﾊﾟﾝ",
        amount_yen=zengin.AMOUNT_YEN_MAX,
        transfer_method="8",
        bank_name="",
        branch_name="",
    ),
)


def records_of(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


def join(records: list[bytes]) -> bytes:
    return b"".join(r + b"\r\n" for r in records)


# --- Layout ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [zengin.HEADER_LAYOUT, zengin.DATA_LAYOUT, zengin.TRAILER_LAYOUT, zengin.END_LAYOUT])
def test_every_layout_is_120_bytes(layout):
    assert sum(width for _, width in layout) == zengin.RECORD_BYTES


def test_field_offsets_follow_the_zengin_layout():
    data = zengin.write(HEADER, TRANSFERS[:1])
    header, record, trailer, end = (r.decode("cp932") for r in records_of(data))
    # Header: 1 | 21 | 0 | 依頼人コード 10 | 依頼人名 40 | MMDD | 銀行 4+15 | 支店 3+15 | 種目 | 口座 7 | dummy 17
    assert header[0:4] == "1210"
    assert header[4:14] == "0000012345"
    assert header[14:54] == "ｾﾀｶﾞﾔｸ ｶｲｹｲｶ".ljust(40)
    assert header[54:58] == "1225"
    assert header[58:62] == "0001" and header[62:77] == "ﾐｽﾞﾎ".ljust(15)
    assert header[77:80] == "123" and header[80:95] == "ｾﾀｶﾞﾔ".ljust(15)
    assert header[95] == "2" and header[96:103] == "1234567" and header[103:] == " " * 17
    # Data: 2 | 銀行 4+15 | 支店 3+15 | 手形交換所 4 | 種目 | 口座 7 | 受取人 30 | 金額 10
    #       | 新規 | 顧客1 | 顧客2 | 区分 | 識別 | dummy 7
    assert record[0] == "2"
    assert record[1:5] == "0005" and record[5:20] == "ﾐﾂﾋﾞｼﾕ-ｴﾌｼﾞｴｲ".ljust(15)
    assert record[20:23] == "001" and record[23:38] == "ﾎﾝﾃﾝ".ljust(15)
    assert record[38:42] == "0000" and record[42] == "1" and record[43:50] == "7654321"
    assert record[50:80] == "ｶ)ｾﾀｶﾞﾔｼﾖｳﾃﾝ".ljust(30)
    assert record[80:90] == "0000123456"
    assert record[90] == "0" and record[91:111] == " " * 20 and record[111] == "7" and record[112] == " "
    assert record[113:] == " " * 7
    assert trailer == "8" + "000001" + "000000123456" + " " * 101
    assert end == "9" + " " * 119


def test_account_type_codes():
    codes = {
        kind: records_of(zengin.write(HEADER, [transfer(account_type=kind)]))[1].decode("cp932")[42]
        for kind in ("ordinary", "checking", "savings", "other")
    }
    assert codes == {"ordinary": "1", "checking": "2", "savings": "4", "other": "9"}


# --- Round trips -------------------------------------------------------------------


@pytest.mark.parametrize("separator", [b"\r\n", b""], ids=["crlf", "no-separator"])
def test_round_trip(separator):
    data = zengin.write(HEADER, TRANSFERS, record_separator=separator)
    parsed = zengin.parse(data)
    assert parsed.header == HEADER
    assert parsed.transfers == TRANSFERS
    assert parsed.trailer == Trailer(record_count=3, total_amount_yen=sum(t.amount_yen for t in TRANSFERS))
    record_bytes = zengin.RECORD_BYTES + len(separator)
    assert len(data) == record_bytes * (len(TRANSFERS) + 3)
    chunks = [data[i : i + record_bytes] for i in range(0, len(data), record_bytes)]
    assert all(chunk.endswith(separator) for chunk in chunks)
    assert [chunk[:1] for chunk in chunks] == [b"1", b"2", b"2", b"2", b"8", b"9"]
    # cp932, single-byte only: every character is one byte.
    assert len(data.decode("cp932")) == len(data)


def test_file_is_cp932_half_width_kana():
    data = zengin.write(HEADER, [transfer(recipient_name="カ)セタガヤ")])
    assert "ｶ)ｾﾀｶﾞﾔ".encode("cp932") in data
    assert b"\xb6)\xbe\xc0\xb6\xde\xd4" in data  # ｶ ) ｾ ﾀ ｶ ﾞ ﾔ in JIS X 0201


def test_many_records_round_trip_and_total():
    transfers = tuple(transfer(account_number=f"{i:07d}", amount_yen=1_000 + i) for i in range(500))
    parsed = zengin.parse(zengin.write(HEADER, transfers))
    assert parsed.transfers == transfers
    assert parsed.trailer == Trailer(500, sum(1_000 + i for i in range(500)))


def test_transfer_from_a_merchant_bank_account():
    account = BankAccount(
        bank_code="0009", branch_code="456", account_type="savings", account_number="1111111", holder_kana="ｶ)ｴｼｶﾙ ｽﾄｱ"
    )
    made = zengin.transfer_from_account(account, 5_000, customer_code_1="0000000007")
    assert made == Transfer(
        bank_code="0009",
        branch_code="456",
        account_type="savings",
        account_number="1111111",
        recipient_name="ｶ)ｴｼｶﾙ ｽﾄｱ",
        amount_yen=5_000,
        customer_code_1="0000000007",
    )
    assert zengin.parse(zengin.write(HEADER, [made])).transfers == (made,)


def test_mmdd():
    assert zengin.mmdd(dt.date(2026, 1, 5)) == "0105"
    assert dataclasses.replace(HEADER, transfer_mmdd="0229").transfer_mmdd == "0229"


# --- Names: conversion and widths --------------------------------------------------


@pytest.mark.parametrize(
    "given, written",
    [
        ("カ)セタガヤ", "ｶ)ｾﾀｶﾞﾔ"),  # full-width katakana; ガ becomes ｶﾞ, two characters
        ("ｶ)ｾﾀｶﾞﾔ", "ｶ)ｾﾀｶﾞﾔ"),  # already half-width: unchanged
        ("ｶ)ｾﾀｶ\uff9eﾔ", "ｶ)ｾﾀｶﾞﾔ"),
        ("せたがや ぱん", "ｾﾀｶﾞﾔ ﾊﾟﾝ"),  # hiragana, with handakuten
        ("ヴィーガン", "ｳﾞｲ-ｶﾞﾝ"),  # ヴ, small ィ made large, long vowel as hyphen
        ("キャッシュ", "ｷﾔﾂｼﾕ"),  # small kana are not in the bank character set
        ("ｷｬｯｼｭ", "ｷﾔﾂｼﾕ"),
        ("ＡＢＣ　ｓｈｏｐ　１２３", "ABC SHOP 123"),  # full-width letters, digits, space; upper-cased
        ("（カ）タナカ．／－", "(ｶ)ﾀﾅｶ./-"),
        ("「ミセ」", "｢ﾐｾ｣"),
        ("ﾀﾅｶ   ", "ﾀﾅｶ"),  # trailing spaces are padding, not part of the name
    ],
)
def test_names_are_converted_to_half_width_kana(given, written):
    assert transfer(recipient_name=given).recipient_name == written
    assert zengin.parse(zengin.write(HEADER, [transfer(recipient_name=given)])).transfers[0].recipient_name == written


def test_name_longer_than_its_field_is_truncated():
    long_name = "ｱ" * 29 + "ｲｳｴｵ"
    assert transfer(recipient_name=long_name).recipient_name == "ｱ" * 29 + "ｲ"
    assert len(dataclasses.replace(HEADER, requester_name="ｱ" * 41).requester_name) == 40
    assert dataclasses.replace(HEADER, bank_name="ｷﾞﾝｺｳ" * 5).bank_name == ("ｷﾞﾝｺｳ" * 5)[:15]


def test_truncation_never_strips_a_dakuten_from_its_kana():
    # ｶﾞ straddles the 30th column: the name stops before it, not at a bare ｶ.
    name = "ｱ" * 29 + "ｶﾞ"
    assert transfer(recipient_name=name).recipient_name == "ｱ" * 29
    # Dakuten make a name longer: 15 full-width ガ are 30 half-width characters and fit exactly.
    assert transfer(recipient_name="ガ" * 15).recipient_name == "ｶﾞ" * 15
    assert transfer(recipient_name="ガ" * 16).recipient_name == "ｶﾞ" * 15


def test_truncation_then_padding_in_the_record():
    data = zengin.write(HEADER, [transfer(recipient_name="ｱ" * 40)])
    record = records_of(data)[1].decode("cp932")
    assert record[50:80] == "ｱ" * 30 and record[80:90] == "0000123456"


@pytest.mark.parametrize(
    "field, value",
    [
        ("recipient_name", "世田谷商店"),  # kanji
        ("recipient_name", "ﾀﾅｶ・ﾊﾅｺ"),  # middle dot
        ("recipient_name", "A&B"),
        ("recipient_name", "ﾀﾅｶ\tﾊﾅｺ"),
        ("recipient_name", "¥"),
        ("recipient_name", ""),  # required
        ("recipient_name", "   "),
        ("bank_name", "銀行"),
        ("branch_name", "支店"),
    ],
)
def test_name_that_cannot_be_represented_is_refused_by_field(field, value):
    with pytest.raises(ZenginError) as caught:
        transfer(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_requester_name_refused_by_field():
    with pytest.raises(ZenginError, match="^requester_name: character '世'"):
        dataclasses.replace(HEADER, requester_name="世田谷区")


# --- Refusals on write -------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, zengin.AMOUNT_YEN_MAX + 1, 1.0, True, "100"])
def test_amount_must_be_positive_integer_yen_within_ten_digits(amount):
    with pytest.raises(ZenginError) as caught:
        transfer(amount_yen=amount)
    assert caught.value.field == "amount_yen"


def test_amount_limits_at_max():
    assert transfer(amount_yen=1).amount_yen == 1
    assert transfer(amount_yen=zengin.AMOUNT_YEN_MAX).amount_yen == 9_999_999_999


def test_file_total_beyond_the_trailer_width_is_refused():
    # 100 transfers of the largest amount need 13 digits of total; the trailer has 12.
    at_max = [transfer(amount_yen=zengin.AMOUNT_YEN_MAX)] * 99
    assert zengin.trailer_for(at_max).total_amount_yen == 99 * zengin.AMOUNT_YEN_MAX
    with pytest.raises(ZenginError, match="total_amount_yen"):
        zengin.write(HEADER, at_max + [transfer(amount_yen=zengin.AMOUNT_YEN_MAX)] * 2)


def test_trailer_limits():
    assert Trailer(zengin.RECORD_COUNT_MAX, zengin.TOTAL_AMOUNT_YEN_MAX).record_count == 999_999
    with pytest.raises(ZenginError, match="record_count"):
        Trailer(zengin.RECORD_COUNT_MAX + 1, 1)
    with pytest.raises(ZenginError, match="total_amount_yen"):
        Trailer(1, zengin.TOTAL_AMOUNT_YEN_MAX + 1)


def test_empty_file_is_refused():
    with pytest.raises(ZenginError, match="at least one transfer"):
        zengin.write(HEADER, [])


@pytest.mark.parametrize(
    "field, value",
    [
        ("bank_code", "123"),
        ("bank_code", "12345"),
        ("bank_code", "12a4"),
        ("bank_code", "１２３４"),
        ("branch_code", "12"),
        ("account_number", "123456"),
        ("account_number", 1234567),
        ("clearing_house_code", "0"),
        ("customer_code_1", "42"),
        ("customer_code_2", "ABCDEFGHIJ"),
        ("account_type", "current"),
        ("new_code", "3"),
        ("transfer_method", " "),
    ],
)
def test_transfer_fields_are_validated(field, value):
    with pytest.raises(ZenginError) as caught:
        transfer(**{field: value})
    assert caught.value.field == field


@pytest.mark.parametrize(
    "field, value",
    [
        ("requester_code", "12345"),
        ("transfer_mmdd", "1332"),
        ("transfer_mmdd", "0230"),
        ("transfer_mmdd", "125"),
        ("account_type", "savings"),  # the requester's account is never 貯蓄
    ],
)
def test_header_fields_are_validated(field, value):
    with pytest.raises(ZenginError) as caught:
        dataclasses.replace(HEADER, **{field: value})
    assert caught.value.field == field


def test_only_crlf_or_nothing_separates_records():
    with pytest.raises(ZenginError, match="record_separator"):
        zengin.write(HEADER, TRANSFERS, record_separator=b"\n")


# --- Refusals on parse -------------------------------------------------------------

GOOD = zengin.write(HEADER, TRANSFERS)


def test_wrong_record_length_is_refused():
    records = records_of(GOOD)
    records[2] = records[2][:-1]
    with pytest.raises(ZenginError, match=r"^record 3: is 119 bytes; every record must be exactly 120"):
        zengin.parse(join(records))
    with pytest.raises(ZenginError, match="record 1: is 121 bytes"):
        zengin.parse(join([records[0] + b" "] + records[1:]))


def test_truncated_stream_without_separators_is_refused():
    data = zengin.write(HEADER, TRANSFERS, record_separator=b"")
    with pytest.raises(ZenginError, match="record 6: is 70 bytes"):
        zengin.parse(data[:-50])


def test_bare_lf_is_not_a_record_separator():
    with pytest.raises(ZenginError, match="bytes; every record"):
        zengin.parse(GOOD.replace(b"\r\n", b"\n"))


def test_trailer_total_mismatch_is_refused():
    records = records_of(GOOD)
    trailer = records[-2].decode("cp932")
    total = int(trailer[7:19])
    records[-2] = (trailer[:7] + f"{total + 1:012d}" + trailer[19:]).encode("cp932")
    with pytest.raises(ZenginError) as caught:
        zengin.parse(join(records))
    assert caught.value.field == "total_amount_yen" and caught.value.record == 5
    assert f"says {total + 1:,} yen, the data records sum to {total:,}" in str(caught.value)


def test_trailer_count_mismatch_is_refused():
    records = records_of(GOOD)
    records[-2] = b"8000004" + records[-2][7:]
    with pytest.raises(ZenginError, match="record_count: says 4 data records, the file holds 3"):
        zengin.parse(join(records))


def test_amount_changed_in_a_data_record_breaks_the_total():
    records = records_of(GOOD)
    records[1] = records[1][:80] + b"0000123457" + records[1][90:]
    with pytest.raises(ZenginError, match="total_amount_yen"):
        zengin.parse(join(records))


@pytest.mark.parametrize(
    "order, message",
    [
        ([1, 0, 2, 3, 4, 5], "record 1, record_type: has record type '2' where '1' belongs"),
        ([0, 4, 5], "record 2, record_type: has record type '8' where '2' belongs"),  # no data records
        ([0, 0, 1, 2, 3, 4, 5], "record 2, record_type: has record type '1' where '2' belongs"),
        ([0, 1, 2, 5, 3, 4], "record 4, record_type: has record type '9' where '2' or '8' belongs"),
        ([0, 1, 2, 3, 5, 4], "record 5, record_type: has record type '9' where '2' or '8' belongs"),
        ([0, 1, 2, 3, 4, 4, 5], "record 6, record_type: has record type '8' where '9' belongs"),
        ([0, 1, 2, 3, 4, 5, 1], "record 7, record_type: has record type '2' where the end record must be the last"),
        ([0, 1, 2, 3, 4], "record_type: the file ends after record 5; record type '9' must follow"),
        ([0, 1, 2, 3], "record_type: the file ends after record 4; record type '2' or '8' must follow"),
        ([], "record_type: the file ends before any record; record type '1' must follow"),
    ],
)
def test_record_types_out_of_order_are_refused(order, message):
    records = records_of(GOOD)
    data = join([records[i] for i in order])
    with pytest.raises(ZenginError) as caught:
        zengin.parse(data)
    assert str(caught.value).startswith(message)


def test_double_byte_text_is_refused():
    records = records_of(GOOD)
    # Two full-width characters (4 bytes) in place of four spaces keep 120 bytes but not 120 characters.
    name_end = 50 + len("ｶ)ｾﾀｶﾞﾔｼﾖｳﾃﾝ")
    records[1] = records[1][:name_end] + "田中".encode("cp932") + records[1][name_end + 4 :]
    assert len(records[1]) == 120
    with pytest.raises(ZenginError, match="record 2: holds double-byte characters"):
        zengin.parse(join(records))


def test_bytes_that_are_not_cp932_are_refused():
    records = records_of(GOOD)
    records[1] = records[1][:60] + b"\x81\x7f" + records[1][62:]
    with pytest.raises(ZenginError, match="record 2: is not cp932"):
        zengin.parse(join(records))


@pytest.mark.parametrize(
    "offset, raw, field",
    [
        (80, b"00001234x6", "amount_yen"),
        (80, b"0000000000", "amount_yen"),
        (1, b"00a5", "bank_code"),
        (42, b"3", "account_type"),
        (50, b"\xa7", "recipient_name"),  # ｧ: a small kana, not in the bank character set
        (50, b" " * 30, "recipient_name"),
        (112, b"Y", "identification_mark"),
        (113, b"X", "dummy"),
    ],
)
def test_malformed_data_fields_are_refused_by_record_and_field(offset, raw, field):
    records = records_of(GOOD)
    records[1] = records[1][:offset] + raw + records[1][offset + len(raw) :]
    with pytest.raises(ZenginError) as caught:
        zengin.parse(join(records))
    assert (caught.value.record, caught.value.field) == (2, field)


@pytest.mark.parametrize(
    "offset, raw, field",
    [
        (1, b"11", "kind_code"),  # 給与振込, not 総合振込
        (3, b"1", "code_division"),  # EBCDIC
        (54, b"1301", "transfer_mmdd"),
        (95, b"4", "account_type"),
    ],
)
def test_malformed_header_fields_are_refused(offset, raw, field):
    records = records_of(GOOD)
    records[0] = records[0][:offset] + raw + records[0][offset + len(raw) :]
    with pytest.raises(ZenginError) as caught:
        zengin.parse(join(records))
    assert (caught.value.record, caught.value.field) == (1, field)


def test_parse_refuses_what_is_not_bytes():
    with pytest.raises(ZenginError, match="bytes"):
        zengin.parse(GOOD.decode("cp932"))  # type: ignore[arg-type]


# --- Purity ------------------------------------------------------------------------

# tests/test_layers.py walks engine/ and engine/rating/; settlement is core too.
SETTLEMENT_MODULES = sorted((ROOT / "engine" / "settlement").glob("*.py"))


@pytest.mark.parametrize("path", SETTLEMENT_MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_settlement_imports_no_web_or_database_code(path: Path):
    assert not forbidden(imported(path)), path
