"""Everything that posts goes through the ledger's public unit of work (STYLE: private names).

`engine/store/ledger.py` offers `Ledger.unit_of_work()` (the sequencer lock, a
`CatalogSnapshot`, a `PostingWriter`) and `Ledger.read_view()`; its private
names (`_lock_head`, `_catalog_snapshot`, the writer's row buffers, …) are its
own business. This test walks every module of the project and fails on one
that imports a private name of the ledger module or reaches a private member of
its classes, so a caller cannot come to depend on how the unit of work is built
inside (a columnar writer is to replace the row writer behind the same calls).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "engine" / "store" / "ledger.py"
SCANNED = ["engine", "api", "tests", "bench", "loadtests"]
LEDGER_MODULE = "engine.store.ledger"


def _private(name: str) -> bool:
    return len(name) > 1 and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(body: list[ast.stmt]) -> set[str]:
    """Names a module or class body binds: functions, classes, assignments."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name))
    return names


def private_names(source: str) -> set[str]:
    """The ledger module's private names: its own, its classes' members and the attributes they set."""
    tree = ast.parse(source)
    names = _defined(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names |= _defined(node.body)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {name for name in names if _private(name)}


def _module_of(path: Path, node: ast.ImportFrom, root: Path) -> str:
    if node.level == 0:
        return node.module or ""
    package = list(path.relative_to(root).parts[:-1])
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def uses(path: Path, private: set[str], root: Path = ROOT) -> list[str]:
    """Where `path` imports a private name of the ledger module or reads one off an object
    (`x._lock_head`, `getattr(x, "_catalog")`); an object's own privates (`self._x`) are its own."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and _module_of(path, node, root) == LEDGER_MODULE:
            found += [f"{node.lineno}: imports {a.name}" for a in node.names if _private(a.name)]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in private
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            found.append(f"{node.lineno}: {node.func.id}(…, {node.args[1].value!r})")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def scanned_modules() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py") if p != LEDGER)


def test_no_module_uses_a_private_name_of_the_ledger():
    private = private_names(LEDGER.read_text(encoding="utf-8"))
    # The names the unit of work replaced, among others: the test sees them.
    assert {"_locked_head", "_catalog_snapshot", "_head", "_catalog"} <= private
    offenders = {
        path.relative_to(ROOT).as_posix(): found for path in scanned_modules() if (found := uses(path, private))
    }
    assert not offenders, f"private names of {LEDGER_MODULE} used outside it: {offenders}"


def test_the_scan_sees_every_kind_of_use(tmp_path: Path):
    ledger = (
        "class Ledger:\n"
        "    def _lock_head(self): ...\n"
        "    def post(self):\n"
        "        self._catalog = 1\n"
        "        _local = 0\n"
        "_order = 2\n"
    )
    private = private_names(ledger)
    assert private == {"_lock_head", "_catalog", "_order"}
    package = tmp_path / "engine" / "store"
    package.mkdir(parents=True)
    module = package / "caller.py"
    module.write_text(
        "from engine.store.ledger import Ledger, _GroupWriter\n"
        "from .ledger import _order\n"
        "from engine.store.books import _private_of_books\n"
        "def run(ledger):\n"
        "    ledger._lock_head(None)\n"
        "    Ledger._lock_head(None)\n"
        "    getattr(ledger, '_catalog')\n"
        "    self._catalog = ledger.unit_of_work()\n",
        encoding="utf-8",
    )
    assert uses(module, private, root=tmp_path) == [
        "1: imports _GroupWriter",
        "2: imports _order",
        "5: ._lock_head",
        "6: ._lock_head",
        "7: getattr(…, '_catalog')",
    ]
