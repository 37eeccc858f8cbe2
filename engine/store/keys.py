"""API keys (SPEC §9.3): create, list, revoke, look up, and note when a key was last used.

A key is `sp_<role>_<id>_<random>`; only its SHA-256 is stored (`api_key.key_hash`),
so a secret is shown once, when it is made, and never again, except to a retry of the request
that made it under the same `Idempotency-Key` within a day (`engine.store.remembered`: the answer
kept sealed with the data key meanwhile, then dropped). A key may expire
(`expires_at_us`) and may be revoked (`revoked_at_us`, the first revocation's
instant, kept on later ones). `last_used_at_us` is written at most once a minute
per key, by `touch`, off the request path.

`lookup` resolves a terminal key's merchant from the terminal row as it is now,
so a terminal moved to another merchant posts for its new merchant.

Create and revoke are recorded in the audit log (SPEC §9.5) with their actor,
in the same transaction; the record never holds the secret or its hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, case, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine.audit import OPERATOR, Actor
from engine.clock import Clock, SystemClock
from engine.errors import EngineError
from engine.store import audit, db, remembered
from engine.store.config import ROLES, Principal
from engine.store.ledger import lock_sequencer
from engine.store.models import ApiKeyRow, MerchantRow, TerminalRow
from engine.store.remembered import Once
from engine.timeutil import format_instant

DAY_US = 86_400_000_000
# `last_used_at_us` is rewritten at most this often per key, by any number of processes.
LAST_USED_RESOLUTION_US = 60_000_000
EXPIRES_IN_DAYS_MAX = 3650


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class KeyLookup:
    """What authenticating a key needs: who it is and until when (None: no expiry). A terminal's
    key also brings the terminal's registered signing key as the same read found it (base64; None:
    bearer-only), which a request needs next (`api.signatures`, SPEC §9.2): one look-up, not two."""

    principal: Principal
    expires_at_us: int | None
    terminal_public_key: str | None = None
    sessions_ended_at_us: int | None = None  # the pages' last sign-out (`Keys.end_sessions`)


def _instant(us: int | None) -> str | None:
    return None if us is None else format_instant(us)


def _listing(row: ApiKeyRow, merchant_id: str | None) -> dict[str, Any]:
    """A key as listings show it: never the secret, never its hash."""
    return {
        "id": row.id,
        "role": row.role,
        "merchant_id": merchant_id,
        "terminal_id": row.terminal_id,
        "created_at": _instant(row.created_at_us),
        "expires_at": _instant(row.expires_at_us),
        "revoked_at": _instant(row.revoked_at_us),
        "last_used_at": _instant(row.last_used_at_us),
    }


# The two statements every request's key may need, built once: building a select of nine columns
# and a join for each look-up was most of its cost (~0.8 ms of CPU a look-up through an ORM
# session on SQLite, ~0.24 through a connection with this one; docs/BENCHMARKS.md).
_LOOKUP = (
    select(
        ApiKeyRow.key_hash,
        ApiKeyRow.id,
        ApiKeyRow.role,
        ApiKeyRow.merchant_id,
        ApiKeyRow.terminal_id,
        ApiKeyRow.expires_at_us,
        ApiKeyRow.revoked_at_us,
        TerminalRow.merchant_id,
        TerminalRow.public_key,
        ApiKeyRow.sessions_ended_at_us,
    )
    .outerjoin(TerminalRow, TerminalRow.id == ApiKeyRow.terminal_id)
    .where(ApiKeyRow.key_hash.in_(bindparam("digests", expanding=True)))
)
_TOUCH = (
    update(ApiKeyRow)
    .where(
        ApiKeyRow.id == bindparam("key_id"),
        or_(ApiKeyRow.last_used_at_us.is_(None), ApiKeyRow.last_used_at_us <= bindparam("horizon_us")),
    )
    .values(last_used_at_us=bindparam("at_us"))
)


class Keys:
    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        self._reader = db.reader(engine)  # for per-request reads (SQLite: no writer lock)
        self.clock: Clock = clock or SystemClock()

    def create(
        self,
        role: str,
        merchant_id: str | None = None,
        terminal_id: str | None = None,
        expires_in_days: int | None = None,
        actor: Actor = OPERATOR,
        once: Once | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A new key: (the secret, returned this once; its listing). Only the SHA-256 is stored.
        With `once`, its answer is remembered in the same transaction (`engine.store.remembered`):
        `Duplicate` when another request under the same idempotency key remembered one first."""
        if role not in ROLES:
            raise EngineError("invalid_request", f"role must be one of {', '.join(ROLES)}")
        if expires_in_days is not None and not (
            isinstance(expires_in_days, int) and 1 <= expires_in_days <= EXPIRES_IN_DAYS_MAX
        ):
            raise EngineError("invalid_request", f"expires_in_days must be 1 to {EXPIRES_IN_DAYS_MAX}")
        # A scope the role does not take is refused, not dropped: an admin key asked for "for
        # merchant M" would otherwise be an unscoped admin key handed out as if it were M's.
        if role not in ("terminal", "merchant") and (merchant_id is not None or terminal_id is not None):
            raise EngineError("invalid_request", f"a {role} key takes no merchant_id or terminal_id")
        if role == "merchant" and terminal_id is not None:
            raise EngineError("invalid_request", "a merchant key takes no terminal_id (a terminal key does)")
        with remembered.made_once(self.engine, once), Session(self.engine) as session, session.begin():
            if role == "terminal":
                if terminal_id is None:
                    raise EngineError("invalid_request", "a terminal key needs a terminal")
                terminal = session.get(TerminalRow, terminal_id)
                if terminal is None:
                    raise EngineError("unknown_terminal", f"terminal {terminal_id} is not known")
                if merchant_id is not None and merchant_id != terminal.merchant_id:
                    raise EngineError(
                        "invalid_request",
                        f"terminal {terminal_id} is at merchant {terminal.merchant_id}, not {merchant_id}",
                    )
                merchant_id = terminal.merchant_id
            elif role == "merchant" and (merchant_id is None or session.get(MerchantRow, merchant_id) is None):
                raise EngineError("unknown_merchant", f"merchant {merchant_id} is not known")
            key_id = secrets.token_hex(8)
            secret = f"sp_{role}_{key_id}_{secrets.token_urlsafe(32)}"
            now = self.clock.now_us()
            row = ApiKeyRow(
                id=key_id,
                key_hash=hash_key(secret),
                role=role,
                merchant_id=merchant_id,
                terminal_id=terminal_id,
                created_at_us=now,
                expires_at_us=None if expires_in_days is None else now + expires_in_days * DAY_US,
            )
            session.add(row)
            session.flush()
            listing = _listing(row, merchant_id)
            audit.record(session, actor, "key.create", f"key:{key_id}", None, listing, at_us=now)
            if once is not None:
                once.remember(session, listing, secret)
            return secret, listing

    def list(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(ApiKeyRow, TerminalRow.merchant_id)
                .outerjoin(TerminalRow, TerminalRow.id == ApiKeyRow.terminal_id)
                .order_by(ApiKeyRow.created_at_us, ApiKeyRow.id)
            ).all()
            return [_listing(row, terminal_merchant or row.merchant_id) for row, terminal_merchant in rows]

    def revoke(self, key_id: str, actor: Actor = OPERATOR) -> dict[str, Any]:
        """Revoke a key; revoking it again changes nothing and keeps the first instant. Unknown: 404."""
        with Session(self.engine) as session, session.begin():
            key = session.execute(
                select(ApiKeyRow.role, ApiKeyRow.revoked_at_us).where(ApiKeyRow.id == key_id)
            ).one_or_none()
            if key is not None and key.role == "terminal" and key.revoked_at_us is None:
                # Requests this key sent may wait to be posted still: no group decided from now
                # on posts them (`CatalogSnapshot.revoked_keys`), nor one decided before (its
                # head moves here); a revocation the answer confirms is in force for the money
                # path. The sequencer lock first, then the key's row, as every writer takes them.
                lock_sequencer(session, catalog_changed=True)
            result = session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at_us.is_(None))
                .values(revoked_at_us=self.clock.now_us())
            )
            # An UPDATE answers a CursorResult; Session.execute is typed for any statement.
            revoked = cast("CursorResult[Any]", result).rowcount
            found = session.execute(
                select(ApiKeyRow, TerminalRow.merchant_id)
                .outerjoin(TerminalRow, TerminalRow.id == ApiKeyRow.terminal_id)
                .where(ApiKeyRow.id == key_id)
            ).one_or_none()
            if found is None:
                raise EngineError("not_found", f"key {key_id} is not known")
            row, terminal_merchant = found
            listing = _listing(row, terminal_merchant or row.merchant_id)
            if revoked:
                audit.record(
                    session,
                    actor,
                    "key.revoke",
                    f"key:{key_id}",
                    {**listing, "revoked_at": None},
                    listing,
                    at_us=row.revoked_at_us,
                )
            return listing

    def lookup(self, digest: str) -> KeyLookup | None:
        """The key with this SHA-256, unless unknown or revoked; expiry is the caller's to check
        against its clock on every request."""
        return self.lookup_many([digest]).get(digest)

    def lookup_many(self, digests: Sequence[str]) -> dict[str, KeyLookup]:
        """`lookup` of each digest in one query: the keys found, neither unknown nor revoked."""
        with self._reader.connect() as connection:
            rows = connection.execute(_LOOKUP, {"digests": list(digests)}).all()
        found = {}
        for row in rows:
            (
                digest,
                key_id,
                role,
                merchant_id,
                terminal_id,
                expires_at,
                revoked,
                terminal_merchant,
                public_key,
                ended,
            ) = row
            if revoked is not None:
                continue
            if role == "terminal":
                merchant_id = terminal_merchant  # the terminal's merchant now, not when the key was made
            else:
                public_key = None
            principal = Principal(key_id, role, merchant_id, terminal_id, expires_at)
            found[digest] = KeyLookup(principal, expires_at, public_key, ended)
        return found

    def end_sessions(self, digest: str, at_us: int) -> None:
        """Sign the key with this SHA-256 out of the pages: its sessions made at or before `at_us`
        are refused from now on (`api/routers/ui.py`). An unknown key changes nothing."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.key_hash == digest)
                .values(  # never back: a sign-out on a lagging clock does not revive sessions
                    sessions_ended_at_us=case(
                        (ApiKeyRow.sessions_ended_at_us > at_us, ApiKeyRow.sessions_ended_at_us), else_=at_us
                    )
                )
            )

    def touch(self, used: dict[str, int]) -> None:
        """Note `last_used_at_us` for keys used at the given instants, unless a process noted a
        use less than a minute before (so a row is rewritten at most once a minute)."""
        if not used:
            return
        with self.engine.begin() as connection:
            connection.execute(
                _TOUCH,
                [
                    {"key_id": key_id, "at_us": at_us, "horizon_us": at_us - LAST_USED_RESOLUTION_US}
                    for key_id, at_us in sorted(used.items())
                ],
            )
