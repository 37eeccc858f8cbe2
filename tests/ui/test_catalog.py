"""The pages' message catalogs (api/ui/locale): every message of the templates is in both, the
Japanese one translates each, neither keeps a message no template uses, and the formats are
the Japanese ones (¥1,234, 2026年12月1日)."""

import datetime as dt
from pathlib import Path

from babel.messages import extract, pofile

from api import ui

UI = Path(ui.__file__).parent


def _template_messages() -> set[str]:
    found = set()
    for path in sorted((UI / "templates").glob("*.html")):
        with path.open("rb") as f:
            for _line, message, _comments, _context in extract.extract(
                "jinja2", f, options={"extensions": "jinja2.ext.i18n"}
            ):
                found.add(message if isinstance(message, str) else message[0])
    return found


def _catalog(language: str) -> dict[str, str]:
    with (UI / "locale" / language / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return {m.id: m.string for m in pofile.read_po(f) if m.id}


def test_every_template_message_is_in_both_catalogs() -> None:
    used = _template_messages()
    assert len(used) > 50, "the extraction found the templates' messages"
    for language in ui.LANGUAGES:
        catalog = _catalog(language)
        assert used - catalog.keys() == set(), f"{language}: messages missing from the catalog"
        assert catalog.keys() - used == set(), f"{language}: messages no template uses"
    japanese = _catalog("ja")
    assert [m for m in used if not japanese[m]] == [], "messages without a Japanese translation"


def test_pages_speak_japanese_by_default_and_english_on_request() -> None:
    assert ui.gettext("ja", "Sign in") == "ログイン"
    assert ui.gettext("en", "Sign in") == "Sign in"
    assert ui.DEFAULT_LANGUAGE == "ja"


def test_japanese_formats() -> None:
    assert ui.yen(1234, "ja") == "¥1,234"
    assert ui.yen(-50, "ja") == "-¥50"
    assert ui.long_date(dt.date(2026, 12, 1), "ja") == "2026年12月1日"
    assert ui.long_date(dt.date(2026, 12, 1), "en") == "December 1, 2026"
    assert ui.date_of_instant("2026-11-30T15:00:00+00:00", "ja") == "2026年12月1日"  # midnight in Tokyo
    assert ui.number(1234567, "ja") == "1,234,567"
    assert ui.last_day_before("2026-12-01T00:00:00+09:00", "ja") == "2026年11月30日"  # a period's exclusive end
