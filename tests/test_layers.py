"""The domain core never imports web, database or cache code (STYLE: Layers).

The core (engine/*.py and engine/rating/) is plain values in, plain values
out, so it can be tested, benchmarked and reused by the ledger and the API
without dragging their dependencies in. Storage adapters live in
engine/store/, which this test does not walk, and the API in api/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_DIRS = [ROOT / "engine", ROOT / "engine" / "rating"]
FORBIDDEN = {"fastapi", "starlette", "sqlalchemy", "psycopg", "psycopg2", "redis", "uvicorn", "alembic", "api"}


def core_modules() -> list[Path]:
    return sorted(path for directory in CORE_DIRS for path in directory.glob("*.py"))


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports, wherever in the module the import sits."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module",
            "__import__",
        ):
            # importlib.import_module("sqlalchemy") would hide the dependency from the checks above.
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def test_the_core_is_found():
    names = {path.relative_to(ROOT).as_posix() for path in core_modules()}
    assert {"engine/model.py", "engine/rating/__init__.py", "engine/rating/_kernel_py.py"} <= names
    assert not any(name.startswith("engine/store/") for name in names)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_module_imports_no_web_or_database_code(path: Path):
    assert not imported_roots(path) & FORBIDDEN, f"{path.relative_to(ROOT)} imports {imported_roots(path) & FORBIDDEN}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "def f():\n"
        "    import sqlalchemy.orm\n"
        "    from redis import Redis\n"
        "    importlib.import_module('fastapi.routing')\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert imported_roots(module) == {"os", "sqlalchemy", "redis", "fastapi"}
