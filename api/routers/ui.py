"""The pages under `/ui/` (issue 13): merchants read their rewards, ward finance its campaigns,
settlement runs and reconciliation. Server-rendered HTML, left out of the OpenAPI document.

Sign-in takes a merchant, finance or admin key once (`POST /ui/login`) and answers a session
cookie (api/ui); every page then looks the key up again, so a revoked or expired key ends the
session at once, and counts against the key's request rate (`SETAPAY_RATE_LIMIT_PER_KEY`, shared
with its API calls; over it, a 429 page with `Retry-After`). Without a session a page redirects
(303) to the sign-in form; a page of another role, or a merchant page of another merchant,
answers 403. Every figure comes from the
same store functions as the JSON routes (engine/store/queries.py, finance.py, settlement.py).

Each page is built in a worker thread of the pages' own (`_in_thread`, at most `PAGE_THREADS`
at once), so its store calls (reads of a month of payments, settlement runs and grants that take
the ledger's sequencer lock) never hold the event loop and every terminal's request behind them,
and pages waiting on the database never take the threads the rest of the API needs (the sign-in's
key look-up among them: a page thread waiting for one from the same pool could wait forever). A
posted form is read on the loop before the thread starts; what else must run on the loop (the
API's authentication, whose rate limits are async) is called back onto it with
`anyio.from_thread.run`.
"""

import contextlib
import datetime as dt
import hmac
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import ui
from api.access_log import PRINCIPAL_STATE
from api.deps import Services, ServicesDep
from api.idempotency import check_idempotency_key
from api.routers.finance import GrantRequest
from api.strict import PathId, calendar_date, decimal_digits, decode_cursor, encode_cursor
from engine import keyring
from engine.errors import EngineError
from engine.model import CalendarDate, Campaign
from engine.settlement import signing, statement
from engine.store import audit, finance, lifecycle, queries, settlement, simulate
from engine.store.config import Principal
from engine.store.keys import KeyLookup, hash_key
from engine.timeutil import TOKYO, to_us

router = APIRouter()
_LOG = logging.getLogger(__name__)

# The pages show each role what the API gives it (SPEC §6): a merchant's transactions, rewards
# and statements to the merchant (its own) and finance, a campaign's budget to finance; never to
# an admin, who configures merchants and campaigns without reading their money.
MERCHANT_READERS = ("merchant", "finance")
BUDGET_READERS = ("finance",)
_CURSOR_PREFIX = "seq"  # as the JSON route's cursor: a merchant's transactions by payment sequence
_AUDIT_CURSOR_PREFIX = "aud"  # as GET /v1/audit's
_PAGE_SIZE = 25
_HTML = {"response_class": HTMLResponse, "include_in_schema": False}


def _signer(request: Request) -> ui.Signer:
    signer: ui.Signer | None = getattr(request.app.state, "ui_signer", None)
    if signer is None:
        signer = ui.Signer(keyring.ui_session_secret(request.app.state.services.settings))
        request.app.state.ui_signer = signer
    return signer


def _language(request: Request) -> str:
    wanted = request.query_params.get("lang") or request.cookies.get(ui.LANGUAGE_COOKIE)
    return wanted if wanted in ui.LANGUAGES else ui.DEFAULT_LANGUAGE


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = ui.SESSION_MAX_AGE_S
) -> None:
    """A cookie of the pages: HttpOnly, SameSite=Strict, path /ui, and Secure when the page came
    over https (as uvicorn sees it: behind a TLS proxy, with its forwarded headers trusted)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    who: Principal | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The page rendered in the caller's language, with the CSRF token its forms carry."""
    html, set_cookies = _rendered(request, template, context, who)
    response = HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)
    set_cookies(response)
    return response


def _rendered(
    request: Request, template: str, context: Mapping[str, Any], who: Principal | None
) -> tuple[str, Callable[[Response], None]]:
    """The page's HTML in the caller's language, and what sets the cookies it relies on (a fresh
    CSRF cookie, the language chosen) on the response that carries it."""
    language = _language(request)
    signer = _signer(request)
    session = signer.session(request.cookies.get(ui.SESSION_COOKIE))
    fresh_cookie = None
    if session is not None:
        token = signer.session_csrf(session)
    else:
        token = signer.csrf_token(request.cookies.get(ui.CSRF_COOKIE)) or ""
        if not token:
            token, fresh_cookie = signer.csrf_cookie()
    html = ui.render(
        language,
        template,
        {"who": who, "csrf": token, "path": request.url.path, "home": ui.home_path(who) if who else None, **context},
    )

    def set_cookies(response: Response) -> None:
        if fresh_cookie is not None:
            _set_cookie(request, response, ui.CSRF_COOKIE, fresh_cookie)
        if request.query_params.get("lang") in ui.LANGUAGES:
            _set_cookie(request, response, ui.LANGUAGE_COOKIE, language, max_age=365 * 86_400)

    return html, set_cookies


def _error(request: Request, who: Principal | None, status: int, message: str) -> HTMLResponse:
    return _page(request, "error.html", {"status": status, "message": message}, who, status)


class _Refused(Exception):
    """A page that cannot be shown to this caller: the response that says so."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _to_sign_in() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(ui.SESSION_COOKIE, path="/ui")
    return response


def _session_over(session: ui.Session, found: KeyLookup) -> bool:
    """Whether the session was made at or before its key's last sign-out."""
    return found.sessions_ended_at_us is not None and session.signed_in_at_us <= found.sessions_ended_at_us


def _signed_in(request: Request, s: Services, *roles: str) -> Principal:
    """The session's key as the key store says now; a redirect to sign-in or a 403 page otherwise."""
    session = _signer(request).session(request.cookies.get(ui.SESSION_COOKIE))
    if session is None:
        raise _Refused(_to_sign_in())
    found = s.keys.lookup(session.digest)
    if (
        found is None
        or (found.expires_at_us is not None and found.expires_at_us <= s.clock.now_us())
        or _session_over(session, found)
        or found.principal.role not in ui.UI_ROLES
    ):
        raise _Refused(_to_sign_in())
    who = found.principal
    setattr(request.state, PRINCIPAL_STATE, who)  # for the access log's key id and role
    # Page loads count against the key's request rate like its API calls: a signed-in browser
    # (or a script holding its cookie) cannot load expensive pages without limit.
    if not anyio.from_thread.run(s.auth.per_key.hit, who.key_id):
        response = _error(request, who, 429, "rate_limited")
        response.headers["Retry-After"] = str(anyio.from_thread.run(s.auth.per_key.retry_after_s, who.key_id))
        raise _Refused(response)
    if roles and who.role not in roles:
        raise _Refused(_error(request, who, 403, "forbidden_role"))
    return who


def _merchant_scope(request: Request, who: Principal, merchant_id: str) -> None:
    if who.role == "merchant" and who.merchant_id != merchant_id:
        raise _Refused(_error(request, who, 403, "forbidden_merchant"))


def _checked_form(request: Request, before_sign_in: bool = False) -> dict[str, str]:
    """The posted form, once its CSRF token is the session's (`Signer.session_csrf`), or, with no
    session (or on the sign-in form, `before_sign_in`), the one of the caller's CSRF cookie."""

    async def read() -> FormData:
        return await request.form()  # parsed by `_in_thread` already: no body is read here

    form = anyio.from_thread.run(read)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    given = fields.get("csrf", "").encode()  # bytes: `compare_digest` refuses non-ASCII text
    signer = _signer(request)
    session = signer.session(request.cookies.get(ui.SESSION_COOKIE))
    accepted = session is not None and hmac.compare_digest(given, signer.session_csrf(session).encode())
    if not accepted and (session is None or before_sign_in):
        # A sign-in form may have been shown without the session cookie (reached from another
        # site: SameSite=Strict) while the sign-in post carries it.
        expected = signer.csrf_token(request.cookies.get(ui.CSRF_COOKIE))
        accepted = expected is not None and hmac.compare_digest(given, expected.encode())
    if not accepted:
        raise _Refused(_error(request, None, 403, "csrf"))
    return fields


# The pages' own worker threads: however many pages wait on the database, the threads the API's
# other work needs (key look-ups, batch posts, FastAPI's `def` routes) stay free.
PAGE_THREADS = 8
_PAGE_LIMITER = anyio.CapacityLimiter(PAGE_THREADS)


async def _in_thread(request: Request, build: Callable[[], Response]) -> Response:
    """`build` the page in one of the pages' worker threads. A posted form is read first, here on
    the event loop (a slow client holds no thread; `_checked_form` then finds it parsed); one that
    cannot be read (more than 1,000 fields, multipart without its boundary: Starlette's 400) is a
    page saying so, not the JSON API's problem document about a body that is not JSON."""
    if request.method == "POST":
        try:
            await request.form()
        except StarletteHTTPException as unread:
            return _error(request, None, unread.status_code, "form_unreadable")
    return await anyio.to_thread.run_sync(_guarded, request, build, limiter=_PAGE_LIMITER)


# Every page, redirect and download of the pages: kept by no cache (they carry a signed-in
# key's data), framed by no other page (clickjacking), its type never sniffed, and the page's
# address not sent to another site.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _guarded(request: Request, build: Callable[[], Any]) -> Response:
    try:
        answer: Response = build()
    except _Refused as refused:
        answer = refused.response
    answer.headers.update(PAGE_HEADERS)
    return answer


def _store_error(request: Request, who: Principal, error: EngineError) -> HTMLResponse:
    status = error.status  # the catalog's, as the JSON routes answer the same refusal
    return _page(request, "error.html", {"status": status, "message": error.code, "detail": error.detail}, who, status)


# -- sign-in ---------------------------------------------------------------------------


@router.get("/ui", include_in_schema=False)
async def ui_root_unslashed(request: Request) -> Response:
    """`/ui` is `/ui/`: the one path the application redirects to its slashed form, by a relative
    Location, its query kept (`?lang=en`). Starlette's own slash redirects, turned off in
    `api.app`, built theirs from the Host header a client sends."""
    query = request.url.query
    return RedirectResponse(f"/ui/?{query}" if query else "/ui/", status_code=308)


@router.get("/ui/", **_HTML)  # type: ignore[arg-type]
async def ui_root(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s)
        return RedirectResponse(ui.home_path(who), status_code=303)

    return await _in_thread(request, build)


@router.get("/ui/login", **_HTML)  # type: ignore[arg-type]
async def ui_login_form(request: Request) -> Response:
    return _page(request, "login.html", {"failed": False})


@router.post("/ui/login", **_HTML)  # type: ignore[arg-type]
async def ui_login(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        fields = _checked_form(request, before_sign_in=True)
        secret = fields.get("key", "").strip()
        address = request.client.host if request.client else "unknown"
        try:
            who = anyio.from_thread.run(s.auth.authenticate, secret, address, False)
            if who.role not in ui.UI_ROLES:
                # A terminal's or an app's key is answered as a made-up one: the form tells no
                # one whether a key is real, and a key not counted here (a signing terminal's
                # rate is counted once its request signature holds: `Auth.principal`).
                raise anyio.from_thread.run(s.auth.failed, address)
            anyio.from_thread.run(s.auth.count, who)
        except EngineError as refused:
            status = 429 if refused.code == "rate_limited" else 401
            return _page(request, "login.html", {"failed": True}, status=status)
        response = RedirectResponse(ui.home_path(who), status_code=303)
        digest = hash_key(secret)
        # After the key's last sign-out even on a clock behind the one that recorded it.
        found = s.keys.lookup(digest)
        ended = found.sessions_ended_at_us if found is not None and found.sessions_ended_at_us is not None else -1
        cookie = _signer(request).session_cookie(digest, max(s.clock.now_us(), ended + 1))
        _set_cookie(request, response, ui.SESSION_COOKIE, cookie)
        return response

    return await _in_thread(request, build)


@router.post("/ui/logout", **_HTML)  # type: ignore[arg-type]
async def ui_logout(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        _checked_form(request)
        # Every session of the key made until now ends, in every process (a copy of the cookie
        # too), not only this browser's cookie.
        session = _signer(request).session(request.cookies.get(ui.SESSION_COOKIE))
        found = None if session is None else s.keys.lookup(session.digest)
        if session is not None and found is not None and not _session_over(session, found):
            # Only a live session signs out: an ended one (a stale tab, an old copy) ends nothing.
            s.keys.end_sessions(session.digest, max(s.clock.now_us(), session.signed_in_at_us))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(ui.SESSION_COOKIE, path="/ui")
        return response

    return await _in_thread(request, build)


# -- merchant pages --------------------------------------------------------------------


def _tokyo_midnight(day: dt.date) -> int:
    return to_us(dt.datetime.combine(day, dt.time(), tzinfo=TOKYO))


@router.get("/ui/merchants/{merchant_id}", **_HTML)  # type: ignore[arg-type]
async def ui_merchant_home(request: Request, merchant_id: PathId, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, *MERCHANT_READERS)
        _merchant_scope(request, who, merchant_id)
        try:
            merchant = s.config.get_merchant(merchant_id)
        except EngineError as error:
            return _store_error(request, who, error)
        now = dt.datetime.fromtimestamp(s.clock.now_us() / 1e6, TOKYO)
        today = now.date()
        day_start = _tokyo_midnight(today)
        month_start = _tokyo_midnight(today.replace(day=1))
        tomorrow = _tokyo_midnight(today + dt.timedelta(days=1))
        today_rewards = queries.merchant_rewards(s.engine, merchant_id, day_start, tomorrow)
        month_rewards = queries.merchant_rewards(s.engine, merchant_id, month_start, tomorrow)
        context = {
            "merchant": merchant,
            "today": today,
            "today_rewards": today_rewards,
            "month_rewards": month_rewards,
            "next_crediting": queries.merchant_next_crediting(s.engine, merchant_id),
            # The windows the figures are of, for whoever checks them against the JSON route.
            "windows": {"today": (_iso(day_start), _iso(tomorrow)), "month": (_iso(month_start), _iso(tomorrow))},
        }
        return _page(request, "merchant_home.html", context, who)

    return await _in_thread(request, build)


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, TOKYO).isoformat()


@router.get("/ui/merchants/{merchant_id}/transactions", **_HTML)  # type: ignore[arg-type]
async def ui_merchant_transactions(request: Request, merchant_id: PathId, s: ServicesDep) -> Response:
    """A page of the merchant's transactions in acceptance order, optionally between two dates
    (`from` included, `until` not; Asia/Tokyo), by the JSON route's query and cursor."""

    def build() -> Response:
        who = _signed_in(request, s, *MERCHANT_READERS)
        _merchant_scope(request, who, merchant_id)
        query = request.query_params
        cursor = query.get("cursor") or None
        dates = {name: query.get(name) or "" for name in ("from", "until")}
        try:
            after = decode_cursor(_CURSOR_PREFIX, cursor)
            bounds = [_tokyo_midnight(calendar_date(d)) if d else None for d in dates.values()]
            if bounds[0] is not None and bounds[1] is not None and bounds[1] <= bounds[0]:
                raise ValueError("until must be after from")  # as the JSON route's `to`
        except (EngineError, ValueError):
            return _error(request, who, 422, "invalid_request")
        page, last = queries.merchant_transactions(s.engine, merchant_id, bounds[0], bounds[1], after, _PAGE_SIZE)
        filters = "".join(f"&{name}={value}" for name, value in dates.items() if value)
        context = {
            "merchant_id": merchant_id,
            "transactions": page,
            "next_cursor": encode_cursor(_CURSOR_PREFIX, last) if last is not None else None,
            "first_page": cursor is None,
            "dates": dates,
            "filters": filters,
        }
        return _page(request, "merchant_transactions.html", context, who)

    return await _in_thread(request, build)


@router.get("/ui/merchants/{merchant_id}/statements", **_HTML)  # type: ignore[arg-type]
async def ui_merchant_statements(request: Request, merchant_id: PathId, s: ServicesDep) -> Response:
    """The merchant's line of every settlement run, its payout status, whether the run's signed
    statement verifies, and its own statement to download (CSV, signed JSON) with whether that
    verifies; never another merchant's line."""

    def build() -> Response:
        who = _signed_in(request, s, *MERCHANT_READERS)
        _merchant_scope(request, who, merchant_id)
        rows = []
        for run in settlement.list_runs(s.ledger):
            view = settlement.get_view(s.ledger, run["id"])
            own = settlement.merchant_statement(s.settings, view, merchant_id)
            if own is None:
                continue
            status = next((p["payout_status"] for p in view["payouts"] if p["merchant_id"] == merchant_id), None)
            rows.append(
                {
                    "run": run,
                    "line": own["document"]["line"],
                    "status": status,
                    "verified": _verified(s, view["statement"]),
                    "own_verified": _verified(s, own),
                }
            )
        context = {"rows": rows, "merchant_id": merchant_id}
        return _page(request, "merchant_statements.html", context, who)

    return await _in_thread(request, build)


def _attachment(body: str | bytes, media_type: str, name: str) -> Response:
    """A file to save, named `name` (ids and fixed words only, so no quoting is needed)."""
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})


_MERCHANT_DOWNLOADS = {"statement.csv": "text/csv; charset=utf-8", "statement.json": "application/json"}


@router.get("/ui/merchants/{merchant_id}/statements/{run_id}/{download}", **_HTML)  # type: ignore[arg-type]
async def ui_merchant_statement_download(
    request: Request, merchant_id: PathId, run_id: PathId, download: str, s: ServicesDep
) -> Response:
    """The merchant's own statement of a run: its line as CSV (the run CSV's columns), or signed
    JSON (settlement.merchant_statement) that `setapay verify-statement` checks. Never another
    merchant's line (403), never a bank account."""

    def build() -> Response:
        who = _signed_in(request, s, *MERCHANT_READERS)
        _merchant_scope(request, who, merchant_id)
        if download not in _MERCHANT_DOWNLOADS:
            return _error(request, who, 404, "not_found")
        try:
            view = settlement.get_view(s.ledger, run_id)
        except EngineError as error:
            return _store_error(request, who, error)
        own = settlement.merchant_statement(s.settings, view, merchant_id)
        if own is None:
            return _error(request, who, 404, "not_found")  # the run has no line for this merchant
        body = (
            statement.to_csv([own["document"]["line"]])
            if download == "statement.csv"
            else json.dumps(own, ensure_ascii=False, indent=1)
        )
        return _attachment(body, _MERCHANT_DOWNLOADS[download], f"{run_id}.{merchant_id}.{download}")

    return await _in_thread(request, build)


# -- finance pages ---------------------------------------------------------------------


@router.get("/ui/campaigns", **_HTML)  # type: ignore[arg-type]
async def ui_campaigns(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, "finance", "admin")
        # An admin configures campaigns and simulates them; their budgets' burn is finance's
        # (SPEC §6: GET /v1/campaigns/{id}/budget), so the admin's list has none.
        budgets = who.role in BUDGET_READERS
        rows = []
        for campaign in s.config.list_campaigns():
            rows.append({"campaign": campaign, "budget": finance.budget(s.ledger, campaign.id) if budgets else None})
        return _page(request, "campaigns.html", {"rows": rows, "budgets": budgets}, who)

    return await _in_thread(request, build)


@router.get("/ui/campaigns/{campaign_id}", **_HTML)  # type: ignore[arg-type]
async def ui_campaign(request: Request, campaign_id: PathId, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, *BUDGET_READERS)
        try:
            campaign = s.config.get_campaign(campaign_id)
            budget = finance.budget(s.ledger, campaign_id)
        except EngineError as error:
            return _store_error(request, who, error)
        days = finance.burn_by_day(s.ledger, campaign_id)
        context = {"campaign": campaign, "budget": budget, "days": days, "chart": _burn_chart(days, budget)}
        return _page(request, "campaign.html", context, who)

    return await _in_thread(request, build)


def _burn_chart(days: list[dict[str, Any]], budget: dict[str, Any]) -> dict[str, Any]:
    """Bars of net points issued per day and the cumulative line, scaled into a 640×240 box."""
    width, height, left, bottom = 640, 240, 56, 28
    plot_w, plot_h = width - left - 8, height - bottom - 8
    cumulative, total = [], 0
    for d in days:
        total += d["net"]
        cumulative.append(total)
    top = max([budget["budget"] or 0, *cumulative, *(d["net"] for d in days), 1])
    n = max(len(days), 1)
    slot = min(plot_w / n, 60.0)  # one day alone is a bar, not a wall
    bars, points = [], []
    for i, d in enumerate(days):
        h = max(d["net"], 0) / top * plot_h
        x = left + i * slot
        bars.append(
            {
                "x": round(x + slot * 0.15, 1),
                "y": round(8 + plot_h - h, 1),
                "w": round(slot * 0.7, 1),
                "h": round(h, 1),
                "day": d["day"],
                "net": d["net"],
            }
        )
        points.append(f"{round(x + slot / 2, 1)},{round(8 + plot_h - cumulative[i] / top * plot_h, 1)}")
    budget_y = None if not budget["budget"] else round(8 + plot_h - budget["budget"] / top * plot_h, 1)
    return {
        "width": width,
        "height": height,
        "left": left,
        "base": 8 + plot_h,
        "right": width - 8,
        "top": top,
        "bars": bars,
        "line": " ".join(points),
        "budget_y": budget_y,
    }


# -- what-if ---------------------------------------------------------------------------

_SIMULATED_DAYS = 30  # the form's default window: the last 30 days up to tomorrow


def _draft_fields(campaign: Campaign, today: dt.date) -> dict[str, str]:
    fields = {f"tier_{i}": str(t.rate_bp) for i, t in enumerate(campaign.tiers)}
    for name in ("per_tx_cap", "per_wallet_cap", "budget"):
        value = getattr(campaign, name)
        fields[name] = "" if value is None else str(value)
    fields["from"] = (today - dt.timedelta(days=_SIMULATED_DAYS - 1)).isoformat()
    fields["to"] = (today + dt.timedelta(days=1)).isoformat()
    return fields


_calendar_date: TypeAdapter[dt.date] = TypeAdapter(CalendarDate)


def _number_field(fields: Mapping[str, str], name: str) -> int:
    """The form's field `name` read as the grant form reads points (`_number_typed`): Python's
    `int` took '1_0' as 10 and other scripts' digits; `ValueError` naming the field otherwise."""
    try:
        return _number_typed(fields.get(name, ""))
    except ValueError:
        raise ValueError(f"{name}: a number written in digits") from None


def _draft(campaign: Campaign, fields: Mapping[str, str]) -> tuple[Campaign, int, int]:
    """The live campaign with the form's rates, caps and budget, and the window; `ValueError` or
    pydantic's `ValidationError` naming what is wrong."""
    record = campaign.model_dump(mode="json")
    for i, tier in enumerate(record["tiers"]):
        tier["rate_bp"] = _number_field(fields, f"tier_{i}")
    for name in ("per_tx_cap", "per_wallet_cap", "budget"):
        record[name] = _number_field(fields, name) if fields.get(name, "").strip() else None
    draft = Campaign.model_validate(record)
    # Dates as the JSON routes take them: YYYY-MM-DD within the calendar's years (a date beyond
    # them has no instant to show).
    start = _tokyo_midnight(_calendar_date.validate_python(fields.get("from", "")))
    end = _tokyo_midnight(_calendar_date.validate_python(fields.get("to", "")))
    if end <= start:
        raise ValueError("to must be after from")
    return draft, start, end


def _cumulative(by_day: Mapping[str, Mapping[str, int]], campaign_id: str) -> list[tuple[str, int]]:
    total, out = 0, []
    for day in sorted(by_day):
        total += by_day[day].get(campaign_id, 0)
        out.append((day, total))
    return out


def _comparison_chart(draft: list[tuple[str, int]], live: list[tuple[str, int]]) -> dict[str, Any]:
    """Two cumulative lines (the draft's and the live campaign's net points) in a 640×240 box."""
    width, height, left, top_pad, bottom = 640, 240, 56, 8, 28
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    days = sorted({d for d, _ in draft} | {d for d, _ in live})
    top = max([1, *(v for _, v in draft), *(v for _, v in live)])
    step = plot_w / max(len(days), 1)
    x_of = {d: left + (i + 1) * step for i, d in enumerate(days)}

    def line(series: list[tuple[str, int]]) -> str:
        # From nothing at the window's start, so a window of one day is a line too.
        points = [f"{left},{top_pad + plot_h}"]
        points += [f"{round(x_of[d], 1)},{round(top_pad + plot_h - v / top * plot_h, 1)}" for d, v in series]
        return " ".join(points) if series else ""

    return {
        "width": width,
        "height": height,
        "left": left,
        "base": top_pad + plot_h,
        "right": width - 8,
        "top": top,
        "draft": line(draft),
        "live": line(live),
    }


@router.get("/ui/campaigns/{campaign_id}/simulate", **_HTML)  # type: ignore[arg-type]
async def ui_simulate_form(request: Request, campaign_id: PathId, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, "finance", "admin")
        try:
            campaign = s.config.get_campaign(campaign_id)
        except EngineError as error:
            return _store_error(request, who, error)
        today = dt.datetime.fromtimestamp(s.clock.now_us() / 1e6, TOKYO).date()
        context = {"campaign": campaign, "fields": _draft_fields(campaign, today), "result": None, "invalid": None}
        return _page(request, "simulate.html", context, who)

    return await _in_thread(request, build)


@router.post("/ui/campaigns/{campaign_id}/simulate", **_HTML)  # type: ignore[arg-type]
async def ui_simulate(request: Request, campaign_id: PathId, s: ServicesDep) -> Response:
    """The draft (the live campaign with the form's rates, caps and budget) rated over the window
    by `engine.store.simulate`, as `POST /v1/campaigns/{id}/simulate` does, beside the live
    campaign rated over the same window. Nothing is written."""

    def build() -> Response:
        who = _signed_in(request, s, "finance", "admin")
        fields = _checked_form(request)
        try:
            campaign = s.config.get_campaign(campaign_id)
        except EngineError as error:
            return _store_error(request, who, error)
        context: dict[str, Any] = {"campaign": campaign, "fields": fields, "result": None, "invalid": None}
        try:
            draft, start, end = _draft(campaign, fields)
        except (ValueError, ValidationError) as error:
            context["invalid"] = str(error).splitlines()[0]
            return _page(request, "simulate.html", context, who, status=422)
        result = simulate.simulate(s.engine, draft, start, end)
        live = simulate.simulate(s.engine, campaign, start, end)
        empty = {"awards": 0, "points_awarded": 0, "points_clawed_back": 0, "points_net": 0}
        context["result"] = {
            "draft": result["by_campaign"].get(campaign_id, empty),
            "live": live["by_campaign"].get(campaign_id, empty),
            "draft_exhausted_at": result["budget_exhausted_at"],
            "live_exhausted_at": live["budget_exhausted_at"],
            "transactions": result["transactions"],
            "chart": _comparison_chart(
                _cumulative(result["by_day"], campaign_id), _cumulative(live["by_day"], campaign_id)
            ),
        }
        return _page(request, "simulate.html", context, who)

    return await _in_thread(request, build)


@router.get("/ui/settlement-runs", **_HTML)  # type: ignore[arg-type]
async def ui_settlement_runs(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, "finance")
        return _page(request, "settlement_runs.html", {"runs": settlement.list_runs(s.ledger)}, who)

    return await _in_thread(request, build)


@router.post("/ui/settlement-runs", **_HTML)  # type: ignore[arg-type]
async def ui_create_settlement_run(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, "finance")
        fields = _checked_form(request)
        period = fields.get("period", "").strip() or None
        try:
            _created, view = settlement.run(s.ledger, s.config, s.settings, period, actor=who)
        except EngineError as error:
            return _store_error(request, who, error)
        return RedirectResponse(f"/ui/settlement-runs/{view['id']}", status_code=303)

    return await _in_thread(request, build)


@router.get("/ui/settlement-runs/{run_id}", **_HTML)  # type: ignore[arg-type]
async def ui_settlement_run(request: Request, run_id: PathId, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, "finance")
        try:
            view = settlement.get_view(s.ledger, run_id)
        except EngineError as error:
            return _store_error(request, who, error)
        context = {
            "run": view,
            "lines": view["statement"]["document"]["lines"],
            "verified": _verified(s, view["statement"]),
        }
        return _page(request, "settlement_run.html", context, who)

    return await _in_thread(request, build)


def _verified(s: Services, statement: dict[str, Any]) -> bool:
    """Whether a run's signed statement verifies with the ward's signing key (as reconciliation checks)."""
    public_key = keyring.signing_public_key(s.settings)
    return public_key is not None and signing.verify_document(public_key, statement)


@router.post("/ui/settlement-runs/{run_id}/payout-results", **_HTML)  # type: ignore[arg-type]
async def ui_payout_results(request: Request, run_id: PathId, s: ServicesDep) -> Response:
    """The bank's answer for a run's transfers, one `MERCHANT_ID paid|failed [AMOUNT]` a line,
    imported as `POST /v1/settlement-runs/{id}/payout-results` does (the amount, when given, must
    be the run's payout to that merchant)."""

    def build() -> Response:
        who = _signed_in(request, s, "finance")
        fields = _checked_form(request)
        results = []
        for line in fields.get("results", "").splitlines():
            words = line.replace(",", " ").split()
            if not words:
                continue
            if len(words) not in (2, 3) or words[1] not in ("paid", "failed"):
                return _error(request, who, 422, "invalid_request")
            result: dict[str, Any] = {"merchant_id": words[0], "status": words[1]}
            if len(words) == 3:
                if not (words[2].isascii() and words[2].isdigit() and len(words[2]) <= 15 and int(words[2]) > 0):
                    return _error(request, who, 422, "invalid_request")
                result["amount"] = int(words[2])
            results.append(result)
        if not results:
            return _error(request, who, 422, "invalid_request")
        try:
            settlement.import_payout_results(s.ledger, run_id, results, actor=who)
        except EngineError as error:
            return _store_error(request, who, error)
        return RedirectResponse(f"/ui/settlement-runs/{run_id}", status_code=303)

    return await _in_thread(request, build)


_DOWNLOADS = {
    "statement.csv": "text/csv; charset=utf-8",
    "statement.json": "application/json",
    "zengin": "application/octet-stream",
}


@router.get("/ui/settlement-runs/{run_id}/{download}", **_HTML)  # type: ignore[arg-type]
async def ui_settlement_download(request: Request, run_id: PathId, download: str, s: ServicesDep) -> Response:
    """A run's statement (CSV, or the signed JSON) or its Zengin payout file, as the API gives them."""

    def build() -> Response:
        who = _signed_in(request, s, "finance")
        if download not in _DOWNLOADS:
            return _error(request, who, 404, "not_found")
        try:
            row = settlement.get(s.ledger, run_id)
        except EngineError as error:
            return _store_error(request, who, error)
        body: str | bytes = {"statement.csv": row.csv_text, "statement.json": row.statement_json}.get(
            download, b""
        ) or (settlement.payout_file(s.settings, row) if download == "zengin" else b"")
        if not body:
            return _error(request, who, 404, "not_found")  # a run that pays nobody has no payout file
        name = f"{run_id}.zengin.txt" if download == "zengin" else f"{run_id}.{download}"
        return _attachment(body, _DOWNLOADS[download], name)

    return await _in_thread(request, build)


_PROGRESS_MARK, _REPORT_MARK = "<!--progress-->", "<!--report-->"
_PROGRESS_STEPS = 20  # a progress line every 5% of the payments re-rated


@router.get("/ui/reconciliation", **_HTML)  # type: ignore[arg-type]
async def ui_reconciliation(request: Request, s: ServicesDep) -> Response:
    """The form; with `?run=1` the reconciliation itself, streamed: the page's head at once, a
    progress line as the re-rate advances (every 5% of the payments, as `setapay reconcile`
    counts them), then every check's result. No script: each progress line hides the one before
    it by CSS."""

    def build() -> Response:
        who = _signed_in(request, s, "finance")
        if request.query_params.get("run") != "1":
            return _page(request, "reconciliation.html", {"running": False}, who)
        html, set_cookies = _rendered(request, "reconciliation.html", {"running": True}, who)
        head, rest = html.split(_PROGRESS_MARK, 1)
        middle, tail = rest.split(_REPORT_MARK, 1)
        # Before the first byte, so a failure here is a plain error page: the database's one
        # reconciliation slot (another run's 409 `reconciliation_in_progress`), held by the run's
        # thread from here until it ends, whether or not the browser stays.
        slot = contextlib.ExitStack()
        try:
            slot.enter_context(finance.reconciliation_slot(s.ledger, wait=False))
        except EngineError as error:
            return _store_error(request, who, error)
        try:
            total = finance.payment_count(s.ledger)
            updates = _start_reconciliation(s, total, slot)
        except BaseException:
            slot.close()
            raise
        chunks = _reconciliation_chunks(_language(request), total, updates, (head, middle, tail))
        response = StreamingResponse(chunks, media_type="text/html; charset=utf-8")
        set_cookies(response)
        return response

    return await _in_thread(request, build)


def _start_reconciliation(s: Services, total: int, slot: contextlib.ExitStack) -> queue.Queue[tuple[str, Any]]:
    """Run `finance.reconcile` in a thread of its own, in the `slot` the caller took (let go when
    it ends); its progress (of `total` payments) and then its report come through the queue."""
    every = max(1, total // _PROGRESS_STEPS)
    updates: queue.Queue[tuple[str, Any]] = queue.Queue()
    counted = {"done": 0, "shown": 0}

    def progress(n: int) -> None:
        counted["done"] += n
        if counted["done"] - counted["shown"] >= every or counted["done"] >= total:
            counted["shown"] = counted["done"]
            updates.put(("progress", counted["done"]))

    def work() -> None:
        with slot:
            try:
                report = finance.reconcile(s.ledger, s.settings, progress=progress, slot_held=True)
            except Exception:  # the page says it stopped; the log has why
                _LOG.exception("the reconciliation of /ui/reconciliation stopped")
                report = None
        updates.put(("report", report))

    threading.Thread(target=work, name="ui-reconciliation", daemon=True).start()
    return updates


def _reconciliation_chunks(
    language: str, total: int, updates: queue.Queue[tuple[str, Any]], page: tuple[str, str, str]
) -> Iterator[str]:
    """The streamed page: its head, a progress line per update, then the report (Starlette reads
    this iterator in a worker thread)."""
    head, middle, tail = page

    def step(done: int) -> str:
        return ui.render(language, "_reconciliation_progress.html", {"done": min(done, total), "total": total})

    yield head
    yield step(0)
    while True:
        kind, value = updates.get()
        if kind == "progress":
            yield step(value)
            continue
        yield middle
        yield ui.render(language, "_reconciliation_report.html", {"report": value})
        yield tail
        return


@router.get("/ui/audit", **_HTML)  # type: ignore[arg-type]
async def ui_audit(request: Request, s: ServicesDep) -> Response:
    """The audit log in sequence order, a page at a time, as `GET /v1/audit` lists it: who did what
    to which target, when (the recorded before and after values stay in the API's answer)."""

    def build() -> Response:
        who = _signed_in(request, s, "finance", "admin")
        cursor = request.query_params.get("cursor") or None
        try:
            after = decode_cursor(_AUDIT_CURSOR_PREFIX, cursor)
        except EngineError:
            return _error(request, who, 422, "invalid_request")
        page, last = audit.entries(s.engine, None, None, None, after, _PAGE_SIZE)
        context = {
            "entries": page,
            "next_cursor": encode_cursor(_AUDIT_CURSOR_PREFIX, last) if last is not None else None,
            "first_page": cursor is None,
        }
        return _page(request, "audit.html", context, who)

    return await _in_thread(request, build)


@router.get("/ui/grants", **_HTML)  # type: ignore[arg-type]
async def ui_grant_form(request: Request, s: ServicesDep) -> Response:
    def build() -> Response:
        who = _signed_in(request, s, "finance")
        return _page(request, "grants.html", _grant_context(s, {}, None), who)

    return await _in_thread(request, build)


def _grant_context(s: Services, fields: Mapping[str, str], outcome: dict[str, Any] | None) -> dict[str, Any]:
    # A fresh idempotency key with every form: sending the same form twice grants once.
    return {
        # Points are granted against the ward's funds only, not a merchant's (`lifecycle.grant`).
        "campaigns": [c for c in s.config.list_campaigns() if c.funding_merchant is None],
        "fields": fields,
        "outcome": outcome,
        "idempotency_key": uuid.uuid4().hex,
    }


# Full-width digits and the ideographic space, as a Japanese input method types them, to ASCII.
_FULL_WIDTH = str.maketrans("０１２３４５６７８９\u3000", "0123456789 ")


def _number_typed(typed: str) -> int:
    """A number (points, a rate, a cap) as typed into a form: full-width digits read as their ASCII
    forms and surrounding spaces (the ideographic one too) left out; then decimal digits only, as a query's numbers
    (`api.strict.decimal_digits`): '1_000', '+5', '2.0', '10²', '①⓪⓪' and other scripts' digits
    are refused (`ValueError`: the page's 422), not read as Python's `int` or NFKC would read them."""
    return int(decimal_digits(typed.translate(_FULL_WIDTH).strip()))


@router.post("/ui/grants", **_HTML)  # type: ignore[arg-type]
async def ui_grant(request: Request, s: ServicesDep) -> Response:
    """Points granted to a wallet against a campaign's budget, as `POST /v1/grants` does (the form
    carries its idempotency key, so a form sent twice grants once)."""

    def build() -> Response:
        who = _signed_in(request, s, "finance")
        fields = _checked_form(request)
        try:
            body = GrantRequest.model_validate(
                {
                    "wallet_id": fields.get("wallet_id", ""),
                    "campaign_id": fields.get("campaign_id", ""),
                    "points": _number_typed(fields.get("points", "")),
                    "reason": fields.get("reason", ""),
                }
            )
        except (ValueError, ValidationError):
            outcome = {"status": 422, "code": "invalid_request"}
            return _page(request, "grants.html", _grant_context(s, fields, outcome), who, status=422)
        scope = f"finance:{who.key_id}"
        try:
            key = check_idempotency_key(fields.get("idempotency_key"))
            result = lifecycle.grant(
                s.ledger, scope, key, body.wallet_id, body.campaign_id, body.points, body.reason, actor=who
            )
        except EngineError as error:
            return _store_error(request, who, error)
        outcome = {"status": result.status, "code": result.body.get("code"), "body": result.body}
        return _page(request, "grants.html", _grant_context(s, fields, outcome), who, status=result.status)

    return await _in_thread(request, build)
