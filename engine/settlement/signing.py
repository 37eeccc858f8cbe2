"""Ed25519 signatures over JSON documents: merchant statements and daily chain heads.

Ward finance signs what it publishes (SPEC §5 chain heads, §7 statements) so
that a merchant or an auditor can check, with only the ward's public key,
that a document is the one the ward issued. A signed document is

    {"document": {...},
     "signature": {"algorithm": "Ed25519", "key_id": "<16 hex>", "value": "<base64>"}}

The signature is over the document's canonical JSON: keys sorted, no
whitespace, non-ASCII characters as themselves (ensure_ascii=False), UTF-8.
Anyone can recompute those bytes in any language and verify with a stock
Ed25519 implementation. To keep the bytes unambiguous across languages a
document may hold only objects with string keys, arrays, strings, integers,
booleans and null: floats are refused (money is integer yen anyway).

`key_id` is the first 16 hex digits of SHA-256 of the raw 32-byte public
key; it tells a verifier which of the ward's keys to use after a rotation.

Keys load from PEM (PKCS#8 private, SubjectPublicKeyInfo public) or from raw
base64 (the 32-byte seed or public key), the form `SETAPAY_SIGNING_KEY_B64`
holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALGORITHM",
    "SigningKeyError",
    "canonical_json",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_b64",
    "public_key_b64",
    "public_key_pem",
    "sign_document",
    "verify_document",
]

ALGORITHM = "Ed25519"
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64
KEY_ID_HEX_DIGITS = 16
SETTING_NAME = "SETAPAY_SIGNING_KEY_B64"


class SigningKeyError(ValueError):
    """A signing or verifying key is missing or malformed. The message never contains the key."""


# --- Canonical form ----------------------------------------------------------------


def _check_canonical(value: Any, path: str) -> None:
    """Refuse what canonical JSON could not represent the same way everywhere."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        raise TypeError(f"{path}: floats have no single canonical JSON form; use integers")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: object keys must be strings, got {key!r}")
            _check_canonical(item, f"{path}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_canonical(item, f"{path}[{index}]")
        return
    raise TypeError(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_json(document: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, no floats."""
    _check_canonical(document, "$")
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


# --- Keys --------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of SHA-256 of the raw public key."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:KEY_ID_HEX_DIGITS]


def private_key_b64(private_key: Ed25519PrivateKey) -> str:
    """The raw 32-byte seed in base64: what `SETAPAY_SIGNING_KEY_B64` holds."""
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode("ascii")


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return base64.b64encode(_raw_public(key)).decode("ascii")


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The public key as PEM, to publish for merchants and auditors."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _text(value: str | bytes | None, what: str) -> str:
    if value is None:
        raise SigningKeyError(f"no {what} given ({SETTING_NAME} is not set?)")
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    if not text.strip():
        raise SigningKeyError(f"the {what} is empty ({SETTING_NAME} is not set?)")
    return text.strip()


def _raw_b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # `from None`: the decoder's own message could echo part of the key.
        raise SigningKeyError(f"the {what} is neither PEM nor valid base64") from None
    if len(raw) != RAW_KEY_BYTES:
        raise SigningKeyError(f"the {what} in base64 must decode to {RAW_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def load_private_key(value: str | bytes | None) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM or the base64 32-byte seed."""
    text = _text(value, "signing key")
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError):
            raise SigningKeyError("the signing key PEM cannot be read (encrypted, or not a private key)") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"the signing key is {type(key).__name__}, not Ed25519")
        return key
    return Ed25519PrivateKey.from_private_bytes(_raw_b64(text, "signing key"))


def load_public_key(value: str | bytes | None) -> Ed25519PublicKey:
    """An Ed25519 public key from SubjectPublicKeyInfo PEM or the base64 32 raw bytes."""
    text = _text(value, "public key")
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, TypeError):
            raise SigningKeyError("the public key PEM cannot be read") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"the public key is {type(key).__name__}, not Ed25519")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw_b64(text, "public key"))


# --- Signing -----------------------------------------------------------------------


def sign_document(private_key: Ed25519PrivateKey, document: Mapping[str, Any]) -> dict[str, Any]:
    """`document` with its Ed25519 signature over its canonical JSON."""
    if not isinstance(document, Mapping):
        raise TypeError(f"a signed document is a JSON object, got {type(document).__name__}")
    signature = private_key.sign(canonical_json(document))
    return {
        "document": document,
        "signature": {
            "algorithm": ALGORITHM,
            "key_id": key_id(private_key),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def verify_document(public_key: Ed25519PublicKey, signed: Any) -> bool:
    """True only when `signed` is exactly a document signed by this key's private half.

    Any malformed input (missing or extra members, another algorithm, a key id
    of another key, a signature that is not base64 of 64 bytes, a document with
    floats) is simply not valid: this returns False rather than raising, since
    verifying untrusted files is its whole purpose.
    """
    if not isinstance(signed, Mapping) or set(signed) != {"document", "signature"}:
        return False
    document, signature = signed["document"], signed["signature"]
    if not isinstance(document, Mapping) or not isinstance(signature, Mapping):
        return False
    if set(signature) != {"algorithm", "key_id", "value"} or signature["algorithm"] != ALGORITHM:
        return False
    if signature["key_id"] != key_id(public_key) or not isinstance(signature["value"], str):
        return False
    try:
        value = base64.b64decode(signature["value"], validate=True)
        if len(value) != SIGNATURE_BYTES:
            return False
        public_key.verify(value, canonical_json(document))
    except (binascii.Error, ValueError, TypeError, InvalidSignature):
        return False
    return True
