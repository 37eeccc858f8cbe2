"""Operational subcommands of `setapay`: database migrations, serving, keys."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from engine.audit import OPERATOR

if TYPE_CHECKING:
    from pathlib import Path

    from engine.settings import Settings
    from engine.store.config import Config
    from engine.store.keys import Keys
    from engine.store.ledger import Ledger


def _settings() -> Settings:
    """The settings from the environment; a setting out of its range ends the command with its
    name and rule (exit 2), not a traceback."""
    from pydantic import ValidationError

    from engine.settings import Settings

    try:
        return Settings()
    except ValidationError as error:
        for problem in error.errors(include_url=False, include_input=False):
            name = "SETAPAY_" + "_".join(str(part) for part in problem["loc"]).upper()
            print(f"setapay: {name}: {problem['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_db(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from engine.store import db

    settings = _settings()
    try:
        if args.action == "upgrade":
            db.upgrade(settings.database_url, args.revision or "head")  # a revision named was ignored
        else:
            db.downgrade(settings.database_url, args.revision or "base")
    except CommandError as exc:  # a revision this release does not know
        print(f"setapay db {args.action}: {exc}; nothing was changed", file=sys.stderr)
        return 2
    print(f"database {args.action}d: {_redacted(settings.database_url)}", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    # Prometheus multiprocess mode: every worker writes its samples (*.db files) under one
    # directory, emptied of them now (before anything imports prometheus_client), so /metrics adds
    # up this run's workers only.
    metrics_dir = Path(os.environ.get("SETAPAY_METRICS_DIR") or tempfile.mkdtemp(prefix="setapay-metrics-"))
    metrics_dir.mkdir(parents=True, exist_ok=True)
    if not _hold_metrics_dir(metrics_dir):
        # A second server given the same directory emptied it under the running one, whose
        # counters were gone until it restarted, even when the second could not start (helper-93).
        print(
            f"setapay serve: the metrics directory {metrics_dir} is in use by another running server "
            "(SETAPAY_METRICS_DIR); give this one its own; nothing was removed",
            file=sys.stderr,
        )
        return 3
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    import uvicorn

    from engine.store import db

    # Migrate once here so that several workers do not race to migrate.
    db.upgrade(_settings().database_url)
    trusted = _settings().trusted_proxies
    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,  # ours is api/access_log.py: one JSON line per request, with its id
        http="api.http_protocol:BoundedHttpToolsProtocol",  # a bounded head (431), problem+json 400s
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )
    return 0


_METRICS_DIR_LOCK: list[object] = []  # the open lock file of the metrics directory this server holds


def _hold_metrics_dir(metrics_dir: Path) -> bool:
    """Whether this process now holds `metrics_dir` (an exclusive lock on a file in it, held
    until the process ends): False when another running server holds it."""
    import fcntl

    handle = open(metrics_dir / ".setapay-serve.lock", "a")  # noqa: SIM115 (held for the process's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    _METRICS_DIR_LOCK.append(handle)
    return True


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a TCP port is 1 to 65535, not {port}")
    return port


def _keys_store() -> Keys:
    from engine.clock import SystemClock
    from engine.store import db
    from engine.store.keys import Keys

    settings = _settings()
    db.upgrade(settings.database_url)
    return Keys(db.make_engine(settings.database_url), SystemClock(settings.clock_offset_s))


def _cmd_keys(args: argparse.Namespace) -> int:
    from engine.errors import EngineError

    keys = _keys_store()
    try:
        secret, record = keys.create(args.role, args.merchant, args.terminal, args.expires_in_days, actor=OPERATOR)
    except EngineError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2
    # The key is shown once, alone on stdout, so scripts can capture it; its id goes to stderr.
    print(secret)
    print(f"key id: {record['id']}", file=sys.stderr)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    import json

    listing = _keys_store().list()
    if args.json:
        print(json.dumps(listing, ensure_ascii=False, indent=1))
        return 0
    columns = ["id", "role", "merchant_id", "terminal_id", "created_at", "expires_at", "revoked_at", "last_used_at"]
    rows = [[str(k[c]) if k[c] is not None else "-" for c in columns] for k in listing]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    import re

    from engine import limits
    from engine.errors import EngineError

    if not re.fullmatch(limits.ID_PATTERN, args.id):
        print("error: invalid_request: key id is not valid", file=sys.stderr)
        return 2
    try:
        record = _keys_store().revoke(args.id, actor=OPERATOR)
    except EngineError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2
    print(f"revoked key {record['id']} at {record['revoked_at']}")
    return 0


def _cmd_apps(args: argparse.Namespace) -> int:
    """`setapay apps add|rotate|revoke|list`: payment apps and their receipt secrets (SPEC §9.1)."""
    import json

    from engine import sealing
    from engine.errors import EngineError
    from engine.store import db
    from engine.store.apps import Apps

    settings = _settings()
    db.upgrade(settings.database_url)
    apps = Apps(db.make_engine(settings.database_url), settings)
    try:
        if args.apps_command == "list":
            for record in apps.list():
                print(json.dumps(record))
        elif args.apps_command == "revoke":
            print(json.dumps(apps.revoke(args.app_id)))
        else:
            # The secret is shown once, alone on stdout, so the app's operator can capture it.
            print(apps.add(args.app_id) if args.apps_command == "add" else apps.rotate(args.app_id))
    except EngineError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2
    except sealing.SealingError as exc:  # its message never holds a key or a secret
        print(
            f"setapay apps: {exc}: give the key the API seals with (SETAPAY_DATA_KEY_B64); nothing was changed",
            file=sys.stderr,
        )
        return 2
    return 0


def _cmd_lifecycle(args: argparse.Namespace) -> int:
    import datetime as dt
    import json

    from engine.clock import SystemClock
    from engine.store import db, lifecycle
    from engine.store.ledger import Ledger
    from engine.timeutil import format_instant, to_us

    settings = _settings()
    clock = SystemClock(settings.clock_offset_s)  # the engine's clock, as every process reads it
    now = clock.now_us()
    as_of = now
    if args.as_of:
        try:
            instant = dt.datetime.fromisoformat(args.as_of)
        except ValueError:
            instant = None
        if instant is None or instant.tzinfo is None:
            print("--as-of is an instant with an offset, e.g. 2027-01-08T00:00:00+09:00", file=sys.stderr)
            return 2
        as_of = to_us(instant)
        # Points credited or expired ahead of time cannot be taken back: a run is of what is due by
        # now, or by an instant before (a run that was missed), never of what is still to come.
        if as_of > now:
            print(
                f"--as-of {args.as_of} is after the engine's clock ({format_instant(now)}): "
                f"nothing is {'credited' if args.command == 'credit' else 'expired'} ahead of time",
                file=sys.stderr,
            )
            return 2
    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    try:
        run = lifecycle.credit_due if args.command == "credit" else lifecycle.expire_due
        print(json.dumps(run(Ledger(engine, clock), as_of), ensure_ascii=False))
    finally:
        engine.dispose()
    return 0


def _cmd_purge_answers(args: argparse.Namespace) -> int:
    """`setapay purge-answers`: forget remembered answers older than the retention (daily, like expire)."""
    import json

    from engine.clock import SystemClock
    from engine.store import db, lifecycle
    from engine.store.ledger import Ledger

    settings = _settings()
    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    try:
        ledger = Ledger(engine, SystemClock(settings.clock_offset_s))
        print(json.dumps(lifecycle.purge_remembered_answers(ledger, settings.idempotency_retention_days)))
    finally:
        engine.dispose()
    return 0


def _cmd_deliver(args: argparse.Namespace) -> int:
    """`setapay deliver`: the webhook delivery worker alone (SPEC §10), until SIGTERM or Ctrl-C;
    `--once`: deliver what is due now, then exit. Safe next to `setapay serve`'s own workers."""
    import signal
    import threading

    from engine.clock import SystemClock
    from engine.store import db
    from engine.store.webhooks import Webhooks

    settings = _settings()
    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    webhooks = Webhooks(engine, settings, SystemClock(settings.clock_offset_s))
    try:
        if args.once:
            with webhooks.client() as client:
                attempts = 0
                while done := webhooks.deliver_once(client):
                    attempts += done
            print(f"{attempts} delivery attempts", file=sys.stderr)
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        webhooks.run(stop, settings.webhook_delivery_interval_s or 1.0)
    finally:
        engine.dispose()
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    """`setapay backup OUT`: a consistent copy of the configured database (pg_dump custom format on
    PostgreSQL, the online backup API on SQLite), safe while the API posts."""
    from pathlib import Path

    from engine.store import backup

    try:
        backup.backup(_settings().database_url, Path(args.out))
    except backup.BackupError as error:
        print(f"setapay backup: {error}", file=sys.stderr)
        return 2
    print(f"backed up to {args.out}", file=sys.stderr)
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    """`setapay restore IN`: the backup into the configured database, which must be empty; then
    `setapay reconcile` proves the copy whole."""
    from pathlib import Path

    from engine.store import backup

    try:
        backup.restore(Path(args.backup), _settings().database_url)
    except backup.BackupError as error:
        print(f"setapay restore: {error}", file=sys.stderr)
        return 2
    print(f"restored {args.backup}; run `setapay reconcile` on it", file=sys.stderr)
    return 0


def _finance_context() -> tuple[Settings, Ledger, Config]:
    from engine.clock import SystemClock
    from engine.store import db
    from engine.store.config import Config
    from engine.store.ledger import Ledger

    settings = _settings()
    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    return settings, Ledger(engine, SystemClock(settings.clock_offset_s)), Config(engine, settings)


def _cmd_settle(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from engine.errors import EngineError
    from engine.store import settlement

    settings, ledger, config = _finance_context()
    try:
        created, view = settlement.run(ledger, config, settings, args.period)
    except EngineError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 2
    row = settlement.get(ledger, view["id"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"statement-{args.period}.json").write_text(
        json.dumps(view["statement"], ensure_ascii=False, indent=1), encoding="utf-8"
    )
    (out / f"statement-{args.period}.csv").write_text(row.csv_text, encoding="utf-8")
    if row.zengin_file:
        (out / f"payout-{args.period}.zengin.txt").write_bytes(settlement.payout_file(settings, row))
    print(
        json.dumps(
            {
                "run_id": view["id"],
                "created": created,
                "out": str(out),
                "totals": view["statement"]["document"]["totals"],
            },
            ensure_ascii=False,
        )
    )
    return 0


def _cmd_verify_statement(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine import keyring, strict_json
    from engine.settlement import signing, statement

    try:
        key = signing.load_public_key(args.public_key) if args.public_key else keyring.signing_public_key(_settings())
    except ValueError as exc:
        print(f"setapay verify-statement: --public-key is not an Ed25519 public key ({exc})", file=sys.stderr)
        return 2
    if key is None:
        print(f"{keyring.NO_SIGNING_KEY}; or pass --public-key", file=sys.stderr)
        return 2
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"setapay verify-statement: {exc}", file=sys.stderr)
        return 2
    try:
        # Read as the API reads a body: UTF-8, and an object holding a key twice is no statement
        # (a reader may take the first of two values where the signature covered the last).
        signed = strict_json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        print(f"INVALID: not a signed statement ({exc})")
        return 1
    if not signing.verify_document(key, signed):
        print("INVALID: the statement or its signature was altered, or another key signed it")
        return 1
    if statement.kind_of(signed["document"]) is None:  # the ward's key signs chain heads too
        print("INVALID: signed by this key, but not a settlement statement (a run's or a merchant's)")
        return 1
    print("valid")
    return 0


def _cmd_reconcile(args: argparse.Namespace) -> int:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.store import finance

    settings, ledger, _ = _finance_context()
    if args.heads is not None:
        settings = settings.model_copy(update={"heads_dir": args.heads})
    total = finance.payment_count(ledger)
    from rich.console import Console

    # The bar goes to stderr, so `--json` output on stdout parses.
    with Progress(
        TextColumn("re-rating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True)
    ) as bar:
        task = bar.add_task("re-rating", total=total)
        report = finance.reconcile(ledger, settings, progress=lambda n: bar.advance(task, n), wait=True)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        for name, check in report["checks"].items():
            print(f"{'PASS' if check['pass'] else 'FAIL'} {name}")
            if check.get("problem"):  # a check that could not read its rows says why
                print(f"     {check['problem']}")
            if "copies_compared" in check:
                print(f"     {check['copies_compared']} copies of the signed heads compared")
            for row in (check.get("rows") or [])[:10]:
                print(f"     {json.dumps(row, ensure_ascii=False)}")
    return 0 if report["ok"] else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    """Rate a historical window under a draft campaign (a JSON file), writing nothing."""
    import json
    from pathlib import Path

    from pydantic import ValidationError

    from engine.model import Campaign, window_bound_us
    from engine.store import simulate

    try:
        draft = Campaign.model_validate_json(Path(args.campaign).read_text())
        window = [window_bound_us(v) for v in (args.from_, args.to)]
    except (OSError, ValueError, ValidationError) as error:
        print(f"invalid draft or window: {error}")
        return 2
    if window[0] >= window[1]:
        print("--to must be after --from")
        return 2
    settings, ledger, _ = _finance_context()
    print(json.dumps(simulate.simulate(ledger.engine, draft, window[0], window[1]), ensure_ascii=False, indent=1))
    return 0


def _cmd_sign_heads(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.store import finance

    settings, ledger, _ = _finance_context()
    if args.out is not None:
        settings = settings.model_copy(update={"heads_dir": args.out})
    for day in finance.sign_chain_heads(ledger, settings):
        print(f"signed the chain head of {day}")
    if settings.heads_dir is not None:
        try:  # what the signing could not copy, once more, so a failure is this command's
            finance.keep_head_copies(ledger, Path(settings.heads_dir))
        except OSError as error:
            print(f"setapay sign-heads: copies not kept in {settings.heads_dir}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"every signed head has its copy in {settings.heads_dir}")
    return 0


def _cmd_seal_payout_files(args: argparse.Namespace) -> int:
    """`setapay seal-payout-files`: seal with the data key every stored payout file still in plain
    text (runs stored before files were sealed), once; idempotent. Only with the data key the
    engine seals with: the configured one, else ./setapay-keys/data.key; none is made here, and
    one that does not open what is sealed already is refused. Never prints a file or the key."""
    import json

    from engine import keyring, sealing
    from engine.store import settlement

    try:
        found = keyring.existing_data_key(_settings())
    except sealing.DataKeyError as exc:  # its message never holds the key
        print(f"setapay seal-payout-files: {exc}; nothing was sealed", file=sys.stderr)
        return 2
    if found is None:
        print(f"setapay seal-payout-files: {keyring.NO_DATA_KEY}; nothing was sealed", file=sys.stderr)
        return 2
    key, key_from = found
    _, ledger, _ = _finance_context()
    try:
        report = settlement.seal_payout_files(ledger, key, key_from)
    except sealing.SealingError as exc:
        print(
            f"setapay seal-payout-files: the data key from {key_from} is not the one this database is sealed "
            f"with ({exc}); nothing was sealed",
            file=sys.stderr,
        )
        return 2
    finally:
        ledger.engine.dispose()
    sealed, already = report["sealed"], report["already_sealed"]
    print(
        json.dumps(
            {
                "sealed": len(sealed),
                "already_sealed": already,
                "without_payout_file": report["without_payout_file"],
                "sealed_runs": sealed,
                "data_key_from": key_from,
                "data_key_checked_against": report["key_checked_against"],
            }
        )
    )
    if not report["key_checked_against"]:
        print(
            "setapay seal-payout-files: nothing in the database was sealed before to check the data key against: "
            f"make sure {key_from} holds the key the API seals with",
            file=sys.stderr,
        )
    if sealed:
        print(
            f"sealed {len(sealed)} payout file(s) stored in plain text with the data key from {key_from}; "
            f"{already} sealed already",
            file=sys.stderr,
        )
    else:
        print(f"nothing to seal: every stored payout file is sealed already ({already})", file=sys.stderr)
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    """Print the audit log as JSON lines, oldest first, filtered by instant and target."""
    import json

    from engine.model import window_bound_us
    from engine.store import audit

    bounds: list[int | None] = []
    for name, value in (("--from", args.from_), ("--to", args.to)):
        if value is None:
            bounds.append(None)
            continue
        try:
            bounds.append(window_bound_us(value))
        except ValueError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 2
    if bounds[0] is not None and bounds[1] is not None and bounds[1] <= bounds[0]:
        print("--to must be after --from", file=sys.stderr)  # as the API's window (api.strict.window)
        return 2
    _, ledger, _ = _finance_context()
    after = 0
    while True:
        page, last = audit.entries(ledger.engine, bounds[0], bounds[1], args.target, after, 1_000)
        for entry in page:
            print(json.dumps(entry, ensure_ascii=False))
        if last is None:
            return 0
        after = last


def _cmd_import(args: argparse.Namespace) -> int:
    """`setapay import FILE.csv`: the program's past transactions (docs/IMPORT.md), in groups that
    each commit alone (a killed run re-run continues), bad lines to a per-line error report."""
    import contextlib
    import json
    import re
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine import limits
    from engine.importing import HeaderError
    from engine.store import importer
    from engine.store.ledger import StampBehindFloor, StampBehindLedger
    from engine.timeutil import format_instant

    path = Path(args.file)
    if not re.fullmatch(limits.ID_PATTERN, args.source):
        print(f"--source must match {limits.ID_PATTERN}", file=sys.stderr)
        return 2
    if args.group < 1:
        print("--group must be at least 1", file=sys.stderr)
        return 2
    errors_path = Path(args.errors) if args.errors else path.with_name(path.name + ".errors.csv")
    try:
        with path.open("rb") as raw:
            total = max(sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 20), b"")) - 1, 0)
    except OSError as error:
        print(f"setapay import: {error}", file=sys.stderr)
        return 2
    _, ledger, _ = _finance_context()
    rate = TextColumn("{task.fields[rate]} rows/s")
    held = contextlib.ExitStack()
    try:
        # Before the error report is opened: a refused run truncated the running one's (helper-100).
        held.enter_context(importer.import_slot(ledger))
    except importer.ImportBusy as error:
        print(f"setapay import: {error}; nothing was imported", file=sys.stderr)
        return 2
    with (
        held,
        path.open(encoding="utf-8-sig", newline="") as lines,  # "-sig": Excel's "CSV UTF-8" starts with a BOM
        errors_path.open("w", encoding="utf-8", newline="") as errors,
        Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            rate,
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar,
    ):
        task = bar.add_task("importing", total=total, rate="-")

        def progress(n: int) -> None:
            bar.advance(task, n)
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, rate=f"{bar.tasks[task].completed / elapsed:,.0f}" if elapsed else "-")

        try:
            report = importer.import_history(
                ledger, lines, errors, source=args.source, group=args.group, progress=progress, slot_held=True
            )
        except HeaderError as error:
            print(f"setapay import: {error}", file=sys.stderr)
            return 2
        except UnicodeDecodeError as error:
            byte = error.object[error.start]
            print(
                f"setapay import: stopped: the file is not UTF-8 ({error.reason}: byte {byte:#04x} in the block read "
                "after the last group committed); the groups committed before stay, and a re-run skips them",
                file=sys.stderr,
            )
            return 2
        except importer.BudgetLoweredLater as error:
            print(
                f"setapay import: stopped: {error}. The groups committed before stay; a re-run skips them.",
                file=sys.stderr,
            )
            return 1
        except StampBehindLedger as error:
            print(
                f"setapay import: stopped: a payment was accepted at {format_instant(error.floor_us)} while this "
                "import ran (an API taking payments?): history posted after it would interleave with it. Stop "
                "every API process; the groups committed before stay, and a re-run skips them and reports the "
                "lines before that payment as out_of_order.",
                file=sys.stderr,
            )
            return 1
        except StampBehindFloor as error:
            print(
                f"setapay import: stopped: {format_instant(error.at_us)} was closed while this import ran "
                f"(a settlement run or signed chain heads; nothing may be stamped before "
                f"{format_instant(error.floor_us)} now). The groups committed before stay; a re-run skips them "
                "and reports the lines left as out_of_order.",
                file=sys.stderr,
            )
            return 1
    summary = report.summary()
    summary["errors_file"] = str(errors_path)
    print(json.dumps(summary, ensure_ascii=False))
    return 1 if report.errors else 0


def _redacted(url: str) -> str:
    """`url` without its user and password (the last `@` ends them: a password may hold one)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="apply or revert database migrations")
    p.add_argument("action", choices=["upgrade", "downgrade"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=_cmd_db)

    p = sub.add_parser("serve", help="run the HTTP API with uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_cmd_serve)

    for name, text in (
        ("credit", "credit pending awards due by --as-of (idempotent)"),
        ("expire", "expire points whose validity ended by --as-of (idempotent)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--as-of", help="RFC 3339 instant with offset, not after the engine's clock (default: now)")
        p.set_defaults(func=_cmd_lifecycle)

    p = sub.add_parser(
        "purge-answers",
        help="forget remembered idempotency answers older than SETAPAY_IDEMPOTENCY_RETENTION_DAYS (at least 30)",
    )
    p.set_defaults(func=_cmd_purge_answers)

    p = sub.add_parser("deliver", help="deliver webhook events (the worker `serve` also runs), until stopped")
    p.add_argument("--once", action="store_true", help="deliver what is due now, then exit")
    p.set_defaults(func=_cmd_deliver)

    p = sub.add_parser("settle", help="settle a period (idempotent) and write statement, CSV and Zengin file")
    p.add_argument("--period", required=True, help="2026-12 (monthly) or 2026-12-H1 / 2026-12-H2 (semi-monthly)")
    p.add_argument("--out", default="settlement-out")
    p.set_defaults(func=_cmd_settle)

    p = sub.add_parser("verify-statement", help="check a signed settlement statement")
    p.add_argument("file")
    p.add_argument("--public-key", help="the ward's Ed25519 public key (base64 or PEM); default: from settings")
    p.set_defaults(func=_cmd_verify_statement)

    p = sub.add_parser("reconcile", help="every ledger and settlement invariant, with a full re-rate")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--heads", help="compare the signed heads with their copies in this directory (default: SETAPAY_HEADS_DIR)"
    )
    p.set_defaults(func=_cmd_reconcile)

    p = sub.add_parser("simulate", help="rate a historical window under a draft campaign, writing nothing")
    p.add_argument("--campaign", required=True, help="the draft campaign record (JSON file)")
    p.add_argument("--from", dest="from_", required=True, help="RFC 3339 instant with offset (inclusive)")
    p.add_argument("--to", required=True, help="RFC 3339 instant with offset (exclusive)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("sign-heads", help="sign the posting chain head of every finished business day")
    p.add_argument(
        "--out",
        help="copy each signed head into this directory, kept outside the database (default: SETAPAY_HEADS_DIR)",
    )
    p.set_defaults(func=_cmd_sign_heads)

    p = sub.add_parser(
        "seal-payout-files",
        help="seal with the data key the payout files of runs stored before files were sealed (once; idempotent)",
    )
    p.set_defaults(func=_cmd_seal_payout_files)

    p = sub.add_parser("backup", help="write a consistent copy of the database to OUT (safe under load)")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(func=_cmd_backup)
    p = sub.add_parser("import", help="import the program's past transactions from a CSV file (docs/IMPORT.md)")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--source", default="import", help="the app id the payment ids belong to (default: import)")
    p.add_argument("--errors", help="where to write the per-line error report (default: FILE.csv.errors.csv)")
    p.add_argument("--group", type=int, default=1000, help="payments per committed group (default 1000)")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("restore", help="restore a backup into the configured database, which must be empty")
    p.add_argument("backup", metavar="IN")
    p.set_defaults(func=_cmd_restore)

    apps = sub.add_parser("apps", help="payment apps whose receipts the engine accepts")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)
    for name, text in (
        ("add", "register an app and print its receipt secret once"),
        ("rotate", "add a new secret and print it once; older ones stay valid 24 h"),
        ("revoke", "end every secret of the app at once"),
    ):
        p = apps_sub.add_parser(name, help=text)
        p.add_argument("app_id")
        p.set_defaults(func=_cmd_apps)
    p = apps_sub.add_parser("list", help="the apps, never their secrets")
    p.set_defaults(func=_cmd_apps)

    p = sub.add_parser("audit", help="print the audit log as JSON lines, oldest first")
    p.add_argument("--from", dest="from_", help="RFC 3339 instant with offset (inclusive)")
    p.add_argument("--to", help="RFC 3339 instant with offset (exclusive)")
    p.add_argument("--target", help="only entries about this target, e.g. merchant:M001")
    p.set_defaults(func=_cmd_audit)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("create", help="create a key and print it once (its id on stderr)")
    p.add_argument("--role", required=True, help="admin, finance, merchant, terminal, ...")
    p.add_argument("--merchant")
    p.add_argument("--terminal")
    p.add_argument("--expires-in-days", type=int, help="the key stops working after N days (1 to 3650)")
    p.set_defaults(func=_cmd_keys)
    p = keys_sub.add_parser("list", help="every key: id, role, scope, created, expires, revoked, last used")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_keys_list)
    p = keys_sub.add_parser("revoke", help="revoke a key by its id (API processes refuse it within 5 s)")
    p.add_argument("id")
    p.set_defaults(func=_cmd_keys_revoke)
