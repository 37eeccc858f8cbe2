"""Settings from the environment (prefix SETAPAY_), with units in their names.

With nothing set the engine runs embedded: a SQLite file ./setapay.db and
in-process caches. Production sets a PostgreSQL URL and a Redis URL.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine import limits

_RATE = r"^(off|[0-9]{1,9} ?(/|per) ?([0-9]{1,6} )?(second|minute|hour|day)s?)$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SETAPAY_", extra="ignore")

    database_url: str = "sqlite+pysqlite:///./setapay.db"
    redis_url: str | None = None
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses): unset, none is, and the
    # client address (which failed authentications are counted by) is the connection's own.
    trusted_proxies: str | None = None
    occurred_at_max_future_s: int = Field(default=limits.OCCURRED_AT_MAX_FUTURE_S, ge=0)
    occurred_at_max_past_days: int = Field(default=limits.OCCURRED_AT_MAX_PAST_DAYS, ge=0)
    # Group commit: how long the first request of a group waits for company.
    group_commit_wait_ms: float = Field(default=2.0, ge=0)
    group_commit_size_max: int = Field(default=1000, ge=1, le=limits.BATCH_TRANSACTIONS_MAX)
    # PostgreSQL: decide the next group while the last one is written (engine/store/group_commit.py).
    group_commit_ahead: bool = True
    # With `group_commit_ahead`: the decided groups written by a child process of each API
    # process (engine/store/write_process.py), not by a thread sharing its interpreter lock.
    group_commit_writer_process: bool = False
    # PostgreSQL, with `group_commit_ahead`: the group committer itself (deciding and writing) in a
    # child process of each API process, handed whole groups (engine/store/committer_process.py);
    # with `group_commit_writer_process` too, that child writes through a child of its own.
    group_commit_process: bool = False
    # In-process scheduler of crediting and expiry runs; 0 leaves them to `setapay credit|expire`.
    lifecycle_interval_s: float = Field(default=0, ge=0)
    # Shifts the engine's clock; for demos and end-to-end tests, never for the ward.
    clock_offset_s: int = 0
    # SPEC §9.4 rate limits, in the `limits` package's notation ("50/second", "10/minute"); "off"
    # disables one (for importing history or a demo day, never for the ward's terminals).
    rate_limit_per_key: str = Field(default="50/second", pattern=_RATE)
    auth_failures_per_ip: str = Field(default="10/minute", pattern=_RATE)
    # `setapay serve`: a request must arrive whole within this many seconds of its first byte (or of
    # the connection's opening), else 408 and the connection closes (api/http_protocol.py).
    request_read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # `setapay serve`: connections one API process holds at once; one past them closes the one idle
    # longest, else its request is 503 and it closes (api/http_protocol.py). Each may hold 1 MiB.
    connections_max: int = Field(default=1024, ge=1, le=65_536)
    # How long an API process trusts a key it looked up (revocation reaches every process within it).
    key_cache_ttl_s: float = Field(default=2.0, gt=0, le=5)
    # Remembered answers (idempotency keys) older than this are purged by the lifecycle runs.
    idempotency_retention_days: int = Field(
        default=limits.IDEMPOTENCY_RETENTION_DAYS_MIN,
        ge=limits.IDEMPOTENCY_RETENTION_DAYS_MIN,
        le=limits.IDEMPOTENCY_RETENTION_DAYS_MAX,
    )
    # The directory (GET /v1/directory/...) answers without a key when the ward publishes it.
    directory_public: bool = False
    # Webhooks (SPEC §10): how often each API process's delivery worker looks for work (0: none in
    # the API; `setapay deliver` delivers), how long a delivery is retried before it is marked
    # failed, the exponential backoff's first and longest wait (with jitter), each attempt's timeout,
    # and whether plain http:// and local addresses may be registered (development and tests only).
    webhook_delivery_interval_s: float = Field(default=1.0, ge=0)
    webhook_retry_window_s: float = Field(default=86_400, gt=0)
    webhook_backoff_base_s: float = Field(default=5.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3_600, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=30)
    webhooks_allow_http: bool = False
    # 32 bytes, base64; seals merchant bank details (AES-GCM). Never stored in the database.
    data_key_b64: str | None = None
    # Ed25519 private key (raw 32-byte seed, base64, or PKCS#8 PEM) that signs statements and chain heads.
    signing_key_b64: str | None = None
    # Where each signed chain head is copied when signed (`chain-head-<date>.json`; a directory the
    # ward keeps outside the database: another host, write-once storage), and reconciliation
    # compares the database's heads with those copies. Unset: no copies are kept or compared.
    heads_dir: str | None = None
    # Signs the pages' session and CSRF cookies (api/ui): unset, a secret of each process, so
    # sessions end when it stops, and a server of several workers needs it set.
    ui_session_secret: str | None = None
    # Settlement: period kind, and the ward's own account for Zengin payout files.
    settlement_period: str = Field(default="monthly", pattern="^(monthly|semi_monthly)$")
    payout_requester_code: str = Field(default="0000000001", pattern="^[0-9]{10}$")
    payout_requester_name: str = "ｾﾀｶﾞﾔｸ"
    payout_bank_code: str = Field(default="0001", pattern="^[0-9]{4}$")
    payout_branch_code: str = Field(default="001", pattern="^[0-9]{3}$")
    payout_account_number: str = Field(default="0000001", pattern="^[0-9]{7}$")


def load() -> Settings:
    return Settings()
