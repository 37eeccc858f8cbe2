"""What the pages under `/ui/` share: languages and formats, sessions, CSRF tokens, rendering.

The pages (api/routers/ui.py) are server-rendered Jinja2 templates (api/ui/templates/),
Japanese by default with an English switch (`?lang=en`, remembered in a cookie). Every
visible string is a message of the catalog `api/ui/locale/{ja,en}/LC_MESSAGES/messages.po`,
compiled in memory with Babel when this module is loaded (so no compiled `.mo` is kept in
the repository or needs a build step); amounts are yen (¥1,234) and dates long dates in the
page's language (2026年12月1日).

A session is a signed, expiring cookie (HttpOnly, SameSite=Strict) holding the SHA-256 of the
key that signed in and the instant it did: every page looks the key up again (`Keys.lookup`, no
cache) and checks its expiry and last sign-out, so a revoked or expired key, or a sign-out, ends
its sessions at once. A signed-in session's forms carry a CSRF token derived from that session
(`Signer.session_csrf`); the sign-in form's equals the one in a signed cookie of its own.
"""

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import io
import secrets
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jinja2
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from babel.messages import mofile, pofile
from babel.support import Translations
from itsdangerous import BadSignature, URLSafeTimedSerializer

from engine.store.config import Principal
from engine.timeutil import TOKYO, tokyo_date

LANGUAGES = ("ja", "en")
DEFAULT_LANGUAGE = "ja"
SESSION_COOKIE = "setapay_ui_session"
CSRF_COOKIE = "setapay_ui_csrf"
LANGUAGE_COOKIE = "setapay_ui_lang"
SESSION_MAX_AGE_S = 8 * 3600  # a working day; the key's own expiry or revocation ends it sooner
UI_ROLES = ("merchant", "finance", "admin")


def _translations(language: str) -> Translations:
    """The language's catalog, compiled from its .po in memory."""
    po = resources.files("api.ui").joinpath("locale", language, "LC_MESSAGES", "messages.po")
    with po.open("rb") as f:
        catalog = pofile.read_po(f, locale=language)
    compiled = io.BytesIO()
    mofile.write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


TRANSLATIONS = {language: _translations(language) for language in LANGUAGES}


def yen(amount: int | None, language: str) -> str:
    if amount is None:
        return "—"
    sign = "-" if amount < 0 else ""
    return f"{sign}¥{babel_numbers.format_decimal(abs(amount), locale=language)}"


def number(value: int | None, language: str) -> str:
    return "—" if value is None else babel_numbers.format_decimal(value, locale=language)


def long_date(day: dt.date | None, language: str) -> str:
    return "—" if day is None else babel_dates.format_date(day, format="long", locale=language)


def date_of_us(us: int, language: str) -> str:
    return long_date(tokyo_date(us), language)


def date_of_instant(instant: str | None, language: str) -> str:
    """A long date of an ISO instant as the API writes them (Asia/Tokyo)."""
    if instant is None:
        return "—"
    return long_date(dt.datetime.fromisoformat(instant).astimezone(TOKYO).date(), language)


def last_day_before(instant: str | None, language: str) -> str:
    """The last day an exclusive end instant covers: a period ending at midnight of 1 December ends
    on 30 November."""
    if instant is None:
        return "—"
    moment = dt.datetime.fromisoformat(instant).astimezone(TOKYO) - dt.timedelta(microseconds=1)
    return long_date(moment.date(), language)


def datetime_of_instant(instant: str | None, language: str) -> str:
    if instant is None:
        return "—"
    moment = dt.datetime.fromisoformat(instant).astimezone(TOKYO)
    return f"{long_date(moment.date(), language)} {moment:%H:%M}"


def _environment(language: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("api.ui", "templates"),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(TRANSLATIONS[language], newstyle=True)  # type: ignore[attr-defined]
    env.filters["yen"] = lambda v: yen(v, language)
    env.filters["number"] = lambda v: number(v, language)
    env.filters["date"] = lambda v: date_of_instant(v, language)
    env.filters["datetime"] = lambda v: datetime_of_instant(v, language)
    env.filters["enddate"] = lambda v: last_day_before(v, language)
    env.filters["longdate"] = lambda v: long_date(v, language)
    env.globals["language"] = language
    return env


ENVIRONMENTS = {language: _environment(language) for language in LANGUAGES}


def render(language: str, template: str, context: Mapping[str, Any]) -> str:
    return ENVIRONMENTS[language].get_template(template).render(**context)


def gettext(language: str, message: str) -> str:
    return TRANSLATIONS[language].gettext(message)


def mask_account(number: str | None) -> str:
    """A bank account number as a page may show it: its last three digits."""
    if not number:
        return "—"
    return "•" * max(len(number) - 3, 0) + number[-3:]


# -- sessions and CSRF ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Session:
    """Who signed in: the key's SHA-256 (looked up again on every page), and when (the engine's
    clock; a session made at or before the key's last sign-out is over)."""

    digest: str
    signed_in_at_us: int


class Signer:
    """Signs the session and CSRF cookies with the application's UI secret."""

    def __init__(self, secret: str) -> None:
        key = secret  # `keyring.ui_session_secret`: the setting, else derived from the data key
        self._serializer = URLSafeTimedSerializer(key, salt="setapay-ui")
        self._csrf_key = hashlib.sha256(b"setapay-ui-csrf\x00" + key.encode()).digest()

    def session_cookie(self, digest: str, signed_in_at_us: int) -> str:
        return self._serializer.dumps({"d": digest, "at": signed_in_at_us})

    def _data(self, cookie: str | None) -> dict[str, Any]:
        """A signed cookie of ours still within its age, else {}."""
        if not cookie:
            return {}
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return {}
        return data if isinstance(data, dict) else {}

    def _field(self, cookie: str | None, field: str) -> str | None:
        """The string `field` of a signed cookie of ours still within its age, else None."""
        value = self._data(cookie).get(field)
        return value if isinstance(value, str) else None

    def session(self, cookie: str | None) -> Session | None:
        data = self._data(cookie)
        digest, at = data.get("d"), data.get("at")
        if not isinstance(digest, str) or type(at) is not int:
            return None  # a cookie made before sessions carried their instant signs in again
        return Session(digest, at)

    def csrf_cookie(self) -> tuple[str, str]:
        """A fresh CSRF token and the signed cookie that carries it, for a caller not signed in
        (the sign-in form: double submit)."""
        token = secrets.token_urlsafe(24)
        return token, self._serializer.dumps({"t": token})

    def csrf_token(self, cookie: str | None) -> str | None:
        return self._field(cookie, "t")

    def session_csrf(self, session: Session) -> str:
        """The CSRF token of a session's forms: an HMAC of that sign-in (its key's SHA-256 and
        instant) under the UI secret. No cookie can plant it, every page of the session shows
        the same one, and another sign-in's is another."""
        mac = hmac.new(self._csrf_key, f"{session.digest}:{session.signed_in_at_us}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def home_path(p: Principal) -> str:
    if p.role == "merchant":
        return f"/ui/merchants/{p.merchant_id}"
    return "/ui/campaigns"
