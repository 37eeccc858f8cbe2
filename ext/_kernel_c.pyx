# cython: language_level=3
"""The compiled rating kernel: SPEC §4 over a columnar batch, in C.

This is a port of `engine/rating/_kernel_py.py` (the readable twin) and
exports the same names. `rate_columns(cols)` reads every array of `cols`
(an `engine.rating.columns.Columns`) once into a typed memoryview, which
checks its dtype and contiguity, keeps raw pointers to them in one C struct
(`Batch`, declared in `_kernel.pxd`) and runs the whole batch in a C loop
without the GIL and without a Python object per transaction. Results are
written in place into the same arrays the twin writes.

The twin is the specification: every rule below carries the same step
number as the twin's comment for it. Where the C code differs in shape it
is for speed and gives the same result, and each such place says why.

Programmer errors (an index out of range, a column of the wrong length) are
checked once per batch for the sizes; the indices stored in the columns are
checked per transaction only in builds made with SETAPAY_KERNEL_DEBUG=1,
which turn Cython's own bounds checks on (`DEBUG` says which build this is).
A release build trusts the indices `encode` wrote, as boundscheck=False does. A
division by zero, which only corrupt columns can cause, raises
ZeroDivisionError as the twin does; the arrays are then half-written and the
batch must be thrown away, which every caller does anyway because it
encodes a fresh batch for each call.
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t
from libc.string cimport memset

import numpy as np

from _kernel cimport (
    Batch,
    CAPPED_BUDGET_C,
    CAPPED_NONE_C,
    CAPPED_PER_TX_C,
    CAPPED_WALLET_C,
    CERT_ANY_C,
    CERT_UNKNOWN_C,
    KIND_PURCHASE_C,
    KIND_REFUND_C,
    STATUS_ACCEPTED_C,
    STATUS_INSUFFICIENT_POINTS_C,
    STATUS_ORIGINAL_NOT_FOUND_C,
    STATUS_REFUND_EXCEEDS_ORIGINAL_C,
    STATUS_UNKNOWN_MERCHANT_C,
    UNLIMITED_C,
)

cdef extern from *:
    """
    /* A hint that a cache line will soon be read and written; a no-op where
       the compiler has no such builtin. It never changes a result. */
    #if defined(__GNUC__) || defined(__clang__)
    #define SETAPAY_PREFETCH(address) __builtin_prefetch((const void *)(address), 1, 3)
    #else
    #define SETAPAY_PREFETCH(address) ((void)(address))
    #endif
    """
    void SETAPAY_PREFETCH(const void* address) noexcept nogil

# How many transactions ahead the loop asks for the cache lines of a wallet's
# balance and window usage. Those are scattered over megabytes, so without the
# hint every purchase waits on main memory several times; a few dozen
# transactions of work is enough to hide that wait. Measured with bench/rating.py.
cdef enum:
    PREFETCH_DISTANCE = 16
    # Codes of _merchant_rates below 0 (a rate is never below 0 there).
    NO_TIER = -1
    DYNAMIC_FROM = -2

ENGINE = "cython"


def _bounds_checked() -> bool:
    """Whether this build has Cython's bounds checks on (SETAPAY_KERNEL_DEBUG=1 in setup.py).

    CPython compiles every extension with -DNDEBUG, so no C macro tells a
    debug build apart; reading one element past a view of a longer array
    (memory that exists) raises IndexError only when bounds are checked.
    """
    cdef int64_t[::1] probe = np.zeros(2, dtype=np.int64)[:1]
    cdef int64_t value
    try:
        value = probe[1]
    except IndexError:
        return True
    return False


# Debug builds also check every index the C loop follows, per transaction.
DEBUG = _bounds_checked()

KIND_PURCHASE = KIND_PURCHASE_C
KIND_REFUND = KIND_REFUND_C

STATUS_ACCEPTED = STATUS_ACCEPTED_C
STATUS_UNKNOWN_MERCHANT = STATUS_UNKNOWN_MERCHANT_C
STATUS_ORIGINAL_NOT_FOUND = STATUS_ORIGINAL_NOT_FOUND_C
STATUS_REFUND_EXCEEDS_ORIGINAL = STATUS_REFUND_EXCEEDS_ORIGINAL_C
STATUS_INSUFFICIENT_POINTS = STATUS_INSUFFICIENT_POINTS_C

CAPPED_NONE = CAPPED_NONE_C
CAPPED_PER_TX = CAPPED_PER_TX_C
CAPPED_WALLET = CAPPED_WALLET_C
CAPPED_BUDGET = CAPPED_BUDGET_C

UNLIMITED = UNLIMITED_C
CERT_ANY = CERT_ANY_C


cdef inline int64_t _floordiv(int64_t a, int64_t b) noexcept nogil:
    """Python's `a // b` for b != 0: C rounds toward zero, Python toward minus infinity."""
    cdef int64_t q = a / b
    # The two differ only when the division is inexact and the signs differ.
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline int64_t _share_target(int64_t share, int64_t refunded, int64_t amount) noexcept nogil:
    """`share_target` for amount != 0 or refunded == amount (the caller checks)."""
    if refunded == amount:
        return share
    return _floordiv(share * refunded, amount)


def share_target(share: int, refunded: int, amount: int) -> int:
    """Cumulative part of `share` refunded once `refunded` of `amount` is (floor; exact at full)."""
    if refunded == amount:
        return share
    return share * refunded // amount


cdef int _raise_zero_division() except -1 nogil:
    with gil:
        raise ZeroDivisionError("integer division by zero in the rating kernel (corrupt columns)")


cdef int _raise_index(const char* what, Py_ssize_t index, Py_ssize_t size) except -1 nogil:
    with gil:
        raise IndexError(f"{what.decode()} index {index} out of range 0..{size - 1}")


cdef inline bint _certified(const Batch* b, Py_ssize_t m, int64_t instant) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(b.m_cert_start[m], b.m_cert_start[m + 1]):
        if b.cert_from[k] <= instant < b.cert_until[k]:
            return True
    return False


cdef void _merchant_rates(const Batch* b, Py_ssize_t M, int64_t* mc_rate) noexcept nogil:
    """Step 2 for each (merchant, campaign), as far as it does not depend on the instant.

    Static match keys (class, 商店街, ward_local, ids) do not change within a
    batch, so the tier walk is done once per merchant here instead of once per
    purchase, where it was a chain of unpredictable branches. Each entry is
    the rate when the first statically matching tier ignores certification
    (a negative rate skips the campaign just as no tier does), NO_TIER when no
    tier matches statically, or DYNAMIC_FROM - t when tier t is the first
    candidate but asks for certification at the purchase's instant.
    """
    cdef Py_ssize_t m, c, t
    cdef int64_t rate
    cdef int required
    cdef bint never_certified
    for m in range(M):
        # A merchant without certification intervals is uncertified at every
        # instant, so for it (most merchants) certification is static too.
        never_certified = b.m_cert_start[m] == b.m_cert_start[m + 1]
        for c in range(b.C):
            rate = NO_TIER
            for t in range(b.c_tier_start[c], b.c_tier_start[c + 1]):
                if not b.mt_static_ok[m * b.T + t]:
                    continue
                required = b.t_cert_required[t]
                if required != CERT_ANY_C:
                    if not never_certified:
                        rate = DYNAMIC_FROM - t
                        break
                    if required != 0:
                        continue
                if b.t_rate_bp[t] >= 0:
                    rate = b.t_rate_bp[t]
                break
            mc_rate[m * b.C + c] = rate


cdef inline int64_t _tier_rate(const Batch* b, Py_ssize_t c, Py_ssize_t m, int64_t at, int* certified) noexcept nogil:
    """Step 2: the rate of the first tier of `c` whose match holds, or -1.

    `certified` caches the merchant's certification at `at` for the whole
    purchase: it is looked up at most once, and only when a tier asks.
    """
    cdef int64_t known = b.mc_rate[m * b.C + c]
    cdef Py_ssize_t t
    cdef int required
    cdef const int8_t* static_ok = b.mt_static_ok + m * b.T
    if known > DYNAMIC_FROM:
        return known
    # Tiers before `t` fail on static keys; certification decides from here.
    for t in range(DYNAMIC_FROM - known, b.c_tier_start[c + 1]):
        if not static_ok[t]:
            continue
        required = b.t_cert_required[t]
        if required != CERT_ANY_C:
            if certified[0] == CERT_UNKNOWN_C:
                certified[0] = _certified(b, m, at)
            if certified[0] != (required != 0):
                continue
        return b.t_rate_bp[t]
    return -1


cdef int _purchase(Batch* b, Py_ssize_t i) except -1 nogil:
    cdef Py_ssize_t C = b.C
    cdef Py_ssize_t c, k, slot
    cdef int64_t m = b.x_merchant[i]
    cdef int64_t row = b.x_row[i]
    cdef int64_t at = b.x_occurred_at[i]
    cdef int64_t amount = b.x_amount[i]
    cdef int64_t points_used = b.x_points_used[i]
    cdef int64_t coin, rate_bp, base, tagged, points, remaining
    cdef int64_t w
    cdef int certified = CERT_UNKNOWN_C
    cdef bint awarded_any = False
    cdef int8_t capped
    cdef int8_t* out_capped = b.out_capped + i * C
    cdef int64_t* r_award
    cdef int64_t* r_pending
    cdef const int32_t* r_slot

    b.out_status[i] = STATUS_ACCEPTED_C
    if m < 0:
        b.out_status[i] = STATUS_UNKNOWN_MERCHANT_C
        return 0
    w = b.r_wallet[row]
    # Redemption: the points used must be available, else nothing is written.
    if b.check_balance and points_used > 0 and points_used > b.balance[w]:
        b.out_status[i] = STATUS_INSUFFICIENT_POINTS_C
        return 0
    b.balance[w] -= points_used
    b.r_valid[row] = 1
    coin = amount - points_used
    r_award = b.r_award + row * C
    r_pending = b.r_pending + row * C
    r_slot = b.r_slot + row * C
    for c in range(C):
        # 6, moved first: steps 1-5 write nothing, so an exclusive campaign
        # after an award can be skipped before they are worked out at all.
        if b.c_exclusive[c] and awarded_any:
            continue
        # 1. The campaign window is half-open [starts_at, ends_at).
        if not (b.c_starts_at[c] <= at < b.c_ends_at[c]):
            continue
        # 2. The first tier whose match holds decides the rate.
        rate_bp = _tier_rate(b, c, m, at, &certified)
        if rate_bp < 0:
            continue
        # 3. The base is the coin-paid amount, or the coin-paid share of tagged items.
        if b.c_uses_tags[c]:
            tagged = 0
            for k in range(b.x_item_start[i], b.x_item_start[i + 1]):
                if b.item_mask[k] & b.c_tag_mask[c]:
                    tagged += b.item_amount[k]
            if amount == 0:
                return _raise_zero_division()
            # A 64-bit division costs tens of cycles; most purchases list no
            # tagged item (or only tagged ones), where the quotient is known.
            if tagged == 0:
                base = 0
            elif tagged == amount:
                base = coin
            else:
                base = _floordiv(tagged * coin, amount)
        else:
            base = coin
        # 4. Below the minimum base (or nothing to earn on): no award.
        if base == 0 or base < b.c_min_base[c]:
            continue
        # 5. Rate (floor) plus fixed points.
        points = _floordiv(base * rate_bp, 10000) + b.c_fixed_points[c]
        # 7. Caps in order; each one that bites is recorded (the last wins).
        capped = CAPPED_NONE_C
        if b.c_per_tx_cap[c] != UNLIMITED_C and points > b.c_per_tx_cap[c]:
            points = b.c_per_tx_cap[c]
            capped = CAPPED_PER_TX_C
        slot = r_slot[c]
        if b.c_wallet_cap[c] != UNLIMITED_C:
            remaining = b.c_wallet_cap[c] - b.usage[slot]
            if points > remaining:
                points = remaining
                capped = CAPPED_WALLET_C
        if b.c_budget[c] != UNLIMITED_C:
            remaining = b.c_budget[c] - b.spend[c]
            if points > remaining:
                points = remaining
                capped = CAPPED_BUDGET_C
        if points <= 0:
            continue
        # 8. Award: count it against the wallet window and the budget.
        out_capped[c] = capped
        r_award[c] = points
        if b.c_immediate[c]:
            b.balance[w] += points
        else:
            r_pending[c] = points
        if slot >= 0:
            b.usage[slot] += points
        b.spend[c] += points
        awarded_any = True
        if b.c_exclusive[c]:
            break
    return 0


cdef int _refund(Batch* b, Py_ssize_t i) except -1 nogil:
    cdef Py_ssize_t C = b.C
    cdef Py_ssize_t c, slot
    cdef int64_t row = b.x_row[i]
    cdef int64_t original_amount, refunded_before, refunded_after
    cdef int64_t share, delta, from_pending, used, returned
    cdef int64_t w
    cdef int64_t* out_clawback = b.out_clawback + i * C

    b.out_status[i] = STATUS_ACCEPTED_C
    if row < 0 or not b.r_valid[row]:
        b.out_status[i] = STATUS_ORIGINAL_NOT_FOUND_C
        return 0
    original_amount = b.r_amount[row]
    refunded_before = b.r_refunded[row]
    refunded_after = refunded_before + b.x_amount[i]
    if refunded_after > original_amount:
        b.out_status[i] = STATUS_REFUND_EXCEEDS_ORIGINAL_C
        return 0
    # The twin divides by the original amount unless the refund is full.
    if original_amount == 0 and not (refunded_before == 0 and refunded_after == 0):
        return _raise_zero_division()
    b.r_refunded[row] = refunded_after
    w = b.r_wallet[row]
    for c in range(C):
        share = b.r_award[row * C + c]
        if share == 0:
            continue
        delta = _share_target(share, refunded_after, original_amount) - _share_target(
            share, refunded_before, original_amount
        )
        if delta == 0:
            continue
        out_clawback[c] = delta
        # Pending points are cancelled first, then available ones are taken.
        from_pending = min(delta, b.r_pending[row * C + c])
        b.r_pending[row * C + c] -= from_pending
        b.balance[w] -= delta - from_pending
        slot = b.r_slot[row * C + c]
        if slot >= 0:
            b.usage[slot] -= delta
        b.spend[c] -= delta
    used = b.r_points_used[row]
    returned = _share_target(used, refunded_after, original_amount) - _share_target(
        used, refunded_before, original_amount
    )
    b.out_returned[i] = returned
    b.balance[w] += returned
    return 0


cdef int _check_indices(const Batch* b, Py_ssize_t i, Py_ssize_t M, Py_ssize_t R, Py_ssize_t S,
                        Py_ssize_t W, Py_ssize_t K) except -1 nogil:
    """Debug builds only: every index transaction `i` can follow is in range."""
    cdef Py_ssize_t row = b.x_row[i]
    cdef Py_ssize_t c, slot
    if b.x_merchant[i] >= M:
        return _raise_index("x_merchant", b.x_merchant[i], M)
    if b.x_item_start[i] < 0 or b.x_item_start[i] > b.x_item_start[i + 1] or b.x_item_start[i + 1] > K:
        return _raise_index("x_item_start", b.x_item_start[i + 1], K + 1)
    if row < 0:
        return 0
    if row >= R:
        return _raise_index("x_row", row, R)
    if b.r_wallet[row] < 0 or b.r_wallet[row] >= W:
        return _raise_index("r_wallet", b.r_wallet[row], W)
    for c in range(b.C):
        slot = b.r_slot[row * b.C + c]
        if slot >= S or (slot < 0 and b.c_wallet_cap[c] != UNLIMITED_C and b.x_kind[i] == KIND_PURCHASE_C):
            return _raise_index("r_slot", slot, S)
    return 0


cdef int _rate(Batch* b, Py_ssize_t M, Py_ssize_t R, Py_ssize_t S, Py_ssize_t W, Py_ssize_t K) except -1 nogil:
    cdef Py_ssize_t i, ahead, row, c, slot
    for i in range(b.N):
        if b.debug:
            _check_indices(b, i, M, R, S, W, K)
        elif i + PREFETCH_DISTANCE < b.N:
            # Ask for the scattered cache lines a later transaction will touch.
            # Release builds trust the indices, so they may follow them early.
            # This stays written out here: GCC drops the call to a helper that
            # only prefetches, as a call without effects.
            # A refund's original row lies anywhere behind (a purchase's row is
            # the next in order, which the hardware streams already), and the
            # wallet and slots are read from it: fetch the row a stage earlier.
            ahead = i + 2 * PREFETCH_DISTANCE
            if ahead < b.N and b.x_kind[ahead] == KIND_REFUND_C and b.x_row[ahead] >= 0:
                row = b.x_row[ahead]
                SETAPAY_PREFETCH(&b.r_valid[row])
                SETAPAY_PREFETCH(&b.r_amount[row])
                SETAPAY_PREFETCH(&b.r_refunded[row])
                SETAPAY_PREFETCH(&b.r_points_used[row])
                SETAPAY_PREFETCH(&b.r_wallet[row])
                SETAPAY_PREFETCH(&b.r_award[row * b.C])
                SETAPAY_PREFETCH(&b.r_pending[row * b.C])
                SETAPAY_PREFETCH(&b.r_slot[row * b.C])
            ahead = i + PREFETCH_DISTANCE
            row = b.x_row[ahead]
            if b.x_merchant[ahead] >= 0:
                SETAPAY_PREFETCH(&b.mc_rate[b.x_merchant[ahead] * b.C])
            if row >= 0:
                SETAPAY_PREFETCH(&b.balance[b.r_wallet[row]])
                for c in range(b.C):
                    slot = b.r_slot[row * b.C + c]
                    # Only windows of campaigns running at the instant are touched.
                    if slot >= 0 and b.c_starts_at[c] <= b.x_occurred_at[ahead] < b.c_ends_at[c]:
                        SETAPAY_PREFETCH(&b.usage[slot])
        if b.x_kind[i] == KIND_PURCHASE_C:
            _purchase(b, i)
        else:
            _refund(b, i)
    return 0


cdef inline void _expect(str name, Py_ssize_t actual, Py_ssize_t expected) except *:
    if actual != expected:
        raise ValueError(f"column {name} has {actual} elements, expected {expected}")


def rate_columns(cols) -> None:
    """Rate the batch `cols` in place (see `engine.rating.columns.Columns`)."""
    # Each memoryview checks its array's dtype and contiguity once, and keeps
    # the array alive while the C loop holds raw pointers into it.
    cdef const int64_t[::1] c_starts_at = cols.c_starts_at
    cdef const int64_t[::1] c_ends_at = cols.c_ends_at
    cdef const int8_t[::1] c_uses_tags = cols.c_uses_tags
    cdef const uint64_t[::1] c_tag_mask = cols.c_tag_mask
    cdef const int64_t[::1] c_fixed_points = cols.c_fixed_points
    cdef const int64_t[::1] c_min_base = cols.c_min_base
    cdef const int64_t[::1] c_per_tx_cap = cols.c_per_tx_cap
    cdef const int64_t[::1] c_wallet_cap = cols.c_wallet_cap
    cdef const int64_t[::1] c_budget = cols.c_budget
    cdef const int8_t[::1] c_exclusive = cols.c_exclusive
    cdef const int8_t[::1] c_immediate = cols.c_immediate
    cdef const int32_t[::1] c_tier_start = cols.c_tier_start
    cdef const int64_t[::1] t_rate_bp = cols.t_rate_bp
    cdef const int8_t[::1] t_cert_required = cols.t_cert_required
    cdef const int8_t[::1] mt_static_ok = cols.mt_static_ok
    cdef const int32_t[::1] m_cert_start = cols.m_cert_start
    cdef const int64_t[::1] cert_from = cols.cert_from
    cdef const int64_t[::1] cert_until = cols.cert_until
    cdef const int8_t[::1] x_kind = cols.x_kind
    cdef const int32_t[::1] x_merchant = cols.x_merchant
    cdef const int64_t[::1] x_occurred_at = cols.x_occurred_at
    cdef const int64_t[::1] x_amount = cols.x_amount
    cdef const int64_t[::1] x_points_used = cols.x_points_used
    cdef const int32_t[::1] x_row = cols.x_row
    cdef const int32_t[::1] x_item_start = cols.x_item_start
    cdef const int64_t[::1] item_amount = cols.item_amount
    cdef const uint64_t[::1] item_mask = cols.item_mask
    cdef const int32_t[::1] r_wallet = cols.r_wallet
    cdef const int64_t[::1] r_amount = cols.r_amount
    cdef const int64_t[::1] r_points_used = cols.r_points_used
    cdef int64_t[::1] r_refunded = cols.r_refunded
    cdef int8_t[::1] r_valid = cols.r_valid
    cdef int64_t[::1] r_award = cols.r_award
    cdef int64_t[::1] r_pending = cols.r_pending
    cdef const int32_t[::1] r_slot = cols.r_slot
    cdef int64_t[::1] usage = cols.usage
    cdef int64_t[::1] spend = cols.spend
    cdef int64_t[::1] balance = cols.balance
    cdef int8_t[::1] out_status = cols.out_status
    cdef int8_t[::1] out_capped = cols.out_capped
    cdef int64_t[::1] out_clawback = cols.out_clawback
    cdef int64_t[::1] out_returned = cols.out_returned

    cdef Batch b
    cdef Py_ssize_t C = c_starts_at.shape[0]
    cdef Py_ssize_t T = t_rate_bp.shape[0]
    cdef Py_ssize_t N = x_kind.shape[0]
    cdef Py_ssize_t M = m_cert_start.shape[0] - 1
    cdef Py_ssize_t R = r_wallet.shape[0]
    cdef Py_ssize_t K = item_amount.shape[0]

    # Lengths are checked always (a handful of compares per batch); the
    # indices stored in the columns only in debug builds (see _check_indices).
    for name, view, size in (
        ("c_ends_at", c_ends_at, C), ("c_uses_tags", c_uses_tags, C), ("c_tag_mask", c_tag_mask, C),
        ("c_fixed_points", c_fixed_points, C), ("c_min_base", c_min_base, C),
        ("c_per_tx_cap", c_per_tx_cap, C), ("c_wallet_cap", c_wallet_cap, C), ("c_budget", c_budget, C),
        ("c_exclusive", c_exclusive, C), ("c_immediate", c_immediate, C), ("c_tier_start", c_tier_start, C + 1),
        ("t_cert_required", t_cert_required, T), ("mt_static_ok", mt_static_ok, M * T),
        ("cert_until", cert_until, cert_from.shape[0]), ("spend", spend, C),
        ("x_merchant", x_merchant, N), ("x_occurred_at", x_occurred_at, N), ("x_amount", x_amount, N),
        ("x_points_used", x_points_used, N), ("x_row", x_row, N), ("x_item_start", x_item_start, N + 1),
        ("item_mask", item_mask, K), ("r_amount", r_amount, R), ("r_points_used", r_points_used, R),
        ("r_refunded", r_refunded, R), ("r_valid", r_valid, R), ("r_award", r_award, R * C),
        ("r_pending", r_pending, R * C), ("r_slot", r_slot, R * C), ("out_status", out_status, N),
        ("out_capped", out_capped, N * C), ("out_clawback", out_clawback, N * C), ("out_returned", out_returned, N),
    ):
        _expect(name, len(view), size)
    if N == 0:
        return

    b.C, b.T, b.N = C, T, N
    b.check_balance = bool(cols.check_balance)
    b.debug = DEBUG
    b.c_starts_at = &c_starts_at[0] if C else NULL
    b.c_ends_at = &c_ends_at[0] if C else NULL
    b.c_uses_tags = &c_uses_tags[0] if C else NULL
    b.c_tag_mask = &c_tag_mask[0] if C else NULL
    b.c_fixed_points = &c_fixed_points[0] if C else NULL
    b.c_min_base = &c_min_base[0] if C else NULL
    b.c_per_tx_cap = &c_per_tx_cap[0] if C else NULL
    b.c_wallet_cap = &c_wallet_cap[0] if C else NULL
    b.c_budget = &c_budget[0] if C else NULL
    b.c_exclusive = &c_exclusive[0] if C else NULL
    b.c_immediate = &c_immediate[0] if C else NULL
    b.spend = &spend[0] if C else NULL
    b.c_tier_start = &c_tier_start[0]
    b.t_rate_bp = &t_rate_bp[0] if T else NULL
    b.t_cert_required = &t_cert_required[0] if T else NULL
    b.mt_static_ok = &mt_static_ok[0] if M * T else NULL
    b.m_cert_start = &m_cert_start[0]
    b.cert_from = &cert_from[0] if cert_from.shape[0] else NULL
    b.cert_until = &cert_until[0] if cert_until.shape[0] else NULL
    b.x_kind = &x_kind[0]
    b.x_merchant = &x_merchant[0]
    b.x_occurred_at = &x_occurred_at[0]
    b.x_amount = &x_amount[0]
    b.x_points_used = &x_points_used[0]
    b.x_row = &x_row[0]
    b.x_item_start = &x_item_start[0]
    b.item_amount = &item_amount[0] if K else NULL
    b.item_mask = &item_mask[0] if K else NULL
    b.r_wallet = &r_wallet[0] if R else NULL
    b.r_amount = &r_amount[0] if R else NULL
    b.r_points_used = &r_points_used[0] if R else NULL
    b.r_refunded = &r_refunded[0] if R else NULL
    b.r_valid = &r_valid[0] if R else NULL
    b.r_award = &r_award[0] if R * C else NULL
    b.r_pending = &r_pending[0] if R * C else NULL
    b.r_slot = &r_slot[0] if R * C else NULL
    b.usage = &usage[0] if usage.shape[0] else NULL
    b.balance = &balance[0] if balance.shape[0] else NULL
    b.out_status = &out_status[0]
    b.out_capped = &out_capped[0] if C else NULL
    b.out_clawback = &out_clawback[0] if C else NULL
    b.out_returned = &out_returned[0]
    cdef int64_t[::1] mc_rate = np.empty(M * C, dtype=np.int64)
    b.mc_rate = &mc_rate[0] if M * C else NULL
    with nogil:
        # The twin builds its outputs from zeros: stale values in the output arrays must not
        # survive. They are cleared here at once (`out_status` is written for every
        # transaction). Clearing each transaction's row in the loop, only where a cell was not
        # zero, read every output cache line from memory: 17% of the loop's time
        # (bench/rating.py, perf). A large memset streams its writes past the cache instead.
        if C:
            memset(b.out_clawback, 0, N * C * sizeof(int64_t))
            memset(b.out_capped, 0, N * C * sizeof(int8_t))
        memset(b.out_returned, 0, N * sizeof(int64_t))
        _merchant_rates(&b, M, &mc_rate[0] if M * C else NULL)
        _rate(&b, M, R, usage.shape[0], balance.shape[0], K)
