# cython: language_level=3
"""Typed declarations of the rating kernel (ext/_kernel_c.pyx).

The kernel's hot loop is a plain C function over a plain C struct: one
pointer per column of `engine.rating.columns.Columns` and the sizes that go
with them. Keeping the layout here, apart from the loop, lets a reader see
at a glance which columns the loop only reads (`const`) and which it writes.
The numeric codes mirror the public constants of the pure-Python twin
(engine/rating/_kernel_py.py); the kernel checks them against it at import.
"""

from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t

cdef enum:
    KIND_PURCHASE_C = 0
    KIND_REFUND_C = 1

    STATUS_ACCEPTED_C = 0
    STATUS_UNKNOWN_MERCHANT_C = 1
    STATUS_ORIGINAL_NOT_FOUND_C = 2
    STATUS_REFUND_EXCEEDS_ORIGINAL_C = 3
    STATUS_INSUFFICIENT_POINTS_C = 4

    CAPPED_NONE_C = 0
    CAPPED_PER_TX_C = 1
    CAPPED_WALLET_C = 2
    CAPPED_BUDGET_C = 3

    UNLIMITED_C = -1
    CERT_ANY_C = -1

    # The one-off certification lookup of a purchase has not been made yet.
    CERT_UNKNOWN_C = -2


cdef struct Batch:
    # Sizes: campaigns, tiers, transactions.
    Py_ssize_t C
    Py_ssize_t T
    Py_ssize_t N
    bint check_balance
    # Debug builds check every index the loop follows (see DEBUG in the .pyx).
    bint debug

    # Campaigns [C] in evaluation order, tiers [T] via c_tier_start [C+1].
    const int64_t* c_starts_at
    const int64_t* c_ends_at
    const int8_t* c_uses_tags
    const uint64_t* c_tag_mask
    const int64_t* c_fixed_points
    const int64_t* c_min_base
    const int64_t* c_per_tx_cap
    const int64_t* c_wallet_cap
    const int64_t* c_budget
    const int8_t* c_exclusive
    const int8_t* c_immediate
    const int32_t* c_tier_start
    const int64_t* t_rate_bp
    const int8_t* t_cert_required

    # Merchants: static tier matches [M*T], certification intervals via m_cert_start [M+1].
    const int8_t* mt_static_ok
    const int32_t* m_cert_start
    const int64_t* cert_from
    const int64_t* cert_until
    # Derived per batch [M*C]: the rate of each campaign for each merchant
    # when static match keys decide it, else where to start (see _merchant_rates).
    const int64_t* mc_rate

    # Transactions [N], items via x_item_start [N+1].
    const int8_t* x_kind
    const int32_t* x_merchant
    const int64_t* x_occurred_at
    const int64_t* x_amount
    const int64_t* x_points_used
    const int32_t* x_row
    const int32_t* x_item_start
    const int64_t* item_amount
    const uint64_t* item_mask

    # Purchase rows [R] and [R*C]; the loop writes the mutable ones.
    const int32_t* r_wallet
    const int64_t* r_amount
    const int64_t* r_points_used
    int64_t* r_refunded
    int8_t* r_valid
    int64_t* r_award
    int64_t* r_pending
    const int32_t* r_slot

    # Running state: wallet-window usage [S], campaign spend [C], wallet balance [W].
    int64_t* usage
    int64_t* spend
    int64_t* balance

    # Outputs: [N], [N*C], [N*C], [N].
    int8_t* out_status
    int8_t* out_capped
    int64_t* out_clawback
    int64_t* out_returned
