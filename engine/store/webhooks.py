"""Webhook endpoints and the delivery of events to them (SPEC §10).

`Webhooks` registers endpoints (`create`, the `whsec_` secret returned once and stored sealed
with the ward's data key, bound to the endpoint id, like receipt secrets), lists and deletes
them, lists failed deliveries for finance, and runs the delivery worker's steps:

1. `fan_out()`: for each live endpoint, the events after its `last_event_id` of the types it
   wants become `webhook_delivery` rows (pending), and the cursor moves on. Event ids are in
   commit order (engine/store/events.py), so a cursor never skips one. An endpoint starts at
   the newest event of the moment it is registered.
2. `claim()`: the deliveries due now, leased to this worker (longer than all its attempts may take), at most one per
   (endpoint, wallet): a delivery is due only when no earlier delivery of its endpoint and
   wallet is still pending, so a wallet's events arrive in order. On PostgreSQL the candidates
   are locked `FOR UPDATE SKIP LOCKED`, so several processes claim disjoint rows; on SQLite
   every transaction is BEGIN IMMEDIATE (one process delivers at a time).
3. `attempt()`: one signed POST with httpx, ended within the timeout as a whole (`Deadline`), its
   answer's body never read; a 2xx delivers. A delivery whose lease ran out before its turn in the
   round is not sent (it is claimed again).
4. `finish()`: delivered, or retried after an exponential backoff with jitter, or `failed` once
   the retry window (24 h by default) since the event was fanned out has passed. Only the worker
   holding the lease may finish a delivery; a lease that ran out (a worker killed mid-send) makes
   the delivery due again: delivery is at least once.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from engine import events, metrics, sealing
from engine import webhooks as rules
from engine.audit import OPERATOR, Actor
from engine.clock import Clock, SystemClock
from engine.errors import EngineError
from engine.store import audit, bounded, db, remembered
from engine.store import events as outbox
from engine.store.models import EventRow, WebhookDeliveryRow, WebhookEndpointRow
from engine.store.remembered import Once
from engine.timeutil import format_instant

if TYPE_CHECKING:
    from engine.settings import Settings

CLAIM_MAX = 50
# A claim's lease outlasts every attempt of the claim timing out, so it runs out only when its worker died.
LEASE_MARGIN_S = 30
# What an attempt may take beyond its timeout (the host name's resolution, recording it).
ATTEMPT_MARGIN_S = 5
FAN_OUT_MAX = 1_000
ERROR_CHARS_MAX = 200
log = logging.getLogger(__name__)


class Deadline:
    """A whole HTTP attempt's time limit for a synchronous httpx client: its `trace` (the request's
    `trace` extension) keeps the sockets the attempt connects, and once `seconds` have passed since
    the block began they are shut down, which ends any read or write waiting on them."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.append(sock)
                    if self.expired:
                        _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


# Host names are resolved on threads of their own and waited for within an attempt's timeout
# (getaddrinfo takes none): a name whose resolver never answers keeps one thread, shared by every
# attempt for that name meanwhile, and at most RESOLVING_MAX are kept so.
RESOLVING_MAX = 16
_RESOLVING: bounded.Calls[list[Any]] = bounded.Calls("webhook-resolve", RESOLVING_MAX)


def _resolve(host: str, port: int, seconds: float) -> list[str]:
    """The addresses `host` resolves to, waited for at most `seconds` (`TimeoutError` then, and
    `bounded.Busy` when RESOLVING_MAX names are being resolved already)."""
    answers = _RESOLVING.call(
        lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), seconds, key=(host, port)
    )
    return [str(info[4][0]) for info in answers]


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


def _associated(endpoint_id: str) -> bytes:
    return b"setapay:webhook-secret:" + endpoint_id.encode()


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this worker, with what it takes to send it."""

    id: int
    lease_until_us: int
    attempts: int
    created_at_us: int
    url: str
    secret: str
    message_id: str
    body: str


def _sendable(url: str) -> bool:
    """Whether the HTTP client can parse `url` (some URLs `urlsplit` takes, it cannot)."""
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    return True


class Webhooks:
    def __init__(self, engine: Engine, settings: Settings, clock: Clock | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.random = random.Random()

    def _data_key(self) -> sealing.DataKey:
        from engine import keyring

        return keyring.data_key(self.settings)

    # -- what an admin does ------------------------------------------------------

    def create(
        self, url: str, event_types: Sequence[str], actor: Actor = OPERATOR, once: Once | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A new endpoint; its signing secret, returned this once, and its public view. With `once`,
        its answer is remembered in the same transaction (`engine.store.remembered`): `Duplicate`
        when another request under the same idempotency key remembered one first."""
        problem = rules.url_problem(url, self.settings.webhooks_allow_http)
        if problem is None and not _sendable(url):
            problem = "the URL is not valid"  # one the HTTP client could never send to
        if problem is not None:
            raise EngineError("webhook_url_not_allowed", problem)
        unknown = sorted(set(event_types) - set(events.TYPES))
        if unknown or not event_types:
            raise EngineError("invalid_request", "event_types lists one or more of " + ", ".join(events.TYPES))
        endpoint_id = "wh_" + secrets.token_hex(12)
        secret = rules.new_secret()
        with remembered.made_once(self.engine, once), Session(self.engine) as session, session.begin():
            now = self.clock.now_us()
            row = WebhookEndpointRow(
                id=endpoint_id,
                url=url,
                event_types_json=json.dumps(sorted(set(event_types))),
                secret_sealed=sealing.seal(self._data_key(), secret.encode(), _associated(endpoint_id)),
                last_event_id=session.execute(select(func.coalesce(func.max(EventRow.id), 0))).scalar_one(),
                created_at_us=now,
                deleted_at_us=None,
            )
            session.add(row)
            session.flush()
            public = self._public(session, row)
            audit.record(session, actor, "webhook.create", f"webhook:{endpoint_id}", None, public, at_us=now)
            if once is not None:
                once.remember(session, public, secret)
            return secret, public

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every endpoint, deleted ones too, with its delivery counts; never a secret."""
        with Session(db.reader(self.engine)) as session:
            rows = session.execute(select(WebhookEndpointRow).order_by(WebhookEndpointRow.created_at_us)).scalars()
            return [self._public(session, row) for row in rows]

    def delete(self, endpoint_id: str, actor: Actor = OPERATOR) -> dict[str, Any]:
        """Stop delivering to an endpoint: its pending deliveries end `failed` ("endpoint deleted").
        Deleting again changes nothing; 404 when unknown."""
        with Session(self.engine) as session, session.begin():
            row = session.get(WebhookEndpointRow, endpoint_id)
            if row is None:
                raise EngineError("not_found", f"webhook {endpoint_id} is not known")
            if row.deleted_at_us is None:
                before = self._public(session, row)
                now = row.deleted_at_us = self.clock.now_us()
                session.execute(
                    update(WebhookDeliveryRow)
                    .where(WebhookDeliveryRow.endpoint_id == endpoint_id, WebhookDeliveryRow.status == "pending")
                    .values(status="failed", finished_at_us=now, last_error="endpoint deleted", leased_until_us=None)
                )
                session.flush()
                audit.record(
                    session,
                    actor,
                    "webhook.delete",
                    f"webhook:{endpoint_id}",
                    before,
                    self._public(session, row),
                    at_us=now,
                )
            return self._public(session, row)

    def _public(self, session: Session, row: WebhookEndpointRow) -> dict[str, Any]:
        counts = dict(
            session.execute(
                select(WebhookDeliveryRow.status, func.count())
                .where(WebhookDeliveryRow.endpoint_id == row.id)
                .group_by(WebhookDeliveryRow.status)
            ).all()
        )
        return {
            "id": row.id,
            "url": row.url,
            "event_types": json.loads(row.event_types_json),
            "created_at": format_instant(row.created_at_us),
            "deleted_at": format_instant(row.deleted_at_us) if row.deleted_at_us is not None else None,
            "deliveries": {s: int(counts.get(s, 0)) for s in ("pending", "delivered", "failed")},
        }

    # -- what finance reads ------------------------------------------------------

    def deliveries(self, status: str, after: int, limit: int) -> builtins.list[dict[str, Any]]:
        """Deliveries of `status` with an id above `after`, oldest first: what was (not) delivered."""
        with Session(db.reader(self.engine)) as session:
            rows = session.execute(
                select(WebhookDeliveryRow, EventRow.type)
                .join(EventRow, EventRow.id == WebhookDeliveryRow.event_id)
                .where(WebhookDeliveryRow.status == status, WebhookDeliveryRow.id > after)
                .order_by(WebhookDeliveryRow.id)
                .limit(limit)
            ).all()
            return [
                {
                    "id": d.id,
                    "webhook_id": d.endpoint_id,
                    "event_id": d.event_id,
                    "event_type": event_type,
                    "wallet_id": d.wallet_id,
                    "status": d.status,
                    "attempts": d.attempts,
                    "last_status_code": d.last_status_code,
                    "last_error": d.last_error,
                    "created_at": format_instant(d.created_at_us),
                    "last_attempt_at": format_instant(d.last_attempt_at_us) if d.last_attempt_at_us else None,
                    "finished_at": format_instant(d.finished_at_us) if d.finished_at_us else None,
                }
                for d, event_type in rows
            ]

    def counts(self) -> dict[str, int]:
        """Deliveries pending and failed, for the metrics."""
        with self.engine.connect() as connection:
            found = dict(
                connection.execute(
                    select(WebhookDeliveryRow.status, func.count())
                    .where(WebhookDeliveryRow.status.in_(["pending", "failed"]))
                    .group_by(WebhookDeliveryRow.status)
                ).all()
            )
        return {s: int(found.get(s, 0)) for s in ("pending", "failed")}

    # -- the delivery worker -----------------------------------------------------

    def _is_pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def fan_out(self) -> int:
        """Deliveries for every live endpoint's new events of its types; how many live endpoints
        there are."""
        with Session(db.reader(self.engine)) as session:
            ids = list(
                session.execute(
                    select(WebhookEndpointRow.id).where(WebhookEndpointRow.deleted_at_us.is_(None))
                ).scalars()
            )
        for endpoint_id in ids:
            self._fan_out_one(endpoint_id)
        return len(ids)

    def _fan_out_one(self, endpoint_id: str) -> int:
        with Session(self.engine) as session, session.begin():
            stmt = select(WebhookEndpointRow).where(
                WebhookEndpointRow.id == endpoint_id, WebhookEndpointRow.deleted_at_us.is_(None)
            )
            if self._is_pg():
                stmt = stmt.with_for_update(skip_locked=True)  # another worker is fanning it out
            endpoint = session.execute(stmt).scalar_one_or_none()
            if endpoint is None:
                return 0
            wanted = set(json.loads(endpoint.event_types_json))
            found = session.execute(
                select(EventRow.id, EventRow.type, EventRow.wallet_id)
                .where(EventRow.id > endpoint.last_event_id)
                .order_by(EventRow.id)
                .limit(FAN_OUT_MAX)
            ).all()
            if not found:
                return 0
            now = self.clock.now_us()
            rows = [
                dict(
                    endpoint_id=endpoint_id,
                    event_id=event_id,
                    wallet_id=wallet_id,
                    status="pending",
                    attempts=0,
                    next_attempt_at_us=now,
                    created_at_us=now,
                )
                for event_id, type_, wallet_id in found
                if type_ in wanted
            ]
            if rows:
                dialect = postgresql if self._is_pg() else sqlite
                session.execute(
                    dialect.insert(WebhookDeliveryRow.__table__).on_conflict_do_nothing(
                        index_elements=["endpoint_id", "event_id"]
                    ),
                    rows,
                )
            endpoint.last_event_id = found[-1][0]
            return len(rows)

    def claim(self, limit: int = CLAIM_MAX) -> builtins.list[Claimed]:
        """Lease the deliveries due now (at most one per endpoint and wallet) to this worker."""
        now = self.clock.now_us()
        lease_until = now + int((limit * self.settings.webhook_timeout_s + LEASE_MARGIN_S) * 1_000_000)
        d, earlier = WebhookDeliveryRow, aliased(WebhookDeliveryRow)
        blocked = exists().where(
            earlier.endpoint_id == d.endpoint_id,
            earlier.wallet_id == d.wallet_id,  # NULL wallets (finance events) are not ordered
            earlier.status == "pending",
            earlier.id < d.id,
        )
        stmt = (
            select(d.id)
            .where(
                d.status == "pending",
                d.next_attempt_at_us <= now,
                (d.leased_until_us.is_(None)) | (d.leased_until_us < now),
                ~blocked,
            )
            .order_by(d.id)
            .limit(limit)
        )
        if self._is_pg():
            stmt = stmt.with_for_update(of=d, skip_locked=True)
        with Session(self.engine) as session, session.begin():
            ids = list(session.execute(stmt).scalars())
            if not ids:
                return []
            session.execute(update(d).where(d.id.in_(ids)).values(leased_until_us=lease_until))
            rows = session.execute(
                select(
                    d.id,
                    d.attempts,
                    d.created_at_us,
                    d.endpoint_id,
                    WebhookEndpointRow.url,
                    WebhookEndpointRow.secret_sealed,
                    EventRow.id,
                    EventRow.type,
                    EventRow.wallet_id,
                    EventRow.data_json,
                    EventRow.created_at_us,
                )
                .join(WebhookEndpointRow, WebhookEndpointRow.id == d.endpoint_id)
                .join(EventRow, EventRow.id == d.event_id)
                .where(d.id.in_(ids))
                .order_by(d.id)
            ).all()
        key = self._data_key()
        return [
            Claimed(
                id=delivery_id,
                lease_until_us=lease_until,
                attempts=attempts,
                created_at_us=created_at_us,
                url=url,
                secret=sealing.open_sealed(key, sealed, _associated(endpoint_id)).decode(),
                message_id=f"evt_{event[0]}",
                body=json.dumps(outbox.view(*event), ensure_ascii=False, separators=(",", ":")),
            )
            for delivery_id, attempts, created_at_us, endpoint_id, url, sealed, *event in rows
        ]

    def attempt(self, client: httpx.Client, delivery: Claimed) -> tuple[int | None, str | None]:
        """One signed POST: (HTTP status or None, error or None); a 2xx with no error delivers.

        Unless `webhooks_allow_http`, the host is resolved once, refused if any address it
        resolves to is local, private or reserved, and the POST connects to the first address
        checked (the URL's host kept in the Host header and as the TLS server name the
        certificate is verified against), on a connection not kept for another request: a
        name whose DNS answer changes between the check and the connection (DNS rebinding)
        cannot lead the engine into the ward's network. The resolution and the POST together
        take at most `webhook_timeout_s`: the resolver is waited for on a thread of its own."""
        started, timeout = time.monotonic(), self.settings.webhook_timeout_s
        target: httpx.URL | str = delivery.url
        headers = rules.signed_headers(delivery.secret, delivery.message_id, self.clock.now_us(), delivery.body)
        extensions: dict[str, Any] = {}
        if not self.settings.webhooks_allow_http:
            try:
                url = httpx.URL(delivery.url)
            except (httpx.InvalidURL, ValueError) as exc:  # registered before the URL rule refused it
                return None, f"{type(exc).__name__}: the URL is not valid"
            try:
                resolved = _resolve(url.host, url.port or 443, timeout)
            except TimeoutError:
                return None, f"resolve: no answer within {timeout:g} s"
            except bounded.Busy:
                return None, f"resolve: {RESOLVING_MAX} host names without an answer yet"
            except (OSError, UnicodeError) as exc:
                return None, f"resolve: {type(exc).__name__}"
            if not resolved or any(rules.address_is_local(str(address)) for address in resolved):
                return None, "the host resolves to a local, private or reserved address"
            target = url.copy_with(host=str(resolved[0]))
            headers.update({"Host": url.netloc.decode("ascii"), "Connection": "close"})
            extensions["sni_hostname"] = url.host
        # The whole attempt, not each read, ends within the timeout: an endpoint trickling its
        # answer a byte at a time held each attempt ~147 s (5 s between reads), and the worker's
        # every other endpoint with it. Its socket is shut down when the time is up. The answer's
        # body is never read: its status is all a delivery needs, and a huge body was read into
        # the memory of the process that takes payments (helper-82's probe: 3.2 GB).
        deadline = Deadline(max(timeout - (time.monotonic() - started), 0.001))
        extensions["trace"] = deadline.trace
        try:
            with (
                deadline,
                client.stream(
                    "POST", target, content=delivery.body.encode(), headers=headers, extensions=extensions
                ) as response,
            ):
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
            if deadline.expired:
                return None, f"no answer within {timeout:g} s"
            return None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS_MAX]
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    def finish(self, delivery: Claimed, status_code: int | None, error: str | None) -> str:
        """Record an attempt's outcome; `delivered`, `retry` or `failed` (also the metric's label)."""
        now = self.clock.now_us()
        attempts = delivery.attempts + 1
        values: dict[str, Any] = dict(
            attempts=attempts,
            last_attempt_at_us=now,
            last_status_code=status_code,
            last_error=error,
            leased_until_us=None,
        )
        if error is None:
            outcome = "delivered"
            values.update(status="delivered", finished_at_us=now)
        elif now - delivery.created_at_us >= self.settings.webhook_retry_window_s * 1_000_000:
            outcome = "failed"
            values.update(status="failed", finished_at_us=now)
        else:
            outcome = "retry"
            wait_s = events.backoff_s(
                attempts,
                self.settings.webhook_backoff_base_s,
                self.settings.webhook_backoff_max_s,
                self.random.random(),
            )
            values.update(next_attempt_at_us=now + int(wait_s * 1_000_000))
        d = WebhookDeliveryRow
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(d)
                .where(and_(d.id == delivery.id, d.status == "pending", d.leased_until_us == delivery.lease_until_us))
                .values(**values)
            )
        metrics.WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc()
        return outcome

    def deliver_once(self, client: httpx.Client) -> int:
        """One round of the worker: fan out, claim, send, record; how many attempts were made.
        With no live endpoint nothing is pending (deleting one fails its pending deliveries), so
        an idle engine's round is one small query. A delivery whose lease ran out (a round slowed
        past it: a host name slow to resolve, a paused process) is not sent: another worker may
        have claimed it since, and it is claimed again."""
        if not self.fan_out():
            return 0
        claimed = self.claim()
        # An attempt may take the whole timeout: one that could outlast its lease is not begun.
        attempt_us = int((self.settings.webhook_timeout_s + ATTEMPT_MARGIN_S) * 1_000_000)
        for delivery in claimed:
            if self.clock.now_us() + attempt_us >= delivery.lease_until_us:
                continue
            try:
                outcome = self.attempt(client, delivery)
            except Exception as exc:  # one endpoint's failure is its own: the others are still sent
                log.exception("webhook delivery %s failed unexpectedly", delivery.id)
                outcome = None, f"{type(exc).__name__}"
            self.finish(delivery, *outcome)
        return len(claimed)

    def client(self) -> httpx.Client:
        # No redirects: a 3xx is not a delivery, and following one could leave the checked host.
        return httpx.Client(timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Deliver until `stop` is set: rounds back to back while there is work, else every `interval_s`."""
        with self.client() as client:
            while not stop.is_set():
                try:
                    busy = self.deliver_once(client)
                except Exception:  # keep the worker alive; the next round retries
                    log.exception("webhook delivery round failed")
                    busy = 0
                if not busy:
                    stop.wait(interval_s)
