"""A request checked on arrival is checked again when it is posted (SPEC §9.1, §9.3): a terminal key
revoked, or expired, and a payment app revoked after the API let the request in post nothing more.

The API trusts a key's look-up for up to its TTL and hands a group to the ledger some time after
it let each request in (a stalled writer, a slow database: up to `COMMIT_WAIT_S`). The ledger
refuses, when it posts, what such a key or app sent (401 `unauthenticated`, 422
`receipt_invalid`, not remembered, nothing written); a revocation moves the catalog's version under
the sequencer lock, so a group decided ahead before it (PostgreSQL) finds its head moved and is
decided again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import pickle

from sqlalchemy import text

from engine import sealing
from engine.clock import ManualClock
from engine.model import Purchase
from engine.receipts import Receipt
from engine.settings import Settings
from engine.store import queries
from engine.store.apps import Apps
from engine.store.keys import DAY_US, Keys
from engine.store.ledger import APP_REVOKED, KEY_ENDED, SECRET_ENDED, Submission
from engine.store.pipeline import PostingPipeline
from engine.timeutil import TOKYO, to_us
from tests.lifecycle.support import Books, campaign

START = dt.datetime(2026, 1, 5, 9, tzinfo=TOKYO)


def setup(url: str) -> Books:
    books = Books(url, start=START)
    books.setup({"M1": ["T1"]}, [campaign("C1")])
    return books


def sale(
    key: str,
    key_id: str | None,
    app: str = "app",
    wallet: str = "W1",
    expires_at_us: int | None = None,
    secret_until_us: int | None = None,
) -> Submission:
    """T1's purchase of 1,200 yen under idempotency key `key`, sent with API key `key_id` (which
    expires at `expires_at_us`, as the API read it), its receipt signed by a secret of `app` that
    ends at `secret_until_us` (None: a current secret)."""
    body = Purchase(
        type="purchase",
        wallet_id=wallet,
        merchant_id="M1",
        terminal_id="T1",
        occurred_at="2026-01-05T08:59:00+09:00",
        amount=1200,
        points_used=0,
    )
    canonical = body.model_dump_json()
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return Submission(
        "T1",
        key,
        digest,
        body,
        canonical,
        receipt=Receipt(app, f"j-{key}", None, secret_until_us),
        key_id=key_id,
        key_expires_at_us=expires_at_us,
    )


def stored(books: Books) -> tuple[int, int]:
    """Payments and remembered declines."""
    with books.engine.connect() as c:
        return (
            c.execute(text("SELECT count(*) FROM payment")).scalar_one(),
            c.execute(text("SELECT count(*) FROM idempotency_key")).scalar_one(),
        )


def test_a_terminal_key_revoked_after_its_request_was_let_in_posts_nothing(database_url) -> None:
    books = setup(database_url)
    try:
        keys = Keys(books.engine, books.clock)
        _, kept = keys.create("terminal", terminal_id="T1")
        _, revoked = keys.create("terminal", terminal_id="T1")
        keys.revoke(revoked["id"])
        results = books.ledger.submit([sale("a", revoked["id"]), sale("b", kept["id"], wallet="W2")])
        assert results[0].status == 401
        assert (results[0].body["code"], results[0].body["detail"]) == ("unauthenticated", KEY_ENDED)
        assert not results[0].remember
        assert results[1].status == 201  # the group's other requests are posted
        assert stored(books) == (1, 0)  # nothing of the refused one, not even its answer
        # The terminal's retry under a key that is good posts it: nothing was remembered.
        assert books.ledger.submit([sale("a", kept["id"])])[0].status == 201
        # Requests without a key (the history import's) are not checked.
        assert books.ledger.submit([sale("c", None, wallet="W3")])[0].status == 201
        check = queries.ledger_check(books.engine)
        assert check["ok"], check
    finally:
        books.close()


def test_a_terminal_key_that_expired_before_its_request_is_posted_posts_nothing(database_url) -> None:
    books = setup(database_url)
    try:
        keys = Keys(books.engine, books.clock)
        _, made = keys.create("terminal", terminal_id="T1", expires_in_days=1)
        expiry = to_us(dt.datetime.fromisoformat(made["expires_at"]))
        assert expiry - to_us(START) - DAY_US in range(100)  # a day from its creation
        books.at(expiry)
        before = books.ledger.submit([sale("before", made["id"], expires_at_us=expiry)], accepted_at_us=expiry - 1)
        assert before[0].status == 201
        # Posted at its expiry's instant: expired (SPEC §9.3, as the API's `expires_at_us <= now`).
        late = books.ledger.submit(
            [sale("after", made["id"], wallet="W2", expires_at_us=expiry)], accepted_at_us=expiry
        )[0]
        assert (late.status, late.body["code"], late.remember) == (401, "unauthenticated", False)
        assert stored(books) == (1, 0)
    finally:
        books.close()


def test_a_receipt_of_an_app_revoked_after_it_was_checked_posts_nothing(database_url) -> None:
    books = setup(database_url)
    try:
        apps = Apps(books.engine, Settings(data_key_b64=sealing.generate_key_b64()), books.clock)
        apps.add("app_gone")
        apps.add("app_kept")
        # The ledger holds its catalog already (the revocation must move it, found by review).
        assert books.ledger.submit([sale("warm", None, app="app_gone", wallet="W9")])[0].status == 201
        apps.revoke("app_gone")
        gone, kept = books.ledger.submit(
            [sale("a", None, app="app_gone"), sale("b", None, app="app_kept", wallet="W2")]
        )
        assert (gone.status, gone.body["code"], gone.body["detail"], gone.remember) == (
            422,
            "receipt_invalid",
            APP_REVOKED,
            False,
        )
        assert kept.status == 201
        assert stored(books) == (2, 0)
    finally:
        books.close()


def test_a_receipt_of_a_secret_that_ended_before_it_is_posted_posts_nothing(database_url) -> None:
    """A rotated-out secret stays valid 24 h (`apps.ROTATION_GRACE_US`); a receipt it signed, let in
    just before its end, is refused when posted after it (the API's `until > now`, as posting's)."""
    books = setup(database_url)
    try:
        ends = books.clock.now_us() + 1_000_000
        before = books.ledger.submit([sale("before", None, secret_until_us=ends)], accepted_at_us=ends - 1)[0]
        assert before.status == 201
        late, current = books.ledger.submit(
            [sale("late", None, wallet="W2", secret_until_us=ends), sale("current", None, wallet="W3")],
            accepted_at_us=ends,
        )
        assert (late.status, late.body["code"], late.body["detail"], late.remember) == (
            422,
            "receipt_invalid",
            SECRET_ENDED,
            False,
        )
        assert current.status == 201  # a current secret's receipt: no end
        assert stored(books) == (2, 0)  # nothing of the refused one, not even its answer
        # The payment app signs it again with its current secret: the same key posts it.
        assert books.ledger.submit([sale("late", None, wallet="W2")], accepted_at_us=ends)[0].status == 201
        # The end crosses the committer child's pipe with the receipt.
        crossed = pickle.loads(pickle.dumps(sale("x", None, secret_until_us=ends)))
        assert crossed.receipt is not None and crossed.receipt.secret_until_us == ends
    finally:
        books.close()


def test_a_group_decided_ahead_of_a_revocation_is_decided_again_and_posts_nothing_of_that_key(
    postgres_url,
) -> None:
    """The gap the check closes: a group decided (in a snapshot, outside the lock) before the key is
    revoked, written after the revocation's answer."""
    books = setup(postgres_url)
    try:
        keys = Keys(books.engine, books.clock)
        _, made = keys.create("terminal", terminal_id="T1")
        decided = books.ledger.decide_ahead([sale("a", made["id"])], accepted_at_us=books.clock.now_us())
        assert decided is not None and decided.results[0].status == 201  # as decided before the revocation
        keys.revoke(made["id"])
        assert not books.ledger.write_decided(decided)  # the revocation moved the head: nothing written
        assert stored(books) == (0, 0)

        # The same through the pipeline the committer runs: decided again under the lock, refused.
        _, other = keys.create("terminal", terminal_id="T1")
        # A group posted since the revocation: the ledger holds the catalog as it stands now.
        assert books.ledger.submit([sale("c", None, wallet="W3")])[0].status == 201
        pipeline = PostingPipeline(books.ledger)
        with pipeline:
            pipeline._dispatch = _hold(pipeline, lambda: keys.revoke(other["id"]))  # type: ignore[method-assign]
            future = pipeline.submit([sale("b", other["id"])], accepted_at_us=books.clock.now_us())
        assert pipeline.redecided == 1
        result = future.result()[0]
        assert (result.status, result.body["code"]) == (401, "unauthenticated")
        assert stored(books) == (1, 0)
    finally:
        books.close()


def _hold(pipeline: PostingPipeline, between):
    """`pipeline._dispatch` that runs `between` after the group is decided, before it is written."""
    dispatch = pipeline._dispatch

    def held(decided):
        between()
        return dispatch(decided)

    return held


def test_revoking_a_key_of_another_role_moves_no_catalog_and_a_submission_keeps_its_key_on_the_pipe(
    database_url,
) -> None:
    books = setup(database_url)
    try:
        keys = Keys(books.engine, ManualClock(to_us(START)))

        def catalog_version() -> int:
            with books.engine.connect() as c:
                return c.execute(text("SELECT catalog_version FROM ledger_head")).scalar_one()

        before = catalog_version()
        _, finance = keys.create("finance", expires_in_days=3)
        keys.revoke(finance["id"])
        assert catalog_version() == before
        # A terminal key's expiry comes with its requests (`Submission.key_expires_at_us`).
        _, terminal = keys.create("terminal", terminal_id="T1", expires_in_days=3)
        assert catalog_version() == before
        keys.revoke(terminal["id"])
        keys.revoke(terminal["id"])  # again: changes nothing
        assert catalog_version() == before + 1
        # How the API process hands a submission to the committer child.
        handed = pickle.loads(pickle.dumps(sale("a", terminal["id"], expires_at_us=123)))
        assert (handed.key_id, handed.key_expires_at_us) == (terminal["id"], 123)
    finally:
        books.close()
