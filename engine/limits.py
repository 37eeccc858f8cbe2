"""Named limits of SPEC §2, in one place.

Every limit is an upper (or lower) bound that requests are checked against;
settings may lower some of them, never raise them. Tests exercise each limit
at its value and one past it.
"""

AMOUNT_YEN_MIN = 1
AMOUNT_YEN_MAX = 10_000_000
ITEMS_PER_TRANSACTION_MAX = 100
TAGS_PER_ITEM_MAX = 8
TAG_PATTERN = r"^[a-z0-9_]{1,32}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
IDEMPOTENCY_KEY_LENGTH_MAX = 255
BATCH_TRANSACTIONS_MAX = 1_000
BODY_BYTES_MAX = 1_048_576
# A payment receipt (compact JWS over a handful of claims) is a few hundred characters.
RECEIPT_CHARS_MAX = 4096
OCCURRED_AT_MAX_FUTURE_S = 300
OCCURRED_AT_MAX_PAST_DAYS = 7

RATE_BP_MAX = 10_000
TIERS_PER_CAMPAIGN_MAX = 32
CERTIFICATIONS_PER_MERCHANT_MAX = 32
# Tags named by all campaigns together; the kernel keeps them as bits of one uint64.
CAMPAIGN_TAGS_DISTINCT_MAX = 64
CAMPAIGNS_ACTIVE_MAX = 64
POINTS_MAX = 10_000_000_000  # caps, budgets and fixed points stay far below int64
DELAY_BUSINESS_DAYS_MAX = 60
VALIDITY_MONTHS_MAX = 120
