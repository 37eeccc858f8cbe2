"""Verifying signed terminal requests (SPEC §9.2, RFC 9421): the one path every terminal key takes.

`TerminalSignatures.verify` is called by the bearer-key dependency (`principal`
in api/deps.py, through `Auth.principal`) for every request made with a terminal key, whatever the route
(single and batch transactions, reads, closeouts, ...), before the
route's own checks. A terminal without a registered public key is bearer-only
and passes untouched. With a key, the request must carry one signature,
labelled `sig1`, over exactly the components `engine.http_signing.covered_components`
names for it, with exactly the parameters created, keyid (the terminal), nonce
(16–64 characters) and alg="ed25519"; the body is checked against the signed
`Content-Digest` (sha-256) byte for byte, as received (the BodyLimit middleware
has read it whole). Then `created` must be within 300 s of the engine's clock
and the nonce unused by this terminal for 600 s (`engine/store/nonces.py`).

The RFC 9421 mechanics (parsing Signature-Input and Signature, the signature
base, Ed25519, the digest) are the `http-message-signatures` package's
`HTTPMessageVerifier`. Two of its checks do not fit and are replaced: its
clock (the wall clock with 5 s of skew) becomes the engine's clock
(`SETAPAY_CLOCK_OFFSET_S`) with 300 s either way, checked only once the
signature is known to be genuine so that `signature_expired` is never told to
a forger; and its tolerance of unlisted components and of `expires`/`tag`
parameters is narrowed to the exact profile below.

Registered keys are cached per process for `KEY_CACHE_S` (≤ 5 s; a terminal in
use has its key looked up again ahead of that by the cache's own thread,
`engine.store.caches`), and a change made through this process is seen at once: a new,
changed or removed key reaches every API process within that time.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_sf.compat import InnerList
from starlette.requests import Request

from engine.clock import Clock
from engine.errors import EngineError
from engine.http_signing import (
    CREATED_SKEW_S,
    LABEL,
    NONCE_LENGTH_MAX,
    NONCE_LENGTH_MIN,
    PARAMETERS,
    covered_components,
)
from engine.store import db
from engine.store.caches import RefreshingCache, Stamp
from engine.store.config import Config
from engine.store.nonces import DatabaseNonces, RedisNonces

KEY_CACHE_S = 2.0
KEY_CACHE_SIZE_MAX = 10_000  # terminals (the ward has ~6,200 shops)
# The scheme and authority are not covered (`@authority` is not in the profile); the
# library's component resolver wants an absolute URL, so the path and query get this in front.
_ORIGIN = "http://terminal.invalid"


class _Verifier(HTTPMessageVerifier):
    def validate_created_and_expires(self, sig_input: InnerList, max_age: int | None = None) -> None:
        # `created` is checked against the engine's clock after the signature verified (see below);
        # here only that it is there and an integer.
        if "created" not in sig_input.params:
            raise InvalidSignature('Signature is missing a required "created" parameter')
        # The package leaves this helper unannotated.
        self._parse_integer_timestamp(sig_input.params["created"], field_name="created")  # type: ignore[no-untyped-call]


class _OneKey(HTTPSignatureKeyResolver):
    """The key of the terminal the bearer key belongs to, and only under its id."""

    def __init__(self, terminal_id: str, key: Ed25519PublicKey) -> None:
        self.terminal_id = terminal_id
        self.key = key

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        if key_id != self.terminal_id:
            raise InvalidSignature("keyid is not this key's terminal")
        return self.key


class _Message:
    """What the package's component resolver reads from a request."""

    __slots__ = ("headers", "method", "url")

    def __init__(self, method: str, url: str, headers: Any) -> None:
        self.method = method
        self.url = url
        self.headers = headers


def _parse(encoded: str | None) -> Ed25519PublicKey | None:
    return None if encoded is None else Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded))


def _invalid(detail: str) -> EngineError:
    return EngineError("signature_invalid", detail[:300])


class TerminalSignatures:
    def __init__(
        self, config: Config, nonces: DatabaseNonces | RedisNonces, clock: Clock, key_cache_s: float = KEY_CACHE_S
    ) -> None:
        self.config = config
        self.nonces = nonces
        self.clock = clock
        # A terminal's key, or None for a bearer-only terminal (`engine.store.caches`: refreshed ahead).
        self._keys: RefreshingCache[str, Ed25519PublicKey | None] = RefreshingCache(
            key_cache_s, self._public_keys, size_max=KEY_CACHE_SIZE_MAX, name="terminal-keys"
        )

    def _public_keys(self, terminal_ids: Sequence[str]) -> dict[str, Ed25519PublicKey | None]:
        encoded = self.config.terminal_public_keys(terminal_ids)
        found = {}
        for terminal_id in terminal_ids:
            try:
                # A terminal not found signs nothing, as `Config.terminal_public_key` says of it.
                found[terminal_id] = _parse(encoded.get(terminal_id))
            except ValueError:  # a stored key that does not parse: left out (its requests look it up)
                continue
        return found

    def stamp(self) -> Stamp:
        """Taken before a look-up that may bring a terminal's key to `found` (the key's look-up)."""
        return self._keys.stamp()

    def found(self, terminal_id: str, encoded: str | None, stamp: Stamp) -> None:
        """A terminal's key as another look-up read it, begun at `stamp` (`api.auth`: a terminal's
        API key is read with its terminal's signing key): cached as `public_key` would cache it,
        so the request's own look-up finds it. A stored key that does not parse is not cached
        (`public_key` looks it up and refuses it)."""
        try:
            key = _parse(encoded)
        except ValueError:
            return
        self._keys.put(terminal_id, key, stamp)

    async def public_key(self, terminal_id: str) -> Ed25519PublicKey | None:
        cached = self._keys.get(terminal_id)
        if cached is not None and cached[1]:
            return cached[0]
        stamp = self._keys.stamp()  # a key changed here while it runs keeps its answer out of the cache
        try:
            encoded = await asyncio.to_thread(self.config.terminal_public_key, terminal_id)
        except db.UNREACHABLE as exc:  # the database went away: a 503 the terminal retries, not a 500
            raise EngineError("service_unavailable", type(exc).__name__) from None
        key = _parse(encoded)
        self._keys.put(terminal_id, key, stamp)
        return key

    def forget(self, terminal_id: str) -> None:
        """The terminal's key changed in this process: look it up again on its next request."""
        self._keys.drop(terminal_id)

    def close(self) -> None:
        self._keys.close()

    async def verify(
        self, request: Request, terminal_id: str, admitted: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Raise 401 unless the request is signed as SPEC §9.2 says (no-op for a bearer-only terminal).
        `admitted`, awaited once the signature holds and before its nonce is claimed, may refuse
        the request (the key's rate: a request refused there leaves its nonce unused, so the
        terminal may send it again as it is)."""
        key = await self.public_key(terminal_id)
        if key is None:
            return
        headers = request.headers
        if "signature" not in headers or "signature-input" not in headers:
            raise EngineError(
                "signature_required",
                f"terminal {terminal_id} has a registered key: sign the request (RFC 9421, {LABEL})",
            )
        body = await request.body()
        created, nonce = self.check(request, body, terminal_id, key)
        # Compared in microseconds, not whole seconds: a signature is valid for at most 600 s in all
        # (created ± 300 s), so a nonce kept 600 s from its first use outlives every valid replay.
        if abs(created * 1_000_000 - self.clock.now_us()) > CREATED_SKEW_S * 1_000_000:
            raise EngineError("signature_expired", f"created must be within {CREATED_SKEW_S} s of the engine's clock")
        if admitted is not None:
            await admitted()
        if not await self.nonces.claim(terminal_id, nonce, self.clock.now_us()):
            raise EngineError("signature_replayed", "this terminal used the nonce within the last 600 s")

    @staticmethod
    def check(request: Request, body: bytes, terminal_id: str, key: Ed25519PublicKey) -> tuple[int, str]:
        """Verify the signature and its profile; return (created, nonce). Raises 401 signature_invalid."""
        scope = request.scope
        query = scope.get("query_string", b"")
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        url = _ORIGIN + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        message = _Message(scope["method"], url, request.headers)
        verifier = _Verifier(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(terminal_id, key))
        try:
            results = verifier.verify(message, max_age=None, body=body)
        except HTTPMessageSignaturesException as exc:
            detail = str(exc)
            if not detail or detail == "InvalidSignature":  # the package wraps cryptography's bare exception
                detail = "the signature does not verify with the terminal's registered key"
            raise _invalid(detail) from None
        except Exception as exc:  # noqa: BLE001 - whatever a hostile header provokes is still just invalid
            raise _invalid(type(exc).__name__) from None
        if len(results) != 1 or results[0].label != LABEL:
            raise _invalid(f"one signature labelled {LABEL} is expected")
        result = results[0]
        covered = [c for c in result.covered_components if c != '"@signature-params"']
        expected = covered_components(bool(query), bool(body), "idempotency-key" in request.headers)
        if sorted(covered) != sorted(f'"{c}"' for c in expected):
            raise _invalid(f"the signature must cover exactly {' '.join(expected)}")
        params = result.parameters
        if set(params) != set(PARAMETERS):
            raise _invalid(f"the signature's parameters must be exactly {', '.join(PARAMETERS)}")
        if params["alg"] != "ed25519":
            raise _invalid('alg must be "ed25519"')
        nonce = params["nonce"]
        if not isinstance(nonce, str) or not NONCE_LENGTH_MIN <= len(nonce) <= NONCE_LENGTH_MAX:
            raise _invalid(f"nonce must be {NONCE_LENGTH_MIN} to {NONCE_LENGTH_MAX} characters")
        if body:
            try:
                algorithms_sent = http_sf.parse(
                    result.covered_components['"content-digest"'].encode("ascii"), tltype="dictionary"
                )
            except ValueError:
                raise _invalid("Content-Digest is malformed") from None
            if not isinstance(algorithms_sent, dict) or "sha-256" not in algorithms_sent:
                raise _invalid("Content-Digest must carry sha-256")
        created = params["created"]
        if not isinstance(created, int):  # _Verifier let only an integer through
            raise _invalid("created must be an integer")
        return created, nonce
