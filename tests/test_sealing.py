"""Sealed secrets open only with the same key, the same owner and every byte intact.

Covers the AES-256-GCM round trip, tampering with each part of a blob
(version, nonce, ciphertext, tag), another merchant's associated data,
another key, key loading errors that never echo the key, and the key's
absence from repr, str and pickles.
"""

from __future__ import annotations

import base64
import pickle

import pytest

from engine import sealing
from engine.model import BankAccount
from engine.sealing import DataKey, DataKeyError, SealingError

KEY = DataKey(bytes(range(32)))
OTHER_KEY = DataKey(bytes(range(1, 33)))
AD = sealing.merchant_bank_account_associated("M001")
SECRET = '{"bank_code":"0001","holder_kana":"ｶ)ｾﾀｶﾞﾔ"}'.encode()
ACCOUNT = BankAccount(
    bank_code="0001", branch_code="123", account_type="ordinary", account_number="1234567", holder_kana="ｶ)ｾﾀｶﾞﾔ"
)


def test_round_trip():
    sealed = sealing.seal(KEY, SECRET, AD)
    assert sealing.open_sealed(KEY, sealed, AD) == SECRET
    assert SECRET not in sealed


def test_layout_version_nonce_ciphertext_tag():
    sealed = sealing.seal(KEY, SECRET, AD)
    assert sealed[0] == sealing.VERSION == 1
    assert len(sealed) == 1 + sealing.NONCE_BYTES + len(SECRET) + 16


def test_each_seal_uses_a_fresh_nonce():
    first, second = sealing.seal(KEY, SECRET, AD), sealing.seal(KEY, SECRET, AD)
    assert first[1:13] != second[1:13] and first != second
    assert sealing.open_sealed(KEY, first, AD) == sealing.open_sealed(KEY, second, AD) == SECRET


def test_raw_bytes_key_works_like_a_data_key():
    sealed = sealing.seal(bytes(range(32)), SECRET, AD)
    assert sealing.open_sealed(KEY, sealed, AD) == SECRET


def test_empty_plaintext_round_trips():
    assert sealing.open_sealed(KEY, sealing.seal(KEY, b"", AD), AD) == b""


@pytest.mark.parametrize(
    "index", [1, 12, 13, -17, -1], ids=["nonce-first", "nonce-last", "ciphertext", "tag-first", "tag-last"]
)
def test_flipping_any_byte_fails(index):
    sealed = bytearray(sealing.seal(KEY, SECRET, AD))
    sealed[index] ^= 0x01
    with pytest.raises(SealingError, match="failed authentication"):
        sealing.open_sealed(KEY, bytes(sealed), AD)


def test_every_single_byte_flip_fails():
    sealed = sealing.seal(KEY, SECRET, AD)
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x80
        with pytest.raises(SealingError):
            sealing.open_sealed(KEY, bytes(tampered), AD)


def test_unknown_version_fails_clearly():
    sealed = bytearray(sealing.seal(KEY, SECRET, AD))
    sealed[0] = 2
    with pytest.raises(SealingError, match="version 2"):
        sealing.open_sealed(KEY, bytes(sealed), AD)


@pytest.mark.parametrize("cut", [0, 1, 13, 28])
def test_truncated_blob_fails(cut):
    sealed = sealing.seal(KEY, SECRET, AD)
    with pytest.raises(SealingError):
        sealing.open_sealed(KEY, sealed[:cut], AD)


def test_truncated_tag_fails():
    sealed = sealing.seal(KEY, SECRET, AD)
    with pytest.raises(SealingError):
        sealing.open_sealed(KEY, sealed[:-1], AD)


def test_blob_copied_to_another_merchant_fails():
    sealed = sealing.seal(KEY, SECRET, AD)
    with pytest.raises(SealingError):
        sealing.open_sealed(KEY, sealed, sealing.merchant_bank_account_associated("M002"))
    with pytest.raises(SealingError):
        sealing.open_sealed(KEY, sealed, b"")


def test_wrong_key_fails():
    sealed = sealing.seal(KEY, SECRET, AD)
    with pytest.raises(SealingError):
        sealing.open_sealed(OTHER_KEY, sealed, AD)


def test_bank_account_round_trip_bound_to_its_merchant():
    sealed = sealing.seal_bank_account(KEY, "M001", ACCOUNT)
    assert sealing.open_bank_account(KEY, "M001", sealed) == ACCOUNT
    assert b"1234567" not in sealed and "ｾﾀｶﾞﾔ".encode() not in sealed
    with pytest.raises(SealingError):
        sealing.open_bank_account(KEY, "M002", sealed)
    # The purpose prefix: a blob sealed with the bare merchant id is not bank details.
    with pytest.raises(SealingError):
        sealing.open_bank_account(KEY, "M001", sealing.seal(KEY, ACCOUNT.model_dump_json().encode(), b"M001"))


# --- Keys --------------------------------------------------------------------------


def test_load_key_round_trip():
    b64 = sealing.generate_key_b64()
    key = sealing.load_key(b64)
    assert key == DataKey(base64.b64decode(b64))
    assert sealing.load_key(f"  {b64}\n") == key  # whitespace from an env file


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "SETAPAY_DATA_KEY_B64 is not set"),
        ("", "SETAPAY_DATA_KEY_B64 is not set"),
        ("   ", "SETAPAY_DATA_KEY_B64 is not set"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(bytes(31)).decode(), "must decode to 32 bytes .AES-256., got 31"),
        (base64.b64encode(bytes(33)).decode(), "got 33"),
        (base64.b64encode(bytes(16)).decode(), "got 16"),  # AES-128 is not accepted
    ],
)
def test_load_key_errors_are_clear(value, message):
    with pytest.raises(DataKeyError, match=message):
        sealing.load_key(value)


def test_key_length_is_checked_for_raw_bytes_too():
    with pytest.raises(DataKeyError, match="32 bytes, got 31"):
        sealing.seal(bytes(31), SECRET, AD)
    with pytest.raises(DataKeyError, match="32 bytes, got 33"):
        DataKey(bytes(33))


def test_load_key_error_never_echoes_the_value():
    secretish = "c2VjcmV0LXNlY3JldC1zZWNyZXQ"  # base64 of the wrong length and padding
    with pytest.raises(DataKeyError) as caught:
        sealing.load_key(secretish + "!")
    assert secretish not in str(caught.value) and caught.value.__cause__ is None


def test_key_never_shows_in_repr_str_or_pickle():
    b64 = base64.b64encode(bytes(range(32))).decode()
    for text in (repr(KEY), str(KEY), f"{KEY}", repr([KEY]), repr({"key": KEY})):
        assert "redacted" in text
        assert b64 not in text and repr(bytes(range(32))) not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(KEY)


def test_associated_data_must_be_bytes():
    with pytest.raises(TypeError):
        sealing.seal(KEY, SECRET, "M001")  # type: ignore[arg-type]


def test_a_derived_key_is_the_same_for_every_holder_and_one_per_purpose():
    """HKDF-SHA256 (RFC 5869) of the data key, its info the purpose: what the pages' cookies are
    signed with when SETAPAY_UI_SESSION_SECRET is unset (`keyring.ui_session_secret`)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac

    raw = bytes(range(32))
    derived = DataKey(raw).derive("ui-session")
    assert derived == DataKey(bytes(raw)).derive("ui-session") and len(derived) == 32
    assert derived not in (raw, DataKey(raw).derive("ui-session2"), DataKey(bytes(32)).derive("ui-session"))
    # RFC 5869 by hand: extract with a zero salt, then one block of expand.
    extract = crypto_hmac.HMAC(bytes(32), hashes.SHA256())
    extract.update(raw)
    expand = crypto_hmac.HMAC(extract.finalize(), hashes.SHA256())
    expand.update(b"setapay:ui-session\x01")
    assert derived == expand.finalize()


def test_the_pages_secret_is_the_setting_else_derived_from_the_data_key(tmp_path, monkeypatch):
    from engine import keyring
    from engine.settings import Settings

    key_b64 = base64.b64encode(bytes(range(32))).decode()
    derived = keyring.ui_session_secret(Settings(data_key_b64=key_b64))
    assert derived == keyring.ui_session_secret(Settings(data_key_b64=key_b64))
    assert derived != keyring.ui_session_secret(Settings(data_key_b64=base64.b64encode(bytes(32)).decode()))
    assert base64.urlsafe_b64decode(derived) == DataKey(bytes(range(32))).derive("ui-session")
    assert keyring.ui_session_secret(Settings(data_key_b64=key_b64, ui_session_secret="set")) == "set"
    # With no key set, the local key file's (made once, the same for each process after).
    monkeypatch.chdir(tmp_path)
    first = keyring.ui_session_secret(Settings())
    assert first == keyring.ui_session_secret(Settings()) and (tmp_path / "setapay-keys" / "data.key").exists()


def test_processes_making_the_local_key_at_once_all_get_the_one_kept(tmp_path, monkeypatch):
    """Two workers starting on a new machine both found no key file; the one whose O_EXCL create
    came second failed. Now each writes its own, links it into place, and takes the file's."""
    from concurrent.futures import ThreadPoolExecutor

    from engine import keyring

    monkeypatch.chdir(tmp_path)
    made = [sealing.generate_key_b64() for _ in range(16)]
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda i: keyring._local("data.key", lambda: made[i]), range(16)))
    kept = (tmp_path / "setapay-keys" / "data.key").read_text().strip()
    assert got == {kept}
    assert sorted(p.name for p in (tmp_path / "setapay-keys").iterdir()) == ["data.key"]  # no partial left
    assert (tmp_path / "setapay-keys" / "data.key").stat().st_mode & 0o777 == 0o600
