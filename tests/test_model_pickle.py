"""Records and submissions pickle as pydantic's own pickling would carry them (`Record.__reduce__`,
`Submission.__reduce__`): the API process hands every submission to the committer child pickled."""

from __future__ import annotations

import copyreg
import pickle

import pydantic
import pytest

from engine.model import Campaign, Merchant, Purchase, Record, Refund
from engine.receipts import Receipt
from engine.store.ledger import Submission
from tests.test_model import CAMPAIGN, MERCHANT

PURCHASE = {
    "type": "purchase",
    "wallet_id": "W1",
    "merchant_id": "M_SANCHA_01",
    "terminal_id": "T1",
    "occurred_at": "2026-12-05T10:00:00+09:00",
    "amount": 1200,
    "items": [{"amount": 1000, "tags": ["ethical", "local"]}, {"amount": 200}],
    "receipt": "header.payload.signature",
}


def pydantic_copy(record: Record) -> Record:
    """What pydantic's own pickling carries: `__getstate__` and `__setstate__`."""
    state = pydantic.BaseModel.__getstate__(record)
    made = type(record).__new__(type(record))
    pydantic.BaseModel.__setstate__(made, state)
    return made


def carried(record: Record) -> tuple[object, ...]:
    return (
        type(record),
        record.__dict__,
        record.__pydantic_fields_set__,
        record.__pydantic_extra__,
        record.__pydantic_private__,
    )


RECORDS = [
    Purchase.model_validate(PURCHASE),
    Purchase.model_validate({k: v for k, v in PURCHASE.items() if k not in ("items", "receipt")}),  # defaults unset
    Refund.model_validate(
        {"type": "refund", "original_id": "tx_1", "amount": 300, "occurred_at": "2026-12-05T10:00:00Z"}
    ),
    Merchant.model_validate(MERCHANT),
    Campaign.model_validate(CAMPAIGN),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_record_comes_back_as_pydantic_would_bring_it(record):
    back = pickle.loads(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
    assert carried(back) == carried(pydantic_copy(record)) == carried(record)
    assert back == record
    assert back.model_dump_json() == record.model_dump_json()
    assert back.model_dump(exclude_unset=True) == record.model_dump(exclude_unset=True)
    with pytest.raises(pydantic.ValidationError):
        back.amount = 1  # type: ignore[misc, attr-defined]  # still frozen


def test_nested_records_come_back_as_records():
    back = pickle.loads(pickle.dumps(RECORDS[0]))
    assert back.items is not None and [type(i).__name__ for i in back.items] == ["Item", "Item"]
    assert back.items[0].tags == ("ethical", "local")


def test_records_take_the_short_way():
    """The short way is this class's own, not pydantic's (which a pydantic upgrade could change)."""
    record = RECORDS[0]
    assert type(record).__reduce__ is Record.__reduce__
    assert record.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[0] is not copyreg.__newobj__


@pytest.mark.parametrize(
    "receipt", [None, Receipt("app_1", "pay_1"), Receipt("app_1", "ref_1", original_jti="pay_1")], ids=str
)
def test_a_submission_comes_back_whole(receipt):
    body = RECORDS[0]
    submission = Submission(
        "T1", "key-1", "a" * 64, body, body.model_dump_json(), merchant_id="M1", receipt=receipt, payment_id="tx_9"
    )
    reducer = submission.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[0]  # the short way: the ledger's own
    assert reducer is not copyreg.__newobj__ and reducer.__module__ == "engine.store.ledger"
    back = pickle.loads(pickle.dumps(submission, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == submission
    assert type(back.receipt) is type(receipt)
    assert back.receipt_key == submission.receipt_key
