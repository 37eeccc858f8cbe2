"""What routers are handed: the application's collaborators, the caller, and scope checks.

`create_app` builds one `Services` per application and keeps it in
`app.state.services`; handlers receive it (or one of its members) through the
dependencies below, never through a closure, so a router module holds no state.

Every `/v1` route names the roles it admits with `role(...)` (or an alias such as
`Admin`): the caller is authenticated by `principal` (`Auth.principal`, api/auth.py)
and refused 403 `forbidden` when its key has another role. Scope checks that need
the path (a merchant key reads only its own merchant) run in the handler, after
validation (`merchant_scope`).
"""

import dataclasses
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.engine import Engine

from api.access_log import PRINCIPAL_STATE
from api.auth import Auth
from api.idempotency import InFlight
from api.openapi import BEARER
from api.signatures import TerminalSignatures
from engine.errors import EngineError
from engine.settings import Settings
from engine.store.answer_cache import AnswerCache
from engine.store.apps import Apps
from engine.store.config import Config, Principal
from engine.store.group_commit import Committer
from engine.store.keys import Keys
from engine.store.ledger import Ledger
from engine.store.webhooks import Webhooks


class Clock(Protocol):
    def now_us(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class Services:
    """One application's collaborators, built by `create_app` from its settings."""

    settings: Settings
    clock: Clock
    engine: Engine  # SQLAlchemy's, for the read queries (engine/store/queries.py)
    ledger: Ledger
    config: Config
    apps: Apps
    keys: Keys
    committer: Committer
    answers: AnswerCache | None  # remembered answers in Redis, when SETAPAY_REDIS_URL is set
    signatures: TerminalSignatures
    auth: Auth
    in_flight: InFlight
    webhooks: Webhooks  # endpoints, deliveries and the delivery worker's steps (SPEC §10)


def request_services(request: Request) -> Services:
    services: Services = request.app.state.services  # set by api.app.create_app
    return services


async def services(request: Request) -> Services:
    return request_services(request)


ServicesDep = Annotated[Services, Depends(services)]


async def _ledger(s: ServicesDep) -> Ledger:
    return s.ledger


async def _config(s: ServicesDep) -> Config:
    return s.config


async def _settings(s: ServicesDep) -> Settings:
    return s.settings


async def _database(s: ServicesDep) -> Engine:
    return s.engine


async def _keys(s: ServicesDep) -> Keys:
    return s.keys


LedgerDep = Annotated[Ledger, Depends(_ledger)]
ConfigDep = Annotated[Config, Depends(_config)]
SettingsDep = Annotated[Settings, Depends(_settings)]
DatabaseDep = Annotated[Engine, Depends(_database)]  # SQLAlchemy's engine
KeysDep = Annotated[Keys, Depends(_keys)]


# -- the caller ------------------------------------------------------------

# Scope key: the caller `principal` authenticated by key for this request, set by it alone (the
# pages' session sets the access log's `PRINCIPAL_STATE`, never this: a cookie is not a key).
AUTHENTICATED = "setapay.authenticated"


async def principal(
    request: Request,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Principal:
    """The authenticated caller (api/auth.py). `BEARER` only documents the scheme in the
    OpenAPI (auto_error=False: it never answers); `Auth.principal` reads and checks the
    header, so every failure stays our own 401/429 problem+json. Once per request: a route that
    authenticated its caller before parsing the body (`strict.ParsedBodyRoute`) has it kept."""
    known: Principal | None = request.scope.get(AUTHENTICATED)
    if known is not None:
        return known
    caller = await request_services(request).auth.principal(request)
    request.scope[AUTHENTICATED] = caller
    setattr(request.state, PRINCIPAL_STATE, caller)  # for the access log's key id and role
    return caller


def role(*roles: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency admitting a key of one of `roles`, 403 `forbidden` for any other."""

    needed = " or ".join(roles)
    needed = f"{'an' if needed[0] in 'aeiou' else 'a'} {needed} key"

    async def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if p.role not in roles:
            raise EngineError("forbidden", f"this endpoint needs {needed}")
        return p

    check.roles = frozenset(roles)  # type: ignore[attr-defined]  # `strict.roles_of`: checked before a body is parsed
    return check


terminal_only = role("terminal")  # also called directly by the single post's short way (api/routers/transactions.py)

Admin = Annotated[Principal, Depends(role("admin"))]
Finance = Annotated[Principal, Depends(role("finance"))]
Terminal = Annotated[Principal, Depends(terminal_only)]


# -- scope checks ----------------------------------------------------------


def merchant_scope(p: Principal, merchant_id: str) -> None:
    """A merchant key reads only its own merchant (other roles the route admits read any)."""
    if p.role == "merchant" and p.merchant_id != merchant_id:
        raise EngineError("forbidden", "a merchant key reads only its own merchant")
