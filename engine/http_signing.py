"""RFC 9421 HTTP Message Signatures as SPEC §9.2 profiles them, for terminals: the client side.

A terminal with a registered Ed25519 key signs every request: label `sig1`;
covered components `"@method"`, `"@path"`, `"@query"` when there is a query,
`"content-digest"` when there is a body (RFC 9530, `sha-256`) and
`"idempotency-key"` when that header is sent; parameters `created`, `keyid`
(the terminal id), `nonce` (16–64 characters) and `alg="ed25519"`.

`sign_request` is what a terminal vendor, the tests, the bench and the demo
call: method, target (path and query), headers and body in, the headers to
add out. It builds the signature base itself (no parsing, one SHA-256 and one
Ed25519 signature per call), so a load generator can sign every request. The
server verifies with the `http-message-signatures` package (`api/signatures.py`);
the tests hold the two to the same bytes, and this module to RFC 9421 B.2.6.

Pure: cryptography and the standard library only (no web framework).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

LABEL = "sig1"
ALG = "ed25519"
NONCE_LENGTH_MIN = 16
NONCE_LENGTH_MAX = 64
# `created` may be this far from the engine's clock either way.
CREATED_SKEW_S = 300
# A nonce may not be used again by the same terminal for this long.
NONCE_TTL_S = 600
PARAMETERS = ("created", "keyid", "nonce", "alg")


def content_digest(body: bytes) -> str:
    """RFC 9530 `Content-Digest` of the raw body bytes: `sha-256=:<base64>:`."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def covered_components(has_query: bool, has_body: bool, has_idempotency_key: bool) -> tuple[str, ...]:
    """The components a request must cover, in the order the signer lists them."""
    components = ["@method", "@path"]
    if has_query:
        components.append("@query")
    if has_body:
        components.append("content-digest")
    if has_idempotency_key:
        components.append("idempotency-key")
    return tuple(components)


def _sf_string(value: str) -> str:
    """An RFC 8941 String: printable ASCII, with `"` and `\\` escaped."""
    if not all(" " <= c <= "~" for c in value):
        raise ValueError(f"not printable ASCII: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def signature_params(components: Sequence[str], params: Sequence[tuple[str, int | str]]) -> str:
    """The `@signature-params` value: the inner list of components with its parameters."""
    inner = "(" + " ".join(_sf_string(c) for c in components) + ")"
    rendered = []
    for name, value in params:
        rendered.append(f";{name}={value}" if isinstance(value, int) else f";{name}={_sf_string(value)}")
    return inner + "".join(rendered)


def signature_base(values: Sequence[tuple[str, str]], params: str) -> bytes:
    """RFC 9421 §2.5: one line per covered component, then `"@signature-params"`."""
    lines = [f"{_sf_string(name)}: {value}" for name, value in values]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("ascii")


def sign_base(private_key: Ed25519PrivateKey, label: str, base: bytes, params: str) -> dict[str, str]:
    """`Signature-Input` and `Signature` for a signature base."""
    signature = base64.b64encode(private_key.sign(base)).decode("ascii")
    return {"Signature-Input": f"{label}={params}", "Signature": f"{label}=:{signature}:"}


def private_key_from(raw_or_key: bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """A key object from a raw 32-byte seed (or the object itself). Convert once, sign many times."""
    if isinstance(raw_or_key, Ed25519PrivateKey):
        return raw_or_key
    return Ed25519PrivateKey.from_private_bytes(raw_or_key)


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    """What an admin registers with `PATCH /v1/terminals/{id}` `{"public_key": ...}`."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)  # 24 characters


def sign_request(
    private_key: Ed25519PrivateKey | bytes,
    keyid: str,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    *,
    created: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers to add to a request so that it passes SPEC §9.2 verification.

    `target` is the path and query exactly as sent (`/v1/transactions/T1?x=1`);
    `headers` are those the request will carry (an `Idempotency-Key` among them
    is covered); `body` the exact bytes sent. Returns `Content-Digest` (when
    there is a body), `Signature-Input` and `Signature`. `created` defaults to
    now (Unix seconds), `nonce` to a fresh random one.
    """
    key = private_key_from(private_key)
    path, _, query = target.partition("?")
    idempotency_key = None
    for name, value in (headers or {}).items():
        if name.lower() == "idempotency-key":
            idempotency_key = value.strip(" \t")
    out: dict[str, str] = {}
    values: list[tuple[str, str]] = [("@method", method.upper()), ("@path", path or "/")]
    if query:
        values.append(("@query", "?" + query))
    if body:
        out["Content-Digest"] = content_digest(body)
        values.append(("content-digest", out["Content-Digest"]))
    if idempotency_key is not None:
        values.append(("idempotency-key", idempotency_key))
    params = signature_params(
        [name for name, _ in values],
        [
            ("created", int(time.time()) if created is None else created),
            ("keyid", keyid),
            ("nonce", new_nonce() if nonce is None else nonce),
            ("alg", ALG),
        ],
    )
    out.update(sign_base(key, LABEL, signature_base(values, params), params))
    return out


# -- public keys ---------------------------------------------------------------------

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """RFC 8032 §5.1.3: the curve point a 32-byte encoding names, or None."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else (0, y)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(point: tuple[int, int]) -> tuple[int, int]:
    x, y = point
    t = _D * x * x * y * y % _P
    return ((2 * x * y) * pow(1 + t, _P - 2, _P) % _P, (y * y + x * x) * pow(1 - t, _P - 2, _P) % _P)


def parse_public_key(value: str) -> str:
    """Check a registered key: base64 of exactly 32 bytes encoding a point of Ed25519 outside the
    small-order subgroup (such a key would verify forged signatures). Returns it in canonical base64."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_key must be base64") from None
    if len(raw) != 32:
        raise ValueError(f"public_key must be 32 bytes (raw Ed25519), not {len(raw)}")
    point = _decode_point(raw)
    if point is None:
        raise ValueError("public_key is not an Ed25519 public key")
    for _ in range(3):
        point = _double(point)
    if point == (0, 1):
        raise ValueError("public_key is a small-order point, not a usable Ed25519 public key")
    return base64.b64encode(raw).decode("ascii")
