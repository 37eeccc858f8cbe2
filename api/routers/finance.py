"""Ward finance endpoints: point grants, budget burn, settlement runs and payout results,
terminal closeouts, signed chain heads and the reconciliation report (SPEC §6, §7)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from api import responses
from api.deps import ConfigDep, Finance, LedgerDep, SettingsDep, Terminal
from api.errors import guarded
from api.idempotency import check_idempotency_key, render
from api.openapi import AUTHENTICATED, TERMINAL, idempotent, problems, remembered, terminal_headers
from api.strict import PathId
from engine import limits
from engine.errors import EngineError
from engine.model import CalendarDate, Id, Label, Record
from engine.store import finance, lifecycle, settlement

router = APIRouter()


class GrantRequest(Record):
    wallet_id: Id
    campaign_id: Id
    points: Annotated[int, Field(strict=True, ge=1, le=limits.POINTS_MAX)]
    reason: Label


class SettlementRequest(Record):
    # Omitted: the last closed period of the configured kind (SETAPAY_SETTLEMENT_PERIOD). Its year
    # is checked against limits.CALENDAR_YEAR_MIN/MAX by `statement.parse_period` (422), before any lock.
    period: Annotated[str, Field(strict=True, pattern=r"^[0-9]{4}-[0-9]{2}(-H[12])?$")] | None = None


class PayoutResult(Record):
    """One transfer's result as the bank answered it. `amount`, when given (the bank's result
    record carries it), must be the run's payout to that merchant: a result for another run's
    transfer (the next month's file imported against this run) is refused, 409
    `payout_amount_mismatch`, and nothing of the request is applied."""

    merchant_id: Id
    status: Literal["paid", "failed"]
    amount: Annotated[int, Field(strict=True, ge=1, le=limits.AMOUNT_YEN_MAX * 10_000_000)] | None = None


class PayoutResults(Record):
    results: Annotated[list[PayoutResult], Field(min_length=1, max_length=100_000)]


class CloseoutRequest(Record):
    business_date: CalendarDate  # a YYYY-MM-DD string (never a number), years within the calendar limits
    count: Annotated[int, Field(strict=True, ge=0, le=10_000_000)]
    total: Annotated[
        int, Field(strict=True, ge=-limits.AMOUNT_YEN_MAX * 10_000_000, le=limits.AMOUNT_YEN_MAX * 10_000_000)
    ]


@router.post(
    "/v1/grants",
    status_code=201,
    openapi_extra=idempotent(),
    responses={
        201: {"model": responses.GrantAnswer, "headers": responses.REPLAYED_HEADER},
        **remembered(
            problems(
                AUTHENTICATED,
                "idempotency_key_missing",
                "idempotency_key_invalid",
                "idempotency_key_reused",
                "invalid_request",
                "not_found",
                "campaign_merchant_funded",
                "budget_exceeded",
            ),
            "budget_exceeded",
        ),
    },
)
def post_grant(
    body: GrantRequest,
    p: Finance,
    ledger: LedgerDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
) -> Response:
    key = check_idempotency_key(idempotency_key)
    result = guarded(
        lambda: lifecycle.grant(
            ledger, f"finance:{p.key_id}", key, body.wallet_id, body.campaign_id, body.points, body.reason, actor=p
        )
    )
    return render(result)


@router.get(
    "/v1/campaigns/{campaign_id}/budget",
    responses={200: {"model": responses.CampaignBudget}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def campaign_budget(campaign_id: PathId, _: Finance, ledger: LedgerDep) -> dict[str, Any]:
    return finance.budget(ledger, campaign_id)


@router.post(
    "/v1/settlement-runs",
    status_code=201,
    responses={
        201: {"model": responses.SettlementRun, "description": "The run, settled now"},
        200: {
            "model": responses.SettlementRun,
            "description": "The period was settled already by this run: the same run",
        },
        **problems(AUTHENTICATED, "invalid_request", "period_open", "period_overlaps", "period_out_of_order"),
    },
)
def create_settlement_run(
    body: SettlementRequest, p: Finance, ledger: LedgerDep, config: ConfigDep, settings: SettingsDep
) -> JSONResponse:
    created, view = settlement.run(ledger, config, settings, body.period, actor=p)
    return JSONResponse(view, status_code=201 if created else 200)


@router.get(
    "/v1/settlement-runs/{run_id}",
    responses={200: {"model": responses.SettlementRun}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def get_settlement_run(run_id: PathId, _: Finance, ledger: LedgerDep) -> dict[str, Any]:
    return settlement.get_view(ledger, run_id)


@router.get(
    "/v1/settlement-runs/{run_id}/statement.csv",
    response_class=Response,
    responses={
        200: {
            "description": "The run's statement",
            "content": {"text/csv; charset=utf-8": {"schema": {"type": "string"}}},
        },
        **problems(AUTHENTICATED, "invalid_request", "not_found"),
    },
)
def settlement_csv(run_id: PathId, _: Finance, ledger: LedgerDep) -> Response:
    return Response(settlement.get(ledger, run_id).csv_text, media_type="text/csv; charset=utf-8")


@router.get(
    "/v1/settlement-runs/{run_id}/zengin",
    response_class=Response,
    responses={
        200: {
            "description": "The run's Zengin payout file",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problems(AUTHENTICATED, "invalid_request", "not_found"),
    },
)
def settlement_zengin(run_id: PathId, _: Finance, ledger: LedgerDep, settings: SettingsDep) -> Response:
    row = settlement.get(ledger, run_id)
    if not row.zengin_file:
        raise EngineError("not_found", "this run pays nobody, so it has no payout file")
    return Response(
        settlement.payout_file(settings, row),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{run_id}.zengin.txt"'},
    )


@router.post(
    "/v1/settlement-runs/{run_id}/payout-results",
    responses={
        200: {"model": responses.PayoutResultsAnswer},
        **problems(AUTHENTICATED, "invalid_request", "not_found", "payout_already_settled", "payout_amount_mismatch"),
    },
    response_model=None,
)
def payout_results(run_id: PathId, body: PayoutResults, p: Finance, ledger: LedgerDep) -> dict[str, Any]:
    results = [r.model_dump(exclude_none=True) for r in body.results]
    return settlement.import_payout_results(ledger, run_id, results, actor=p)


@router.post(
    "/v1/chain-heads",
    status_code=201,
    responses={201: {"model": responses.SignedChainHeads}, **problems(AUTHENTICATED)},
    response_model=None,
)
def sign_chain_heads(_: Finance, ledger: LedgerDep, settings: SettingsDep) -> dict[str, list[str]]:
    return {"signed": finance.sign_chain_heads(ledger, settings)}


@router.get(
    "/v1/reconciliation",
    responses={200: {"model": responses.Reconciliation}, **problems(AUTHENTICATED, "reconciliation_in_progress")},
)
def reconciliation(_: Finance, ledger: LedgerDep, settings: SettingsDep) -> JSONResponse:
    """Every ledger and settlement invariant, with a full re-rate. One runs at a time per database:
    while another runs (in any API process, or `setapay reconcile`) the answer is 409
    `reconciliation_in_progress`."""
    report = finance.reconcile(ledger, settings)
    return JSONResponse(report, status_code=200)


@router.post(
    "/v1/terminals/{terminal_id}/closeouts",
    status_code=201,
    openapi_extra=terminal_headers(),
    responses={201: {"model": responses.CloseoutReport}, **problems(TERMINAL, "invalid_request", "not_found")},
    response_model=None,
)
def post_closeout(terminal_id: PathId, body: CloseoutRequest, p: Terminal, ledger: LedgerDep) -> dict[str, Any]:
    if p.terminal_id != terminal_id:
        raise EngineError("forbidden", "a terminal key closes out only its own terminal")
    return finance.closeout(ledger, terminal_id, body.business_date.isoformat(), body.count, body.total, actor=p)
