"""Creations an admin makes with an `Idempotency-Key` (`POST /v1/keys`, `POST /v1/webhooks`), made
once: the answer is remembered in `idempotency_key` under the admin key's scope
(`admin:<key id>`, as a grant's is under `finance:<key id>`), in the same transaction as what
it made, and a retry with the same key and body gets it back (`Idempotent-Replayed: true`),
the same key or endpoint with the same secret; another body under the key is 422
`idempotency_key_reused`.

The answer shows a secret once (the API key, the endpoint's signing secret): it is kept sealed
with the data key, bound to the scope, the idempotency key, the request and the rest of the
answer (as bank details and webhook secrets are sealed), never in the clear, and for
`SECRET_KEPT_US` only (a day, as Stripe keeps its keys): a retry after that is a new request,
which makes another (the row it finds is replaced), and the purge of remembered answers drops
these rows once that old (`lifecycle.purge_remembered_answers`), whatever the retention of the
others. Two requests with the same key at once: both may make one, but only one transaction can
add the remembered row (its primary key); the other rolls back whole, what it made included
(`Duplicate`), and is answered with the first one's answer.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import sealing
from engine.errors import decline
from engine.store import db
from engine.store.ledger import Result
from engine.store.models import IdempotencyRow

SCOPE_PREFIX = "admin:"  # the scopes of these rows (`scope_of`), apart from terminals' and grants'
SECRET_KEPT_US = 24 * 3600 * 1_000_000


def scope_of(key_id: str) -> str:
    """The scope an admin key's creations are remembered under."""
    return SCOPE_PREFIX + key_id


class Duplicate(Exception):
    """Another request with the same scope and key added the remembered row first: this one's
    transaction rolled back whole, and its answer is that request's, `answer`."""

    def __init__(self, answer: Result) -> None:
        super().__init__("a request with the same idempotency key made it first")
        self.answer = answer


def answer_of(record: dict[str, Any], secret_field: str, secret: str | None) -> dict[str, Any]:
    """A creation's answer: what it made, with its secret shown this once under `secret_field`."""
    return {**record, secret_field: secret}


@dataclasses.dataclass(frozen=True)
class Once:
    """What makes a creation idempotent: the caller's scope, its idempotency key, the request's
    hash, the answer's field that holds the secret, and the data key that seals it."""

    scope: str
    key: str
    request_hash: str
    secret_field: str
    data_key: sealing.DataKey
    now_us: int  # the request's instant: a remembered answer older than SECRET_KEPT_US is gone

    def _associated(self, answer_json: str) -> bytes:
        # Bound to where and for what it was kept, and to the answer it completes: a sealed secret
        # moved to another row, or a row whose answer was altered, does not open.
        parts = (self.scope, self.key, self.request_hash, answer_json)
        return b"setapay:remembered-secret:" + b"\x00".join(part.encode() for part in parts)

    def replay(self, engine: Engine) -> Result | None:
        """The remembered answer of this key, its secret opened; `idempotency_key_reused` for
        another request under it; None when nothing is remembered (or no longer: past
        SECRET_KEPT_US)."""
        with Session(db.reader(engine)) as session:
            row = session.get(IdempotencyRow, (self.scope, self.key))
            if row is None or row.created_at_us <= self.now_us - SECRET_KEPT_US:
                return None
            stored_hash, status, stored = row.request_hash, row.response_status, row.response_json
        if stored_hash != self.request_hash:
            return Result(*decline("idempotency_key_reused"))
        kept = json.loads(stored)
        answer: dict[str, Any] = json.loads(kept["answer"])
        sealed = base64.b64decode(kept["sealed"])
        secret = sealing.open_sealed(self.data_key, sealed, self._associated(kept["answer"]))
        answer[self.secret_field] = secret.decode()
        return Result(status, answer, replayed=True)

    def remember(self, session: Session, record: dict[str, Any], secret: str) -> None:
        """Remember the answer of what `session`'s transaction made (201, `answer_of`), its secret
        sealed, in that transaction; a row of the same key past SECRET_KEPT_US is replaced."""
        answer_json = json.dumps(answer_of(record, self.secret_field, None))
        sealed = sealing.seal(self.data_key, secret.encode(), self._associated(answer_json))
        kept = {"answer": answer_json, "sealed": base64.b64encode(sealed).decode()}
        session.execute(
            delete(IdempotencyRow).where(
                IdempotencyRow.terminal_id == self.scope,
                IdempotencyRow.key == self.key,
                IdempotencyRow.created_at_us <= self.now_us - SECRET_KEPT_US,
            )
        )
        session.add(
            IdempotencyRow(
                terminal_id=self.scope,
                key=self.key,
                request_hash=self.request_hash,
                response_status=201,
                response_json=json.dumps(kept),
                payment_id=None,
                created_at_us=self.now_us,
            )
        )


@contextlib.contextmanager
def made_once(engine: Engine, once: Once | None) -> Iterator[None]:
    """Around a creation's transaction: its failure to commit because the remembered row of
    `once` exists now (a request with the same key committed first) is `Duplicate`; any other
    failure is itself."""
    try:
        yield
    except IntegrityError:
        answer = once.replay(engine) if once is not None else None
        if answer is not None:
            raise Duplicate(answer) from None
        raise
