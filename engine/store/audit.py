"""The audit log's table (SPEC §9.5): append an entry inside the caller's transaction, read
entries back, and verify the chain.

To record a change, call `record` in the same transaction as the change, after
any `ledger_head` lock that transaction takes (every writer locks `ledger_head`
before `audit_head`, never the other way round, so they cannot deadlock; a row a
writer locks besides, as a closeout locks its terminal's, comes after `ledger_head`
and before `audit_head` too)::

    from engine import audit as audit_core
    from engine.store import audit

    with Session(engine) as session, session.begin():
        ...  # the change itself
        audit.record(session, actor, "key.revoke", f"key:{key_id}", before, after)

`actor` is anything with `key_id` and `role` (an `engine.audit.Actor`, or the API's
`Principal`); the command line uses `engine.audit.OPERATOR`. `before` and `after`
are plain JSON-able dicts (or None); they are masked here (bank account numbers
to their last 4 digits, secrets and keys redacted), so pass the record as it is.

`record` locks the `audit_head` row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's
`BEGIN IMMEDIATE` already makes the transaction the only writer), so entries
from any number of API processes get gapless sequences and one linear chain.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine import audit as core
from engine.audit import Actor
from engine.store.models import AuditHeadRow, AuditLogRow, LedgerHead
from engine.timeutil import format_instant, now_us

TARGET_MAX = 200
ACTION_MAX = 64


def _lock_head(session: Session) -> AuditHeadRow:
    stmt = select(AuditHeadRow).where(AuditHeadRow.id == 1)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.execute(stmt).scalar_one()


def last_before(session: Session, end_us: int) -> tuple[int, str | None]:
    """The sequence and hash of the last entry dated before `end_us` (0 and None if none), read
    with the head locked: an entry appended meanwhile in another transaction is committed first
    (and so counted here if dated before `end_us`), or is appended after this transaction ends
    and dated past the stamp floor it moved (`record`). Chain-head signing calls it under the
    sequencer lock, which comes before the audit head's."""
    _lock_head(session)
    last = session.execute(
        select(AuditLogRow.sequence, AuditLogRow.hash)
        .where(AuditLogRow.at_us < end_us)
        .order_by(AuditLogRow.sequence.desc())
        .limit(1)
    ).first()
    return (last.sequence, last.hash) if last else (0, None)


def latest(session: Session, action: str, target: str) -> int | None:
    """The sequence of the latest entry recording `action` on `target`, if any (by the index on
    target and sequence). Sequences order changes by their commits, whatever the clocks of the
    hosts that made them said."""
    return session.execute(
        select(func.max(AuditLogRow.sequence)).where(AuditLogRow.target == target, AuditLogRow.action == action)
    ).scalar()


def record(
    session: Session,
    actor: Actor,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    at_us: int | None = None,
) -> int:
    """Append one masked entry to the chain in `session`'s transaction; returns its sequence.

    The entry is dated `at_us` (the clock's instant by default), or at the ledger head's stamp
    floor if that is later: a day whose heads were signed (the floor moved to its end) takes no
    entry dated inside it afterwards, whatever the recording host's clock says. The floor is read
    once the audit head is locked: a signer holds that lock from its read of the day's last entry
    to its commit (`last_before`), so the floor read here is the one it left."""
    if not action or len(action) > ACTION_MAX or not target or len(target) > TARGET_MAX:
        raise ValueError(f"audit action and target must be 1..{ACTION_MAX} and 1..{TARGET_MAX} characters")
    key_id, role = str(actor.key_id), str(actor.role)
    before_json = core.canonical_json(core.mask(before))
    after_json = core.canonical_json(core.mask(after))
    head = _lock_head(session)
    floor = session.execute(select(LedgerHead.stamp_floor_us).where(LedgerHead.id == 1)).scalar()
    at_us = max(now_us() if at_us is None else at_us, floor or 0)
    sequence = head.last_sequence + 1
    digest = core.chain_hash(head.last_hash, sequence, at_us, key_id, role, action, target, before_json, after_json)
    session.add(
        AuditLogRow(
            sequence=sequence,
            at_us=at_us,
            actor_key_id=key_id,
            actor_role=role,
            action=action,
            target=target,
            before_json=before_json,
            after_json=after_json,
            hash=digest,
        )
    )
    head.last_sequence, head.last_hash = sequence, digest
    session.flush()
    return sequence


def as_dict(row: AuditLogRow) -> dict[str, Any]:
    import json

    return {
        "sequence": row.sequence,
        "at": format_instant(row.at_us),
        "actor": {"key_id": row.actor_key_id, "role": row.actor_role},
        "action": row.action,
        "target": row.target,
        "before": None if row.before_json is None else json.loads(row.before_json),
        "after": None if row.after_json is None else json.loads(row.after_json),
        "hash": row.hash,
    }


def entries(
    engine: Engine,
    from_us: int | None = None,
    to_us: int | None = None,
    target: str | None = None,
    after_sequence: int = 0,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], int | None]:
    """Entries in sequence order after `after_sequence` (keyset), filtered by instant
    [from, to) and exact target; returns the page and the last sequence when more may follow."""
    with Session(engine) as session:
        stmt = select(AuditLogRow).where(AuditLogRow.sequence > after_sequence)
        if from_us is not None:
            stmt = stmt.where(AuditLogRow.at_us >= from_us)
        if to_us is not None:
            stmt = stmt.where(AuditLogRow.at_us < to_us)
        if target is not None:
            stmt = stmt.where(AuditLogRow.target == target)
        rows = list(session.execute(stmt.order_by(AuditLogRow.sequence).limit(limit + 1)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return [as_dict(r) for r in rows], (rows[-1].sequence if more and rows else None)


def check(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Recompute the chain from the entries: altered entries (by sequence), gaps, and a head
    that does not end where the entries do."""
    breaks: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    previous_hash, expected = core.GENESIS_HASH, 1
    for row in session.execute(select(AuditLogRow).order_by(AuditLogRow.sequence)).yield_per(5_000).scalars():
        if row.sequence != expected:
            gaps.append({"expected_sequence": expected, "found_sequence": row.sequence})
        digest = core.chain_hash(
            previous_hash,
            row.sequence,
            row.at_us,
            row.actor_key_id,
            row.actor_role,
            row.action,
            row.target,
            row.before_json,
            row.after_json,
        )
        if digest != row.hash:
            breaks.append({"sequence": row.sequence, "problem": "entry altered: its hash does not match its contents"})
        previous_hash, expected = row.hash, row.sequence + 1
    head = session.get(AuditHeadRow, 1)
    if head is None and expected > 1:  # entries, and no head: the tail and the head deleted (helper-101)
        breaks.append({"sequence": expected - 1, "problem": "the audit head is missing"})
    elif head is not None and (head.last_sequence != expected - 1 or head.last_hash != previous_hash):
        breaks.append({"sequence": head.last_sequence, "problem": "the audit head does not match the last entry"})
    return {"breaks": breaks, "gaps": gaps}
