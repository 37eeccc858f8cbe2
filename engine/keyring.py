"""The ward's keys: the data key that seals bank details and the Ed25519 signing key.

Production sets both in the environment (SETAPAY_DATA_KEY_B64,
SETAPAY_SIGNING_KEY_B64); they never enter the database or the logs. So that
the embedded default works with nothing set, a missing key is created once in
a private file beside the working directory (`./setapay-keys/`, mode 0600)
and reused from then on. That fallback is for a newcomer's laptop, not for
the ward: settings always win.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine import sealing
from engine.settings import Settings
from engine.settlement import signing

KEY_DIR = Path("setapay-keys")


def _existing(name: str) -> str | None:
    path = KEY_DIR / name
    return path.read_text().strip() if path.exists() else None


def _local(name: str, make: Callable[[], str]) -> str:
    found = _existing(name)
    if found is not None:
        return found
    path = KEY_DIR / name
    KEY_DIR.mkdir(mode=0o700, exist_ok=True)
    value = make()
    # Written whole under another name, then linked into place unless a process starting beside
    # this one (a server's other worker) made it first: then its key is everyone's.
    partial = KEY_DIR / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    _write_private(partial, value, os.O_TRUNC)
    try:
        os.link(partial, path)
    except FileExistsError:
        return path.read_text().strip()
    except OSError:  # a file system without hard links: created in place, the first one kept
        try:
            _write_private(path, value, os.O_EXCL)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        partial.unlink(missing_ok=True)
    return value


def _write_private(path: Path, value: str, flag: int) -> None:
    """`value` and a newline into `path`, created 0600 from the start (never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flag, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())


def data_key(settings: Settings) -> sealing.DataKey:
    b64 = settings.data_key_b64 or _local("data.key", sealing.generate_key_b64)
    return sealing.load_key(b64)


def existing_data_key(settings: Settings) -> tuple[sealing.DataKey, str] | None:
    """The data key things are already sealed with, and where it was found (the setting's name
    or the local file's path, never the key): the configured key, else the local file's; None
    when there is neither (DataKeyError when the setting is malformed). Never creates one: what
    is sealed with a key made for the purpose opens nowhere else (the API, a restored backup)."""
    if settings.data_key_b64:
        return sealing.load_key(settings.data_key_b64), sealing.SETTING_NAME
    b64 = _existing("data.key")
    return (sealing.load_key(b64), str((KEY_DIR / "data.key").resolve())) if b64 is not None else None


def ui_session_secret(settings: Settings) -> str:
    """What signs the pages' session and CSRF cookies: `SETAPAY_UI_SESSION_SECRET` when set, else a
    key derived from the data key, which every worker of a server (and every restart) holds alike,
    so a cookie one worker signed is good at the others."""
    if settings.ui_session_secret:
        return settings.ui_session_secret
    return base64.urlsafe_b64encode(data_key(settings).derive("ui-session")).decode("ascii")


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    b64 = settings.signing_key_b64 or _local(
        "signing.key", lambda: signing.private_key_b64(signing.generate_private_key())
    )
    return signing.load_private_key(b64)


def signing_public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The public half of the signing key to check signatures with: the configured key, else the
    local file's; None when there is neither. Never creates one: a check made with a key made
    for it would call every genuine signature invalid (a restored backup checked away from its
    key directory did)."""
    b64 = settings.signing_key_b64 or _existing("signing.key")
    return signing.load_private_key(b64).public_key() if b64 else None


NO_SIGNING_KEY = "no signing key to check with: set SETAPAY_SIGNING_KEY_B64, or run where setapay-keys/signing.key is"
NO_DATA_KEY = (
    "no data key: set SETAPAY_DATA_KEY_B64 to the key the API seals with, or run where setapay-keys/data.key is"
)
