"""The audit log's pure parts (SPEC §9.5): who acts, masking, canonical bytes, the chain hash.

Every change that can move money or widen access is one entry: the actor (key id
and role), the instant, an action (``merchant.update``), a target
(``merchant:M1``) and the record before and after, masked. Entries are chained:
``hash = SHA-256(previous hash ‖ canonical bytes of the entry)``, so editing,
removing or reordering any entry breaks every hash after it.

Storage (the table, its lock, the append-only triggers) is `engine/store/audit.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, overload

# SHA-256 of nothing: the hash before the first entry (as for postings).
GENESIS_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

REDACTED = "[redacted]"

# Field names whose value is a secret and never reaches the log, at any depth.
SECRET_FIELDS = frozenset(
    {
        "key",
        "api_key",
        "secret",
        "key_hash",
        "token",
        "password",
        "receipt_secret",
        "app_secret",
        "secrets",
        "data_key",
        "data_key_b64",
        "signing_key",
        "signing_key_b64",
        "private_key",
        "bank_account_sealed",
    }
)
# Prefix of the engine's API keys (``sp_<role>_<id>_<secret>``): redacted wherever it shows up.
API_KEY_PREFIX = "sp_"


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who made a change: an API key's id and role, or the operator at the command line."""

    key_id: str
    role: str


# The command line (setapay ...) and in-process scripts act as the operator.
OPERATOR = Actor("cli", "operator")
# Scheduled runs of the engine itself.
SYSTEM = Actor("system", "system")


def mask_account_number(number: str) -> str:
    """A bank account number to its last 4 digits: ``1234567`` → ``***4567``."""
    digits = str(number)
    return "***" + digits[-4:] if len(digits) > 4 else "***"


# What of a payout account may be shown and logged; the holder's name stays sealed like the number.
# (Masking a masked account keeps it as it is.)
SHOWN_ACCOUNT_FIELDS = ("bank_code", "branch_code", "account_type", "account_number_last4", "set_at")


@overload
def mask_bank_account(account: Mapping[str, Any]) -> dict[str, Any]: ...
@overload
def mask_bank_account(account: None) -> None: ...
def mask_bank_account(account: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A payout account as it may be shown and logged: bank, branch, type and the number's
    last 4 digits; never the full number nor the holder's name."""
    if account is None:
        return None
    masked = {k: account[k] for k in SHOWN_ACCOUNT_FIELDS if k in account}
    if account.get("account_number") is not None:
        masked["account_number_last4"] = str(account["account_number"])[-4:]
    return masked


def _is_secret_name(name: str) -> bool:
    name = name.lower()
    return name in SECRET_FIELDS or name.endswith(("_secret", "_key_hash"))


def mask(value: Any) -> Any:
    """A copy of `value` fit for the log: bank accounts masked, secrets redacted, at any depth."""
    if isinstance(value, dict):
        out: dict[object, Any] = {}
        for k, v in value.items():
            if _is_secret_name(str(k)):
                out[k] = REDACTED
            elif k == "bank_account" and isinstance(v, dict):
                out[k] = mask_bank_account(v)
            elif k == "account_number" and v is not None:
                out[k] = mask_account_number(v)
            else:
                out[k] = mask(v)
        return out
    if isinstance(value, (list, tuple)):
        return [mask(v) for v in value]
    if isinstance(value, str) and value.startswith(API_KEY_PREFIX) and value.count("_") >= 3:
        return REDACTED
    return value


def canonical_json(value: Any) -> str | None:
    """The one JSON text of a before/after record (sorted keys, no spaces, UTF-8); None stays None."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(
    sequence: int,
    at_us: int,
    actor_key_id: str,
    actor_role: str,
    action: str,
    target: str,
    before_json: str | None,
    after_json: str | None,
) -> bytes:
    """An entry's bytes, as stored: the before/after texts are hashed exactly as kept."""
    return json.dumps(
        [sequence, at_us, actor_key_id, actor_role, action, target, before_json, after_json],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def chain_hash(
    previous_hash: str,
    sequence: int,
    at_us: int,
    actor_key_id: str,
    actor_role: str,
    action: str,
    target: str,
    before_json: str | None,
    after_json: str | None,
) -> str:
    canonical = canonical_bytes(sequence, at_us, actor_key_id, actor_role, action, target, before_json, after_json)
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical).hexdigest()
