"""`create_app` serves every router of api/routers/, each route once, as the app's own route.

A router module left out of `api.app.ROUTERS` would serve nothing, and the authorization
matrix (which reads the app's routes) could not notice; this test does.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.routing import APIRoute

from api import app as app_module

ROUTERS_DIR = Path(app_module.__file__).resolve().parent / "routers"


def test_every_router_module_is_included() -> None:
    modules = {p.stem for p in ROUTERS_DIR.glob("*.py") if p.stem != "__init__"}
    included = {m.__name__.rsplit(".", 1)[1] for m in app_module.ROUTERS}
    assert modules == included
    assert len(app_module.ROUTERS) == len(included)


def test_the_app_serves_each_route_of_each_router_once(tmp_path) -> None:
    from engine.settings import Settings

    app = app_module.create_app(Settings(database_url=f"sqlite+pysqlite:///{tmp_path}/routes.db"), migrate=False)
    served = [(m, r.path, r.endpoint) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    declared = [
        (m, r.path, r.endpoint) for module in app_module.ROUTERS for r in module.router.routes for m in r.methods
    ]
    assert sorted(served, key=str) == sorted(declared, key=str)
    assert len({(m, p) for m, p, _ in served}) == len(served)
