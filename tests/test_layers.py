"""The domain core never imports web, database or cache code (STYLE: Layers).

The core (engine/*.py and engine/rating/) is plain values in, plain values
out, so it can be tested, benchmarked and reused by the ledger and the API
without dragging their dependencies in. Storage adapters live in
engine/store/, which this test does not walk, the API in api/ and the demo's
HTTP driver in setapay_demo/; the core may not import those either.

The command-line modules are the one exception: `setapay serve` and
`setapay db` must reach uvicorn and the store. They may do so only inside the
command functions (or, for their annotations, under `if TYPE_CHECKING:`; `setapay
demo` reaches setapay_demo the same way), so
importing `engine.cli` (or running `setapay rate`) still loads nothing but
the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_DIRS = [ROOT / "engine", ROOT / "engine" / "rating"]
FORBIDDEN_ROOTS = {
    "fastapi",
    "starlette",
    "sqlalchemy",
    "psycopg",
    "psycopg2",
    "redis",
    "uvicorn",
    "alembic",
    "api",
    "setapay_demo",
}
FORBIDDEN_PACKAGES = ("engine.store", "migrations")
COMMAND_LINE = {"engine/cli.py", "engine/cli_ops.py"}


def core_modules() -> list[Path]:
    return sorted(path for directory in CORE_DIRS for path in directory.glob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(package: list[str], node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Imports(ast.NodeVisitor):
    """Dotted names a module imports; with `top_level_only`, not those inside functions."""

    def __init__(self, package: list[str], top_level_only: bool):
        self.package = package
        self.top_level_only = top_level_only
        self.names: set[str] = set()

    def visit_FunctionDef(self, node) -> None:
        if not self.top_level_only:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        # `if TYPE_CHECKING:` imports are for the type checker and never run.
        if self.top_level_only and _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = _absolute(self.package, node)
        self.names.add(module)
        # `from engine import store` imports the package engine.store.
        self.names.update(f"{module}.{alias.name}" for alias in node.names)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("sqlalchemy") would hide the dependency from the checks above.
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if (
            name in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self.names.add(node.args[0].value)
        self.generic_visit(node)


def imported(path: Path, top_level_only: bool = False, root: Path = ROOT) -> set[str]:
    """Absolute dotted names `path` imports; relative imports resolve against its package under `root`."""
    visitor = _Imports(list(path.relative_to(root).parts[:-1]), top_level_only)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return visitor.names


def forbidden(names: set[str]) -> set[str]:
    return {
        name
        for name in names
        if name.split(".")[0] in FORBIDDEN_ROOTS
        or any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PACKAGES)
    }


def test_the_core_is_found():
    names = {path.relative_to(ROOT).as_posix() for path in core_modules()}
    assert {"engine/model.py", "engine/rating/__init__.py", "engine/rating/_kernel_py.py"} <= names
    assert not any(name.startswith("engine/store/") for name in names)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_module_imports_no_web_or_database_code(path: Path):
    name = path.relative_to(ROOT).as_posix()
    bad = forbidden(imported(path, top_level_only=name in COMMAND_LINE))
    assert not bad, f"{name} imports {sorted(bad)}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path):
    package = tmp_path / "engine" / "rating"
    package.mkdir(parents=True)
    module = package / "m.py"
    module.write_text(
        "import os\n"
        "from engine import store\n"
        "from ..store.db import session\n"
        "def f():\n"
        "    import sqlalchemy.orm\n"
        "    from redis import Redis\n"
        "    importlib.import_module('fastapi.routing')\n"
        "if TYPE_CHECKING:\n"
        "    from engine.store.ledger import Ledger\n",
        encoding="utf-8",
    )
    everything = forbidden(imported(module, root=tmp_path))
    top_level = forbidden(imported(module, top_level_only=True, root=tmp_path))
    assert everything == {
        "engine.store",
        "engine.store.db",
        "engine.store.db.session",
        "sqlalchemy.orm",
        "redis",
        "redis.Redis",
        "fastapi.routing",
        "engine.store.ledger",
        "engine.store.ledger.Ledger",
    }
    assert top_level == {"engine.store", "engine.store.db", "engine.store.db.session"}


def test_the_server_does_not_carry_the_demo_driver():
    """The demo's HTTP driver lives in setapay_demo/, outside the server package, and api/ never imports it."""
    server = sorted((ROOT / "api").rglob("*.py"))
    assert not [p for p in server if p.stem == "demo"]
    for path in server:
        names = imported(path)
        assert not {n for n in names if n.split(".")[0] == "setapay_demo"}, path.relative_to(ROOT).as_posix()
