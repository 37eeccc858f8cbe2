"""The pure-Python twin of the rating kernel: SPEC §4 as readable code.

`rate_columns` takes one batch in the columnar form built by
`engine.rating.columns` and rates every transaction in acceptance order,
updating the state arrays in place. The Cython kernel in `ext/_kernel_c.pyx`
exports the same names and must give identical results on every input;
the tests hold the two equal. Read this file to learn the rules; read the
Cython one to see how they are made fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .columns import Columns

KIND_PURCHASE = 0
KIND_REFUND = 1

# Outcomes as a flat enum ordered by precedence: the first that applies wins.
STATUS_ACCEPTED = 0
STATUS_UNKNOWN_MERCHANT = 1
STATUS_ORIGINAL_NOT_FOUND = 2
STATUS_REFUND_EXCEEDS_ORIGINAL = 3
STATUS_INSUFFICIENT_POINTS = 4

CAPPED_NONE = 0
CAPPED_PER_TX = 1
CAPPED_WALLET = 2
CAPPED_BUDGET = 3

UNLIMITED = -1  # a cap or budget of -1 means "none"
CERT_ANY = -1  # a tier that does not look at certification

ENGINE = "python"


def share_target(share: int, refunded: int, amount: int) -> int:
    """Cumulative part of `share` refunded once `refunded` of `amount` is (floor; exact at full)."""
    if refunded == amount:
        return share
    return share * refunded // amount


def _certified(m: int, instant: int, m_cert_start: list[int], cert_from: list[int], cert_until: list[int]) -> bool:
    for k in range(m_cert_start[m], m_cert_start[m + 1]):  # noqa: SIM110 (the twin's hot loop; any() over a generator is slower)
        if cert_from[k] <= instant < cert_until[k]:
            return True
    return False


def rate_columns(cols: Columns) -> None:
    """Rate the batch `cols` in place (see `engine.rating.columns.Columns`)."""
    C = len(cols.c_starts_at)
    T = len(cols.t_rate_bp)
    c_starts_at = cols.c_starts_at.tolist()
    c_ends_at = cols.c_ends_at.tolist()
    c_uses_tags = cols.c_uses_tags.tolist()
    c_tag_mask = cols.c_tag_mask.tolist()
    c_fixed_points = cols.c_fixed_points.tolist()
    c_min_base = cols.c_min_base.tolist()
    c_per_tx_cap = cols.c_per_tx_cap.tolist()
    c_wallet_cap = cols.c_wallet_cap.tolist()
    c_budget = cols.c_budget.tolist()
    c_exclusive = cols.c_exclusive.tolist()
    c_immediate = cols.c_immediate.tolist()
    c_tier_start = cols.c_tier_start.tolist()
    t_rate_bp = cols.t_rate_bp.tolist()
    t_cert_required = cols.t_cert_required.tolist()
    mt_static_ok = cols.mt_static_ok.tolist()
    m_cert_start = cols.m_cert_start.tolist()
    cert_from = cols.cert_from.tolist()
    cert_until = cols.cert_until.tolist()
    item_start = cols.x_item_start.tolist()
    item_amount = cols.item_amount.tolist()
    item_mask = cols.item_mask.tolist()

    r_wallet = cols.r_wallet.tolist()
    r_amount = cols.r_amount.tolist()
    r_points_used = cols.r_points_used.tolist()
    r_refunded = cols.r_refunded.tolist()
    r_valid = cols.r_valid.tolist()
    r_award = cols.r_award.tolist()
    r_pending = cols.r_pending.tolist()
    r_slot = cols.r_slot.tolist()
    usage = cols.usage.tolist()
    spend = cols.spend.tolist()
    balance = cols.balance.tolist()
    check_balance = bool(cols.check_balance)

    out_status = [STATUS_ACCEPTED] * len(cols.x_kind)
    out_capped = [0] * (len(cols.x_kind) * C)
    out_clawback = [0] * (len(cols.x_kind) * C)
    out_returned = [0] * len(cols.x_kind)

    for i, (kind, m, at, amount, points_used, row) in enumerate(
        zip(
            cols.x_kind.tolist(),
            cols.x_merchant.tolist(),
            cols.x_occurred_at.tolist(),
            cols.x_amount.tolist(),
            cols.x_points_used.tolist(),
            cols.x_row.tolist(),
        )
    ):
        if kind == KIND_PURCHASE:
            if m < 0:
                out_status[i] = STATUS_UNKNOWN_MERCHANT
                continue
            w = r_wallet[row]
            # Redemption: the points used must be available, else nothing is written.
            if check_balance and points_used > 0 and points_used > balance[w]:
                out_status[i] = STATUS_INSUFFICIENT_POINTS
                continue
            balance[w] -= points_used
            r_valid[row] = 1
            coin = amount - points_used
            awarded_any = False
            for c in range(C):
                # 1. The campaign window is half-open [starts_at, ends_at).
                if not (c_starts_at[c] <= at < c_ends_at[c]):
                    continue
                # 2. The first tier whose match holds decides the rate.
                rate_bp = -1
                for t in range(c_tier_start[c], c_tier_start[c + 1]):
                    if not mt_static_ok[m * T + t]:
                        continue
                    required = t_cert_required[t]
                    if required != CERT_ANY:
                        certified = _certified(m, at, m_cert_start, cert_from, cert_until)
                        if certified != bool(required):
                            continue
                    rate_bp = t_rate_bp[t]
                    break
                if rate_bp < 0:
                    continue
                # 3. The base is the coin-paid amount, or the coin-paid share of tagged items.
                if c_uses_tags[c]:
                    tagged = 0
                    for k in range(item_start[i], item_start[i + 1]):
                        if item_mask[k] & c_tag_mask[c]:
                            tagged += item_amount[k]
                    base = tagged * coin // amount
                else:
                    base = coin
                # 4. Below the minimum base (or nothing to earn on): no award.
                if base == 0 or base < c_min_base[c]:
                    continue
                # 5. Rate (floor) plus fixed points.
                points = base * rate_bp // 10000 + c_fixed_points[c]
                # 6. An exclusive campaign applies only when nothing earlier awarded.
                if c_exclusive[c] and awarded_any:
                    continue
                # 7. Caps in order; each one that bites is recorded (the last wins).
                capped = CAPPED_NONE
                if c_per_tx_cap[c] != UNLIMITED and points > c_per_tx_cap[c]:
                    points = c_per_tx_cap[c]
                    capped = CAPPED_PER_TX
                slot = r_slot[row * C + c]
                if c_wallet_cap[c] != UNLIMITED:
                    remaining = c_wallet_cap[c] - usage[slot]
                    if points > remaining:
                        points = remaining
                        capped = CAPPED_WALLET
                if c_budget[c] != UNLIMITED:
                    remaining = c_budget[c] - spend[c]
                    if points > remaining:
                        points = remaining
                        capped = CAPPED_BUDGET
                if points <= 0:
                    continue
                # 8. Award: count it against the wallet window and the budget.
                out_capped[i * C + c] = capped
                r_award[row * C + c] = points
                if c_immediate[c]:
                    balance[w] += points
                else:
                    r_pending[row * C + c] = points
                if slot >= 0:
                    usage[slot] += points
                spend[c] += points
                awarded_any = True
                if c_exclusive[c]:
                    break
        else:
            if row < 0 or not r_valid[row]:
                out_status[i] = STATUS_ORIGINAL_NOT_FOUND
                continue
            original_amount = r_amount[row]
            refunded_before = r_refunded[row]
            refunded_after = refunded_before + amount
            if refunded_after > original_amount:
                out_status[i] = STATUS_REFUND_EXCEEDS_ORIGINAL
                continue
            r_refunded[row] = refunded_after
            w = r_wallet[row]
            for c in range(C):
                share = r_award[row * C + c]
                if share == 0:
                    continue
                delta = share_target(share, refunded_after, original_amount) - share_target(
                    share, refunded_before, original_amount
                )
                if delta == 0:
                    continue
                out_clawback[i * C + c] = delta
                # Pending points are cancelled first, then available ones are taken.
                from_pending = min(delta, r_pending[row * C + c])
                r_pending[row * C + c] -= from_pending
                balance[w] -= delta - from_pending
                slot = r_slot[row * C + c]
                if slot >= 0:
                    usage[slot] -= delta
                spend[c] -= delta
            used = r_points_used[row]
            returned = share_target(used, refunded_after, original_amount) - share_target(
                used, refunded_before, original_amount
            )
            out_returned[i] = returned
            balance[w] += returned

    cols.r_refunded[:] = r_refunded
    cols.r_valid[:] = r_valid
    cols.r_award[:] = r_award
    cols.r_pending[:] = r_pending
    cols.usage[:] = usage
    cols.spend[:] = spend
    cols.balance[:] = balance
    cols.out_status[:] = out_status
    cols.out_capped[:] = out_capped
    cols.out_clawback[:] = out_clawback
    cols.out_returned[:] = out_returned
