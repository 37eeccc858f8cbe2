"""Idempotency at the HTTP edge (SPEC §6): the key, this process's claims, remembered answers.

- `check_idempotency_key` checks an `Idempotency-Key` (header or batch item): missing is 400
  `idempotency_key_missing`, anything but 1 to `IDEMPOTENCY_KEY_LENGTH_MAX` printable
  ASCII characters 400 `idempotency_key_invalid`. Routes call it in the handler (not as a
  dependency), so a body that fails validation is still answered 422 first.
- `InFlight` claims (caller, key) scopes while a request with them is being posted, so a
  concurrent retry in this process is 409 `request_in_progress` rather than a second post.
- `created_once` makes what an admin asks (a key, a webhook endpoint) once per `Idempotency-Key`
  when the request carries one (`engine.store.remembered`): a retry gets the same answer, its
  secret included, marked replayed.
- `render` answers a ledger `Result`, marked `Idempotent-Replayed: true` when it is the
  remembered answer of an earlier request. Its body is written as the result holds it
  (`Result.body_json`): the JSON the committer child sent, else serialised by orjson, as the
  batch route's is: the same JSON as Starlette's `JSONResponse` for these bodies (strings,
  integers, lists, objects), in a tenth of the time; a body orjson refuses (an integer past
  64 bits) falls back to `json.dumps`, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response

from api.errors import PROBLEM_JSON
from engine import keyring, limits
from engine.errors import EngineError
from engine.model import Record
from engine.store import remembered
from engine.store.config import Principal
from engine.store.ledger import Result

if TYPE_CHECKING:
    from api.deps import Services

_PRINTABLE_ASCII = re.compile(rf"^[\x20-\x7e]{{1,{limits.IDEMPOTENCY_KEY_LENGTH_MAX}}}$")


def check_idempotency_key(value: object) -> str:
    if value is None:
        raise EngineError("idempotency_key_missing")
    if not isinstance(value, str) or not _PRINTABLE_ASCII.fullmatch(value):
        raise EngineError(
            "idempotency_key_invalid", f"1 to {limits.IDEMPOTENCY_KEY_LENGTH_MAX} printable ASCII characters"
        )
    return value


class InFlight:
    """The idempotency scopes this process is posting right now."""

    def __init__(self) -> None:
        self._scopes: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def claimed(self, scopes: list[tuple[str, str]]) -> Iterator[set[tuple[str, str]]]:
        """Claim idempotency scopes for this process; yields those not already in flight here."""
        with self._lock:
            fresh = {sc for sc in scopes if sc not in self._scopes}
            self._scopes.update(fresh)
        try:
            yield fresh
        finally:
            with self._lock:
                self._scopes.difference_update(fresh)


def render(result: Result) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    media = "application/json" if result.status < 400 else PROBLEM_JSON
    return Response(result.body_json, status_code=result.status, headers=headers, media_type=media)


def created_once(
    services: Services,
    admin: Principal,
    header: str | None,
    route: str,
    body: Record,
    secret_field: str,
    create: Callable[[remembered.Once | None], tuple[str, dict[str, Any]]],
) -> Response:
    """Answer a creation (201) whose answer shows a secret once, made at most once per
    `Idempotency-Key` of the `admin` key (`remembered.scope_of`) when `header` carries one: the
    remembered answer replayed for the same route and body, 422 `idempotency_key_reused` for
    another; without the header, made anew each time. `create(once)` makes it (`Keys.create`, `Webhooks.create`)."""
    once = None
    if header is not None:
        canonical = f"{route}\n{body.model_dump_json()}"
        once = remembered.Once(
            remembered.scope_of(admin.key_id),
            check_idempotency_key(header),
            hashlib.sha256(canonical.encode()).hexdigest(),
            secret_field,
            keyring.data_key(services.settings),
            services.clock.now_us(),
        )
        replayed = once.replay(services.engine)
        if replayed is not None:
            return render(replayed)
    try:
        secret, record = create(once)
    except remembered.Duplicate as first:
        return render(first.answer)
    return render(Result(201, remembered.answer_of(record, secret_field, secret)))
