"""Payment apps and their receipt secrets (SPEC §9.1).

`setapay apps add APP_ID` makes an app and prints its first secret once;
`rotate` adds a new secret and leaves the older ones valid for 24 hours;
`revoke` ends all of them. Secrets are sealed with the ward's data key, bound
to their app, exactly like bank details; the database never holds one in the
clear and no listing shows one.

Each API process keeps the opened secrets of every app for at most
`CACHE_TTL_S`, so a revocation or rotation reaches every process within that
(the process that made the change sees it at once). While requests use them,
the cache's thread reads them again ahead of the TTL (`engine.store.caches`),
so no request waits for that read; one that finds them stale (the first, or
after a refresh failed) reads them itself, and the single-post route does that
in a worker thread (`load`), never on the event loop.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import limits, receipts, sealing
from engine.audit import OPERATOR, Actor
from engine.clock import Clock, SystemClock
from engine.errors import EngineError
from engine.store import audit, db
from engine.store.caches import RefreshingCache
from engine.store.ledger import lock_sequencer
from engine.store.models import AppSecretRow, PaymentAppRow

if TYPE_CHECKING:
    from engine.settings import Settings

ROTATION_GRACE_US = 24 * 3600 * 1_000_000
CACHE_TTL_S = 2.0
FAILED_READ_HOLD_S = 1.0  # after a failed read, how long `load` answers 503 without trying again
_log = logging.getLogger(__name__)
_EVERY_APP = ""  # the cache's one entry: the opened secrets of every app not revoked

OpenedSecrets = dict[str, list[tuple[bytes, int | None]]]  # app id -> (raw secret, valid until or None)


def _associated(app_id: str) -> bytes:
    return b"setapay:app-receipt-secret:" + app_id.encode()


class Apps:
    def __init__(
        self,
        engine: Engine,
        settings: Settings | None = None,
        clock: Clock | None = None,
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()  # one request reads the secrets at a time
        self._failed_at = float("-inf")  # when a request's read last failed (monotonic)
        self._unopened: set[str] = set()  # apps with a secret the last read could not open
        self._cache: RefreshingCache[str, OpenedSecrets] = RefreshingCache(
            cache_ttl_s, self._read_every, size_max=1, name="app-secrets"
        )

    def _data_key(self) -> sealing.DataKey:
        from engine import keyring
        from engine.settings import Settings

        return keyring.data_key(self.settings or Settings())

    @staticmethod
    def _check_id(app_id: str) -> None:
        import re

        if not isinstance(app_id, str) or not re.fullmatch(limits.ID_PATTERN, app_id):
            raise EngineError("invalid_request", "an app id matches " + limits.ID_PATTERN)

    def _add_secret(self, session: Session, app_id: str, now: int) -> str:
        key = self._sealing_key(session, now)
        secret = receipts.new_secret()
        position = (
            session.execute(
                select(func.coalesce(func.max(AppSecretRow.position), 0)).where(AppSecretRow.app_id == app_id)
            ).scalar_one()
            + 1
        )
        session.add(
            AppSecretRow(
                app_id=app_id,
                position=position,
                created_at_us=now,
                valid_until_us=None,
                secret_sealed=sealing.seal(key, secret.encode(), _associated(app_id)),
            )
        )
        return secret

    def _sealing_key(self, session: Session, now: int) -> sealing.DataKey:
        """The data key a new secret is sealed with: the configured one, else the local file's;
        SealingError if it opens none of the live secrets of the apps not revoked, when there are
        some (a secret sealed with another key than the API's opens in no API process, and the
        app's receipts were all refused from then on: helper-93), or if there is no key at all
        while there are (a key made here would be another: helper-98). A first app on a fresh
        ledger, with no key anywhere, gets the local key made for it, as the API would. The first
        secret sealed with a wrong key cannot be told from a right one here."""
        from engine import keyring
        from engine.settings import Settings

        live = session.execute(
            select(AppSecretRow.app_id, AppSecretRow.secret_sealed)
            .join(PaymentAppRow, PaymentAppRow.id == AppSecretRow.app_id)
            .where(
                PaymentAppRow.revoked_at_us.is_(None),
                AppSecretRow.valid_until_us.is_(None) | (AppSecretRow.valid_until_us > now),
            )
            .order_by(AppSecretRow.created_at_us.desc(), AppSecretRow.app_id, AppSecretRow.position.desc())
        ).all()
        found = keyring.existing_data_key(self.settings or Settings())
        if found is None:
            if live:
                raise sealing.SealingError(keyring.NO_DATA_KEY)
            return self._data_key()
        key = found[0]
        for app_id, secret_sealed in live:
            try:
                sealing.open_sealed(key, secret_sealed, _associated(app_id))
            except sealing.SealingError:
                continue
            return key
        if live:
            raise sealing.SealingError(
                f"the data key from {found[1]} opens none of the payment apps' live secrets sealed already"
            )
        return key

    def add(self, app_id: str, actor: Actor = OPERATOR) -> str:
        """A new app; its first secret, returned once."""
        self._check_id(app_id)
        with Session(self.engine) as session, session.begin():
            if session.get(PaymentAppRow, app_id) is not None:
                raise EngineError("already_exists", f"app {app_id} exists")
            now = self.clock.now_us()
            app = PaymentAppRow(id=app_id, created_at_us=now)
            session.add(app)
            session.flush()
            secret = self._add_secret(session, app_id, now)
            audit.record(
                session,
                actor,
                "app.add",
                f"app:{app_id}",
                None,
                self._public(session, app),
                at_us=now,
            )
        self._cache.drop(_EVERY_APP)  # committed: this process reads the secrets again at once
        return secret

    def rotate(self, app_id: str, actor: Actor = OPERATOR) -> str:
        """A new secret; the app's older secrets stay valid for 24 hours from now."""
        with Session(self.engine) as session, session.begin():
            row = self._live(session, app_id)
            before = self._public(session, row)
            now = self.clock.now_us()
            until = now + ROTATION_GRACE_US
            session.execute(
                update(AppSecretRow)
                .where(
                    AppSecretRow.app_id == app_id,
                    (AppSecretRow.valid_until_us.is_(None)) | (AppSecretRow.valid_until_us > until),
                )
                .values(valid_until_us=until)
            )
            secret = self._add_secret(session, app_id, now)
            session.flush()
            audit.record(session, actor, "app.rotate", f"app:{app_id}", before, self._public(session, row), at_us=now)
        self._cache.drop(_EVERY_APP)  # committed: this process reads the secrets again at once
        return secret

    def revoke(self, app_id: str, actor: Actor = OPERATOR) -> dict[str, Any]:
        """End every secret of the app at once; revoking twice keeps the first instant."""
        with Session(self.engine) as session, session.begin():
            # Receipts checked before now may wait to be posted still: none is posted from now on
            # (`CatalogSnapshot.revoked_apps`; the catalog's version moves under the sequencer
            # lock, so a group decided before is decided again). Taken first: two revocations at
            # once read the app one after the other, and the first instant stays.
            lock_sequencer(session, catalog_changed=True)
            row = session.get(PaymentAppRow, app_id)
            if row is None:
                raise EngineError("not_found", f"app {app_id} is not known")
            if row.revoked_at_us is None:
                before = self._public(session, row)
                row.revoked_at_us = self.clock.now_us()
                audit.record(
                    session,
                    actor,
                    "app.revoke",
                    f"app:{app_id}",
                    before,
                    self._public(session, row),
                    at_us=row.revoked_at_us,
                )
            public = self._public(session, row)
        self._cache.drop(_EVERY_APP)  # committed: this process refuses the app's receipts at once
        return public

    def _live(self, session: Session, app_id: str) -> PaymentAppRow:
        row = session.get(PaymentAppRow, app_id)
        if row is None:
            raise EngineError("not_found", f"app {app_id} is not known")
        if row.revoked_at_us is not None:
            raise EngineError("app_revoked", f"app {app_id} is revoked")
        return row

    def list(self) -> builtins.list[dict[str, Any]]:
        with Session(self.engine) as session:
            return [
                self._public(session, r)
                for r in session.execute(select(PaymentAppRow).order_by(PaymentAppRow.id)).scalars()
            ]

    def _public(self, session: Session, row: PaymentAppRow) -> dict[str, Any]:
        now = self.clock.now_us()
        secrets = session.execute(
            select(AppSecretRow.position, AppSecretRow.created_at_us, AppSecretRow.valid_until_us)
            .where(AppSecretRow.app_id == row.id)
            .order_by(AppSecretRow.position)
        ).all()
        live = 0 if row.revoked_at_us is not None else sum(1 for s in secrets if s[2] is None or s[2] > now)
        return {
            "id": row.id,
            "created_at_us": row.created_at_us,
            "revoked_at_us": row.revoked_at_us,
            "secrets": len(secrets),
            "live_secrets": live,
        }

    # -- the API's look-up -------------------------------------------------------

    def live_secrets(
        self, app_id: str, opened: OpenedSecrets | None = None, now_us: int | None = None
    ) -> builtins.list[tuple[bytes, int | None]]:
        """The raw secrets of `app_id` valid now (none for an unknown or revoked app), or at
        `now_us`, each with its end (None: not rotated out), as `receipts.verify` takes them: from
        `opened` when the caller holds them (`current`, `load`), else from the cache, read again if
        stale."""
        if opened is None:
            opened = self.current() or self.load()
        now = self.clock.now_us() if now_us is None else now_us
        live = [(raw, until) for raw, until in opened.get(app_id, ()) if until is None or until > now]
        if not live and app_id in self._unopened:
            # Its secrets are there but this process cannot open them: a retry may find them
            # opened (the data key put right), where a 422 would be the payment app's final answer.
            raise EngineError("service_unavailable", f"app {app_id}'s receipt secrets cannot be opened here")
        return live

    def current(self) -> OpenedSecrets | None:
        """Every app's opened secrets if the cache holds them fresh, else None (then `load`)."""
        cached = self._cache.get(_EVERY_APP)
        return cached[0] if cached is not None and cached[1] else None

    def load(self) -> OpenedSecrets:
        """Read every app's secrets now unless another caller just did; what `live_secrets` uses."""
        with self._lock:
            cached = self._cache.get(_EVERY_APP)
            if cached is not None and cached[1]:
                return cached[0]  # read by the request that held the lock before this one
            if time.monotonic() - self._failed_at < FAILED_READ_HOLD_S:
                # The read just failed (the database away, a secret the data key does not open): the
                # requests queued behind it answer 503 at once rather than each trying again in turn.
                raise EngineError("service_unavailable", "the payment apps' secrets could not be read")
            stamp = self._cache.stamp()  # a change here while it reads keeps its result out
            try:
                opened = self._read()
            except db.UNREACHABLE + (sealing.SealingError,):  # the database away, or another data key
                self._failed_at = time.monotonic()
                raise
            self._cache.put(_EVERY_APP, opened, stamp)
            return opened

    def close(self) -> None:
        """Stop the cache's thread."""
        self._cache.close()

    def _read_every(self, _keys: Sequence[str]) -> dict[str, OpenedSecrets]:
        return {_EVERY_APP: self._read()}

    def _read(self) -> OpenedSecrets:
        key = self._data_key()
        opened: OpenedSecrets = {}
        with Session(self.engine) as session:
            rows = session.execute(
                select(AppSecretRow.app_id, AppSecretRow.secret_sealed, AppSecretRow.valid_until_us)
                .join(PaymentAppRow, PaymentAppRow.id == AppSecretRow.app_id)
                .where(PaymentAppRow.revoked_at_us.is_(None))
            ).all()
        unopened: set[str] = set()
        for app_id, sealed, until in rows:
            try:
                secret = sealing.open_sealed(key, sealed, _associated(app_id)).decode()
            except sealing.SealingError:
                unopened.add(app_id)
                continue
            opened.setdefault(app_id, []).append((receipts.decode_secret(secret), until))
        if unopened and not opened:  # none opens: this process has another data key than the one they were sealed with
            raise sealing.SealingError("the data key opens none of the payment apps' secrets")
        if unopened != self._unopened:
            # One secret sealed with another key (an operator's mistake) is left out, not every app's:
            # the app's other secrets still verify its receipts, and an app left with none answers
            # 503 (`live_secrets`), not a final 422 (helper-93, helper-98). Said once a change.
            if unopened:
                _log.error("payment apps' secrets the data key does not open, left out: apps %s", sorted(unopened))
            self._unopened = unopened
        return opened
