"""What crosses the committer child's pipe (`engine.store.committer_process`): submissions (their
bodies by pydantic's own pickling) and results, pickled with their bodies as orjson bytes. What
comes out equals what went in: every rating vector's transactions (items, refunds, instants in
several offsets), the receipts, the answers of the ledger and the odd body orjson refuses.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import orjson
import pytest

from engine import vectors
from engine.model import Purchase, Refund
from engine.receipts import Receipt
from engine.store.ledger import Result, Submission

VECTORS = Path(
    os.environ.get("SETAPAY_VECTORS_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
)
PROTOCOL = pickle.HIGHEST_PROTOCOL


def _submissions() -> list[Submission]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        for n, (key, body) in enumerate(vectors.load(path).events):
            receipt = Receipt("APP", f"pay_{n}", None if body.type == "purchase" else f"pay_{n - 1}")
            out.append(Submission(f"T{n}", key, f"hash-{key}", body, body.model_dump_json(), receipt=receipt))
    return out


def test_every_vector_transaction_crosses_as_it_was() -> None:
    submissions = _submissions()
    assert {s.body.type for s in submissions} == {"purchase", "refund"}
    assert any(isinstance(s.body, Purchase) and s.body.items for s in submissions), "the vectors list items"
    back = pickle.loads(pickle.dumps(submissions, protocol=PROTOCOL))
    assert back == submissions
    for before, after in zip(submissions, back):
        assert type(after.body) is type(before.body)
        assert after.body.model_dump_json() == before.body.model_dump_json()
        assert after.body.occurred_at.utcoffset() == before.body.occurred_at.utcoffset()
        assert after.body.model_fields_set == before.body.model_fields_set
        assert after.receipt == before.receipt and after.receipt_key == before.receipt_key


def test_a_submission_keeps_its_resolved_merchant_and_payment_id() -> None:
    body = Refund.model_validate(
        {
            "type": "refund",
            "original_id": "tx_0123456789abcdef01234567",
            "occurred_at": "2026-12-05T09:00:00.123456+09:00",
            "amount": 300,
        }
    )
    s = Submission("T1", "k", "h", body, "{}", merchant_id="M1", payment_id="tx_fixed")
    back = pickle.loads(pickle.dumps(s, protocol=PROTOCOL))
    assert back == s and back.request_json == "{}" and back.merchant_id == "M1" and back.payment_id == "tx_fixed"
    assert back.body.occurred_at.isoformat() == "2026-12-05T09:00:00.123456+09:00"


@pytest.mark.parametrize(
    "result",
    [
        Result(201, {"id": "tx_1", "sequence": 7, "awards": [{"points": 10, "capped_by": None}], "ok": True}),
        Result(422, {"type": "about:blank", "code": "insufficient_points", "status": 422}, replayed=True),
        Result(403, {"code": "forbidden"}, remember=False),
        Result(422, {"code": "invalid_request", "errors": [{"input": "日本語", "loc": ["body", "amount"]}]}),
    ],
)
def test_a_result_crosses_as_it_was(result: Result) -> None:
    payload = pickle.dumps(result, protocol=PROTOCOL)
    assert orjson.dumps(result.body) in payload  # the body crosses as its JSON, one bytes object
    assert pickle.loads(payload) == result


def test_a_result_orjson_refuses_crosses_pickled_as_it_is() -> None:
    big = Result(422, {"code": "invalid_request", "errors": [{"input": 2**70}]})
    assert pickle.loads(pickle.dumps(big, protocol=PROTOCOL)) == big


def test_tuples_in_a_body_come_out_as_the_lists_json_renders() -> None:
    back = pickle.loads(pickle.dumps(Result(422, {"loc": ("body", 0)}), protocol=PROTOCOL))
    assert back.body == {"loc": ["body", 0]}


def test_a_result_that_crossed_is_written_out_as_its_json_until_its_body_is_read() -> None:
    """The API process writes an answer that crossed the pipe as the JSON it came as (no parse,
    no second serialisation); once something reads the body as objects, those are the body."""
    sent = Result(201, {"id": "tx_1", "sequence": 7, "awards": [{"points": 10, "capped_by": None}]})
    payload = pickle.dumps(sent, protocol=PROTOCOL)
    back = pickle.loads(payload)
    assert pickle.dumps(back, protocol=PROTOCOL) == payload  # passed on unread: the same JSON
    assert isinstance(back.json_value(), orjson.Fragment)
    assert back.body_json == orjson.dumps(sent.body) and back.body_json in payload
    assert orjson.loads(orjson.dumps({"results": [{"body": back.json_value()}]})) == {"results": [{"body": sent.body}]}
    # Read as objects (and changed by whoever read it): the objects are the body from then on.
    back.body["sequence"] = 8
    assert back.json_value() == {**sent.body, "sequence": 8}
    assert orjson.loads(back.body_json)["sequence"] == 8
    assert back != sent and pickle.loads(pickle.dumps(back, protocol=PROTOCOL)) == back
    # A result made here holds its objects: nothing to write until asked.
    assert sent.json_value() is sent.body and sent.body_json == orjson.dumps(sent.body)


def test_a_body_orjson_refuses_is_written_by_the_standard_library() -> None:
    big = Result(422, {"code": "invalid_request", "errors": [{"input": 2**70}]})
    assert big.body_json == b'{"code":"invalid_request","errors":[{"input":1180591620717411303424}]}'
