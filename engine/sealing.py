"""Sealing small secrets at rest: AES-256-GCM with a key from settings (SPEC §3).

Merchant bank details are stored sealed, never in clear, and the key lives
only in the environment (`SETAPAY_DATA_KEY_B64`), never in the database. A
sealed blob is

    version (1 byte, 0x01) || nonce (12 random bytes) || ciphertext || tag (16 bytes)

The version byte lets a later key or algorithm be introduced without guessing
what an old blob is. The associated data authenticates the version byte and
the caller's context, for bank details the merchant id, so a blob copied onto
another merchant's row fails to open instead of paying the wrong merchant.

A random 96-bit nonce per seal is safe for far more than the few thousand
merchants a ward has (the GCM bound is about 2^32 seals per key).

The key is held in a `DataKey` whose repr and str never show it, so it cannot
reach a log line or a traceback by accident.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.model import BankAccount

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "VERSION",
    "DataKey",
    "DataKeyError",
    "SealingError",
    "generate_key_b64",
    "load_key",
    "merchant_bank_account_associated",
    "open_bank_account",
    "open_sealed",
    "seal",
    "seal_bank_account",
]

VERSION = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
TAG_BYTES = 16
SETTING_NAME = "SETAPAY_DATA_KEY_B64"


class DataKeyError(ValueError):
    """The data key setting is missing or malformed. The message never contains the key."""


class SealingError(ValueError):
    """A sealed blob could not be opened: altered, truncated, another key, or another context."""


class DataKey:
    """A 32-byte AES key that does not show itself in repr, str or logs."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != KEY_BYTES:
            length = len(secret) if isinstance(secret, (bytes, bytearray)) else type(secret).__name__
            raise DataKeyError(f"the data key must be {KEY_BYTES} bytes, got {length}")
        self._secret = bytes(secret)

    def __repr__(self) -> str:
        return "DataKey(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant time, like every comparison of secrets.
        return isinstance(other, DataKey) and hmac.compare_digest(other._secret, self._secret)

    __hash__ = None  # type: ignore[assignment]  # a key is not something to put in a set

    def __reduce__(self) -> NoReturn:
        # Pickling would write the key to wherever the pickle goes (a cache, a queue).
        raise TypeError("a DataKey cannot be pickled")

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose` alone, derived from this one (HKDF-SHA256 with the purpose as
        its info): every process holding the data key derives the same, and the derived key tells
        nothing of the data key or of another purpose's key."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"setapay:" + purpose.encode()).derive(
            self._secret
        )


def _key(key: DataKey | bytes) -> DataKey:
    return key if isinstance(key, DataKey) else DataKey(key)


def generate_key_b64() -> str:
    """A fresh random key in the form `SETAPAY_DATA_KEY_B64` takes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def load_key(b64: str | None) -> DataKey:
    """The data key from its base64 setting, or DataKeyError saying what is wrong."""
    if b64 is None or not b64.strip():
        raise DataKeyError(
            f"{SETTING_NAME} is not set; it must hold {KEY_BYTES} random bytes in base64 "
            "(python -c 'import engine.sealing as s; print(s.generate_key_b64())')"
        )
    try:
        secret = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        # `from None`: the decoder's own message could echo part of the value.
        raise DataKeyError(f"{SETTING_NAME} is not valid base64") from None
    if len(secret) != KEY_BYTES:
        raise DataKeyError(f"{SETTING_NAME} must decode to {KEY_BYTES} bytes (AES-256), got {len(secret)}")
    return DataKey(secret)


def _associated(associated: bytes) -> bytes:
    if not isinstance(associated, (bytes, bytearray)):
        raise TypeError(f"associated data must be bytes, got {type(associated).__name__}")
    # The version byte is authenticated too, so a blob cannot be relabelled.
    return bytes([VERSION]) + bytes(associated)


def seal(key: DataKey | bytes, plaintext: bytes, associated: bytes) -> bytes:
    """`plaintext` encrypted and authenticated, bound to `associated`."""
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(_key(key)._secret).encrypt(nonce, bytes(plaintext), _associated(associated))
    return bytes([VERSION]) + nonce + ciphertext


def open_sealed(key: DataKey | bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext of `sealed`, or SealingError if anything about it is not as sealed."""
    if not isinstance(sealed, (bytes, bytearray)) or len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:
        raise SealingError("sealed data is truncated")
    if sealed[0] != VERSION:
        raise SealingError(f"sealed data has version {sealed[0]}, this engine reads version {VERSION}")
    nonce, ciphertext = bytes(sealed[1 : 1 + NONCE_BYTES]), bytes(sealed[1 + NONCE_BYTES :])
    try:
        return AESGCM(_key(key)._secret).decrypt(nonce, ciphertext, _associated(associated))
    except InvalidTag:
        raise SealingError(
            "sealed data failed authentication: another key, another owner, or the data was altered"
        ) from None


# --- Merchant bank details ---------------------------------------------------------


def merchant_bank_account_associated(merchant_id: str) -> bytes:
    """Associated data binding a sealed bank account to its merchant.

    The purpose prefix keeps a blob sealed for one use (bank details) from
    opening as another, should the same key ever seal something else.
    """
    if not isinstance(merchant_id, str) or not merchant_id:
        raise ValueError("merchant_id must be a non-empty string")
    return b"setapay:merchant-bank-account:" + merchant_id.encode("utf-8")


def payout_file_associated(run_id: str) -> bytes:
    """Associated data binding a sealed payout (Zengin) file to its settlement run."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string")
    return b"setapay:payout-file:" + run_id.encode("utf-8")


SEALED_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES  # a sealed blob's length beyond its plaintext's


def seal_bank_account(key: DataKey | bytes, merchant_id: str, account: BankAccount) -> bytes:
    """A merchant's payout account, sealed as its JSON and bound to the merchant id."""
    return seal(key, account.model_dump_json().encode("utf-8"), merchant_bank_account_associated(merchant_id))


def open_bank_account(key: DataKey | bytes, merchant_id: str, sealed: bytes) -> BankAccount:
    """The payout account sealed by `seal_bank_account` for this merchant."""
    plaintext = open_sealed(key, sealed, merchant_bank_account_associated(merchant_id))
    return BankAccount.model_validate_json(plaintext)
