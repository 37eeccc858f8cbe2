"""Type stub of the compiled rating kernel (built from ext/_kernel_c.pyx).

The names and signatures are those of the pure-Python twin,
`engine.rating._kernel_py`, which the kernel must equal on every input.
"""

from engine.rating.columns import Columns

ENGINE: str
DEBUG: bool

KIND_PURCHASE: int
KIND_REFUND: int

STATUS_ACCEPTED: int
STATUS_UNKNOWN_MERCHANT: int
STATUS_ORIGINAL_NOT_FOUND: int
STATUS_REFUND_EXCEEDS_ORIGINAL: int
STATUS_INSUFFICIENT_POINTS: int

CAPPED_NONE: int
CAPPED_PER_TX: int
CAPPED_WALLET: int
CAPPED_BUDGET: int

UNLIMITED: int
CERT_ANY: int

def share_target(share: int, refunded: int, amount: int) -> int: ...
def rate_columns(cols: Columns) -> None: ...
