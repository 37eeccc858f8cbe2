"""The compiled rating kernel is in use, exports the twin's names, and passes every vector.

Following yarl's pattern, a build whose compiled kernel silently failed to
load must not pass as green: `test_compiled_kernel_in_use` fails then,
unless SETAPAY_PURE_PYTHON=1 asked for the twin on purpose. Every vector of
../shared/vectors runs through each built engine, both one event at a time
(as a server accepts them) and as one batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine import rating, vectors
from engine.rating import _kernel_py

# SETAPAY_VECTORS_DIR when set (as the HTTP tests and `make test-vectors` read it), else ../shared/vectors.
VECTOR_DIR = Path(
    os.environ.get("SETAPAY_VECTORS_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
)
VECTOR_FILES = sorted(VECTOR_DIR.glob("*.json"))
PUBLIC_CONSTANTS = [
    "ENGINE",
    "KIND_PURCHASE",
    "KIND_REFUND",
    "STATUS_ACCEPTED",
    "STATUS_UNKNOWN_MERCHANT",
    "STATUS_ORIGINAL_NOT_FOUND",
    "STATUS_REFUND_EXCEEDS_ORIGINAL",
    "STATUS_INSUFFICIENT_POINTS",
    "CAPPED_NONE",
    "CAPPED_PER_TX",
    "CAPPED_WALLET",
    "CAPPED_BUDGET",
    "UNLIMITED",
    "CERT_ANY",
]


def _compiled():
    if "cython" not in rating.ENGINES:
        pytest.skip("the compiled kernel is not built (SETAPAY_PURE_PYTHON=1 run)")
    return rating.ENGINES["cython"]


def test_compiled_kernel_in_use() -> None:
    if rating.PURE_PYTHON_FORCED:
        assert rating.ENGINE == "python"
        assert rating._kernel is _kernel_py
    else:
        # Without the override, a missing or broken build is a failure, not a fallback.
        assert "cython" in rating.ENGINES, "engine.rating._kernel_c did not import; run pip install -e ."
        assert rating.ENGINE == "cython"
        assert rating._kernel is rating.ENGINES["cython"]


def test_kernel_exports_the_twins_names() -> None:
    kernel = _compiled()
    for name in PUBLIC_CONSTANTS[1:]:
        assert getattr(kernel, name) == getattr(_kernel_py, name), name
    assert kernel.ENGINE == "cython" and _kernel_py.ENGINE == "python"
    assert callable(kernel.rate_columns) and callable(kernel.share_target)


@pytest.mark.parametrize(
    ("share", "refunded", "amount"),
    [(0, 0, 1), (7, 3, 10), (7, 10, 10), (10_000_000_000, 9_999_999, 10_000_000), (1, 1, 3), (5, 0, 5)],
)
def test_share_target_matches_twin(share: int, refunded: int, amount: int) -> None:
    assert _compiled().share_target(share, refunded, amount) == _kernel_py.share_target(share, refunded, amount)


def test_vectors_are_present() -> None:
    assert VECTOR_FILES, f"no rating vectors under {VECTOR_DIR}"


@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.stem for p in VECTOR_FILES])
def test_vector_one_by_one(path: Path, engine_name: str) -> None:
    vector = vectors.load(path)
    assert vectors.differences(vector.expected, vectors.rate_file(vector, engine_name)) == []


@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.stem for p in VECTOR_FILES])
def test_vector_batched(path: Path, engine_name: str) -> None:
    vector = vectors.load(path)
    assert vectors.differences(vector.expected, vectors.rate_file_batched(vector, engine_name)) == []


def _encoded(path: Path):
    vector = vectors.load(path)
    catalog = rating.build_catalog(vector.merchants, vector.campaigns)
    cols, _ = rating.columns.encode(catalog, vector.events, rating.RatingState(balance={}))
    return cols


@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.stem for p in VECTOR_FILES])
def test_vector_columns_equal_twin_even_over_stale_outputs(path: Path) -> None:
    kernel = _compiled()
    cols = _encoded(path)
    # The twin builds its outputs from zeros, so the kernel must overwrite
    # whatever the output arrays held before, not only the cells it awards.
    for name in ("out_status", "out_capped", "out_clawback", "out_returned"):
        getattr(cols, name)[:] = 3
    twin, compiled = cols.copy(), cols.copy()
    _kernel_py.rate_columns(twin)
    kernel.rate_columns(compiled)
    for name, value in vars(twin).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(compiled, name), value, err_msg=name)


def test_wrong_length_column_is_refused() -> None:
    kernel = _compiled()
    cols = _encoded(VECTOR_FILES[0])
    cols.x_amount = cols.x_amount[:-1]
    with pytest.raises(ValueError, match="x_amount"):
        kernel.rate_columns(cols)


def test_wrong_dtype_column_is_refused() -> None:
    kernel = _compiled()
    cols = _encoded(VECTOR_FILES[0])
    cols.x_row = cols.x_row.astype(np.int64)
    with pytest.raises(ValueError, match="dtype"):
        kernel.rate_columns(cols)


def test_empty_batch_is_a_no_op(engine_name: str) -> None:
    vector = vectors.load(VECTOR_FILES[0])
    catalog = rating.build_catalog(vector.merchants, vector.campaigns)
    state = rating.RatingState()
    assert rating.rate(catalog, [], state, engine_name) == []


def test_debug_build_checks_indices() -> None:
    # Release builds trust the indices encode wrote (like boundscheck=False);
    # a SETAPAY_KERNEL_DEBUG=1 build must refuse one that points outside.
    kernel = _compiled()
    if not kernel.DEBUG:
        pytest.skip("release build: per-transaction index checks are compiled out")
    cols = _encoded(VECTOR_FILES[0])
    cols.x_row = cols.x_row.copy()
    cols.x_row[0] = len(cols.r_wallet)
    with pytest.raises(IndexError, match="x_row"):
        kernel.rate_columns(cols)
