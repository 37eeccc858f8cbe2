"""The pages under `/ui/` (issue 13): merchants read their rewards, ward finance its campaigns,
settlement runs and reconciliation. Server-rendered HTML, left out of the OpenAPI document.

Sign-in takes a merchant, finance or admin key once (`POST /ui/login`) and answers a session
cookie (api/ui); every page then looks the key up again, so a revoked or expired key ends the
session at once. Without a session a page redirects (303) to the sign-in form; a page of
another role, or a merchant page of another merchant, answers 403. Every figure comes from the
same store functions as the JSON routes (engine/store/queries.py, finance.py, settlement.py).
"""

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api import ui
from api.access_log import PRINCIPAL_STATE
from api.deps import Services, ServicesDep
from api.strict import Cursor, PathId, decode_cursor, encode_cursor
from engine.errors import EngineError
from engine.store import finance, queries, settlement
from engine.store.config import Principal
from engine.store.keys import hash_key
from engine.timeutil import TOKYO, to_us

router = APIRouter()

_CURSOR_PREFIX = "seq"  # as the JSON route's cursor: a merchant's transactions by payment sequence
_PAGE_SIZE = 25
_HTML = {"response_class": HTMLResponse, "include_in_schema": False}


def _signer(request: Request) -> ui.Signer:
    signer: ui.Signer | None = getattr(request.app.state, "ui_signer", None)
    if signer is None:
        signer = ui.Signer(request.app.state.services.settings.ui_session_secret)
        request.app.state.ui_signer = signer
    return signer


def _language(request: Request) -> str:
    wanted = request.query_params.get("lang") or request.cookies.get(ui.LANGUAGE_COOKIE)
    return wanted if wanted in ui.LANGUAGES else ui.DEFAULT_LANGUAGE


def _set_cookie(response: Response, name: str, value: str, max_age: int | None = ui.SESSION_MAX_AGE_S) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/ui", httponly=True, samesite="strict")


def _page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    who: Principal | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The page rendered in the caller's language, with the CSRF token its forms carry."""
    language = _language(request)
    signer = _signer(request)
    token = signer.csrf_token(request.cookies.get(ui.CSRF_COOKIE))
    fresh_cookie = None
    if token is None:
        token, fresh_cookie = signer.csrf_cookie()
    html = ui.render(
        language,
        template,
        {"who": who, "csrf": token, "path": request.url.path, "home": ui.home_path(who) if who else None, **context},
    )
    response = HTMLResponse(html, status_code=status)
    if fresh_cookie is not None:
        _set_cookie(response, ui.CSRF_COOKIE, fresh_cookie)
    if request.query_params.get("lang") in ui.LANGUAGES:
        _set_cookie(response, ui.LANGUAGE_COOKIE, language, max_age=365 * 86_400)
    return response


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


async def _signed_in(request: Request, s: Services, *roles: str) -> Principal:
    """The session's key as the key store says now; a redirect to sign-in or a 403 page otherwise."""
    session = _signer(request).session(request.cookies.get(ui.SESSION_COOKIE))
    if session is None:
        raise _Refused(_to_sign_in())
    found = await anyio.to_thread.run_sync(s.keys.lookup, session.digest)
    if (
        found is None
        or (found.expires_at_us is not None and found.expires_at_us <= s.clock.now_us())
        or found.principal.role not in ui.UI_ROLES
    ):
        raise _Refused(_to_sign_in())
    who = found.principal
    setattr(request.state, PRINCIPAL_STATE, who)  # for the access log's key id and role
    if roles and who.role not in roles:
        raise _Refused(_error(request, who, 403, "forbidden_role"))
    return who


def _merchant_scope(request: Request, who: Principal, merchant_id: str) -> None:
    if who.role == "merchant" and who.merchant_id != merchant_id:
        raise _Refused(_error(request, who, 403, "forbidden_merchant"))


async def _checked_form(request: Request) -> dict[str, str]:
    """The posted form, once its CSRF token equals the one of the caller's CSRF cookie."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    expected = _signer(request).csrf_token(request.cookies.get(ui.CSRF_COOKIE))
    if expected is None or fields.get("csrf") != expected:
        raise _Refused(_error(request, None, 403, "csrf"))
    return fields


async def _guarded(request: Request, build: Callable[[], Any]) -> Response:
    try:
        answer: Response = await build()
    except _Refused as refused:
        return refused.response
    return answer


def _store_error(request: Request, who: Principal, error: EngineError) -> HTMLResponse:
    status = 404 if error.code == "not_found" else 409 if error.code.startswith("period_") else 422
    return _page(request, "error.html", {"status": status, "message": error.code, "detail": error.detail}, who, status)


# -- sign-in ---------------------------------------------------------------------------


@router.get("/ui/", **_HTML)  # type: ignore[arg-type]
async def ui_root(request: Request, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s)
        return RedirectResponse(ui.home_path(who), status_code=303)

    return await _guarded(request, build)


@router.get("/ui/login", **_HTML)  # type: ignore[arg-type]
async def ui_login_form(request: Request) -> Response:
    return _page(request, "login.html", {"failed": False})


@router.post("/ui/login", **_HTML)  # type: ignore[arg-type]
async def ui_login(request: Request, s: ServicesDep) -> Response:
    async def build() -> Response:
        fields = await _checked_form(request)
        secret = fields.get("key", "").strip()
        address = request.client.host if request.client else "unknown"
        try:
            who = await s.auth.authenticate(secret, address)
        except EngineError as refused:
            status = 429 if refused.code == "rate_limited" else 401
            return _page(request, "login.html", {"failed": True}, status=status)
        if who.role not in ui.UI_ROLES:
            return _page(request, "login.html", {"failed": True}, status=403)
        response = RedirectResponse(ui.home_path(who), status_code=303)
        _set_cookie(response, ui.SESSION_COOKIE, _signer(request).session_cookie(hash_key(secret)))
        return response

    return await _guarded(request, build)


@router.post("/ui/logout", **_HTML)  # type: ignore[arg-type]
async def ui_logout(request: Request) -> Response:
    async def build() -> Response:
        await _checked_form(request)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(ui.SESSION_COOKIE, path="/ui")
        return response

    return await _guarded(request, build)


# -- merchant pages --------------------------------------------------------------------


def _tokyo_midnight(day: dt.date) -> int:
    return to_us(dt.datetime.combine(day, dt.time(), tzinfo=TOKYO))


@router.get("/ui/merchants/{merchant_id}", **_HTML)  # type: ignore[arg-type]
async def ui_merchant_home(request: Request, merchant_id: PathId, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "merchant", "finance", "admin")
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

    return await _guarded(request, build)


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, TOKYO).isoformat()


@router.get("/ui/merchants/{merchant_id}/transactions", **_HTML)  # type: ignore[arg-type]
async def ui_merchant_transactions(
    request: Request,
    merchant_id: PathId,
    s: ServicesDep,
    cursor: Cursor = None,
) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "merchant", "finance", "admin")
        _merchant_scope(request, who, merchant_id)
        try:
            after = decode_cursor(_CURSOR_PREFIX, cursor)
        except EngineError as error:
            return _store_error(request, who, error)
        page, last = queries.merchant_transactions(s.engine, merchant_id, None, None, after, _PAGE_SIZE)
        context = {
            "merchant_id": merchant_id,
            "transactions": page,
            "next_cursor": encode_cursor(_CURSOR_PREFIX, last) if last is not None else None,
            "first_page": cursor is None,
        }
        return _page(request, "merchant_transactions.html", context, who)

    return await _guarded(request, build)


# -- finance pages ---------------------------------------------------------------------


@router.get("/ui/campaigns", **_HTML)  # type: ignore[arg-type]
async def ui_campaigns(request: Request, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "finance", "admin")
        rows = []
        for campaign in s.config.list_campaigns():
            rows.append({"campaign": campaign, "budget": finance.budget(s.ledger, campaign.id)})
        return _page(request, "campaigns.html", {"rows": rows}, who)

    return await _guarded(request, build)


@router.get("/ui/campaigns/{campaign_id}", **_HTML)  # type: ignore[arg-type]
async def ui_campaign(request: Request, campaign_id: PathId, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "finance", "admin")
        try:
            campaign = s.config.get_campaign(campaign_id)
            budget = finance.budget(s.ledger, campaign_id)
        except EngineError as error:
            return _store_error(request, who, error)
        days = finance.burn_by_day(s.ledger, campaign_id)
        context = {"campaign": campaign, "budget": budget, "days": days, "chart": _burn_chart(days, budget)}
        return _page(request, "campaign.html", context, who)

    return await _guarded(request, build)


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


@router.get("/ui/settlement-runs", **_HTML)  # type: ignore[arg-type]
async def ui_settlement_runs(request: Request, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "finance")
        return _page(request, "settlement_runs.html", {"runs": settlement.list_runs(s.ledger)}, who)

    return await _guarded(request, build)


@router.post("/ui/settlement-runs", **_HTML)  # type: ignore[arg-type]
async def ui_create_settlement_run(request: Request, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "finance")
        fields = await _checked_form(request)
        period = fields.get("period", "").strip() or None
        try:
            _created, view = settlement.run(s.ledger, s.config, s.settings, period, actor=who)
        except EngineError as error:
            return _store_error(request, who, error)
        return RedirectResponse(f"/ui/settlement-runs/{view['id']}", status_code=303)

    return await _guarded(request, build)


@router.get("/ui/settlement-runs/{run_id}", **_HTML)  # type: ignore[arg-type]
async def ui_settlement_run(request: Request, run_id: PathId, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "finance")
        try:
            view = settlement.get_view(s.ledger, run_id)
        except EngineError as error:
            return _store_error(request, who, error)
        return _page(request, "settlement_run.html", {"run": view}, who)

    return await _guarded(request, build)


@router.get("/ui/reconciliation", **_HTML)  # type: ignore[arg-type]
async def ui_reconciliation(request: Request, s: ServicesDep) -> Response:
    async def build() -> Response:
        who = await _signed_in(request, s, "finance")
        report = None
        if request.query_params.get("run") == "1":
            report = finance.reconcile(s.ledger, s.settings)
        return _page(request, "reconciliation.html", {"report": report}, who)

    return await _guarded(request, build)
