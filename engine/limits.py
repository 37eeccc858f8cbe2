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
ID_CHARS_MAX = 64
ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{ID_CHARS_MAX}}}$"
IDEMPOTENCY_KEY_LENGTH_MAX = 255
# SPEC §6: idempotency keys are kept at least 30 days; the purge never forgets a younger answer.
IDEMPOTENCY_RETENTION_DAYS_MIN = 30
# ... and at most ten years (as long as accounting records are kept): a retention past what a date
# can hold made the purge fail with OverflowError (helper-82).
IDEMPOTENCY_RETENTION_DAYS_MAX = 3_650
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
# Campaigns running or scheduled (not yet ended) at once; every one is a column of each rating.
CAMPAIGNS_ACTIVE_MAX = 64
POINTS_MAX = 10_000_000_000  # caps, budgets and fixed points stay far below int64
DELAY_BUSINESS_DAYS_MAX = 60
VALIDITY_MONTHS_MAX = 120

# Strict input (SPEC §2): every path and query parameter, and every instant and date of a
# body, is checked against one of these before it reaches the database.
# RFC 3339 years have four digits. An instant must lie within these years both in UTC and in
# Asia/Tokyo, so that it can be compared, stored (microseconds since 1970, int64) and shown in
# either; instants of existing records are not narrowed further.
INSTANT_YEAR_MIN = 1
INSTANT_YEAR_MAX = 9999
# A business day or settlement period of the ledger (Asia/Tokyo calendar): after the epoch of
# its instants, and its end (the next midnight) must still be an instant.
CALENDAR_YEAR_MIN = 1970
CALENDAR_YEAR_MAX = 9998
# Gapless sequences (payments, postings, audit entries) and the cursors that carry them: BIGINT.
SEQUENCE_MAX = 2**63 - 1
# Campaign and merchant versions: INTEGER columns.
VERSION_MAX = 2**31 - 1
# A page cursor is unpadded base64url of a prefix naming its kind with a colon ("hist:", "dir:",
# at most CURSOR_PREFIX_CHARS_MAX characters) and where the next page starts: a sequence (at most
# SEQUENCE_MAX, 19 digits) or an id (at most ID_CHARS_MAX characters). The limit is the longest
# cursor that can make: a fixed 64 refused the directory's own cursor after a 64-character
# merchant id (91 characters), and its paging stopped there (helper-104).
CURSOR_PREFIX_CHARS_MAX = 5
CURSOR_CHARS_MAX = -(-4 * (CURSOR_PREFIX_CHARS_MAX + max(len(str(SEQUENCE_MAX)), ID_CHARS_MAX)) // 3)
PAGE_LIMIT_MAX = 500
# Free text kept as is (a grant's reason, a merchant's or a campaign's name, a certification's
# scheme): at most this many characters, at least one of them visible, and none that is a control
# character (C0, DEL, C1: PostgreSQL text cannot hold NUL, a line break splits a CSV line or a log
# line), a line or paragraph separator, a bidirectional control (embeddings, overrides, isolates
# and the LRM, RLM and ALM marks reorder what a statement or a page shows after them: "Trojan
# Source"), or an invisible format character (zero-width space, word joiner, invisible
# operators, byte-order mark). Zero-width (non-)joiners stay (emoji sequences, scripts that need
# them), as do soft hyphens and Hangul fillers, but none of those, nor a space, is the visible one.
LABEL_CHARS_MAX = 200
SCHEME_CHARS_MAX = 64
LABEL_REFUSED = r"\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
LABEL_UNSEEN = r"\s\xad\u115f\u1160\u200c\u200d\u3164\uffa0"
LABEL_PATTERN = rf"^[^{LABEL_REFUSED}]*[^{LABEL_REFUSED}{LABEL_UNSEEN}][^{LABEL_REFUSED}]*$"
