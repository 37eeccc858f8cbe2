"""The `setapay` console command."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from engine import collector


def _cmd_rate(args: argparse.Namespace) -> int:
    from engine import rating, vectors

    if args.engine and args.engine not in rating.ENGINES:
        print(f"engine {args.engine!r} is not available (built: {sorted(rating.ENGINES)})", file=sys.stderr)
        return 2
    if not args.check:
        if len(args.files) != 1:
            print("rate prints one file's results; use --check for several", file=sys.stderr)
            return 2
        results = vectors.rate_file(vectors.load(args.files[0]), args.engine)
        json.dump({"results": results}, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    failed = 0
    for path in args.files:
        vector = vectors.load(path)
        diffs = vectors.differences(vector.expected, vectors.rate_file(vector, args.engine))
        status = "ok" if not diffs else "FAIL"
        print(f"{status} {path} [{args.engine or rating.ENGINE}]")
        for line in diffs:
            print(f"  {line}")
        failed += bool(diffs)
    return 1 if failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine import demo, rating

    if args.engine and args.engine not in rating.ENGINES:
        print(f"engine {args.engine!r} is not available (built: {sorted(rating.ENGINES)})", file=sys.stderr)
        return 2
    if args.transactions < 1 or args.batch_size < 1:
        print("--transactions and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.serve and args.ledger_transactions <= 0:
        print("--serve needs a ledger: --ledger-transactions must be at least 1", file=sys.stderr)
        return 2
    columns = (TextColumn("rating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:

        def progress(total: int) -> Callable[[int], None]:
            task = bar.add_task("rating", total=total)
            return lambda done: bar.advance(task, done)

        summary = demo.run_rating_demo(
            args.transactions, args.seed, batch_size=args.batch_size, engine=args.engine, progress=progress
        )
    demo.print_summary(summary)
    if args.ledger_transactions <= 0:
        return 0
    # The second half posts part of the same day through the HTTP API into the
    # embedded ledger and checks the ledger from its postings.
    from setapay_demo.ledger import print_ledger_summary, run_ledger_demo

    with Progress(TextColumn("posting through the API"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:

        def posting(total: int) -> Callable[[int], None]:
            task = bar.add_task("posting", total=total)
            return lambda done: bar.advance(task, done)

        ledger_summary = run_ledger_demo(args.ledger_transactions, args.seed, progress=posting)
    print_ledger_summary(ledger_summary)
    ok = ledger_summary["check"]["ok"] and ledger_summary["reconciliation"]["ok"]
    if args.serve and ok:
        from setapay_demo.ledger import serve_demo

        serve_demo(ledger_summary, args.host, args.port)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="setapay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("rate", help="rate a vector file; --check compares with its expected results")
    p.add_argument("files", nargs="+")
    p.add_argument("--engine", choices=["python", "cython"], default=None)
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=_cmd_rate)

    p = sub.add_parser("demo", help="rate a synthetic Setagaya ward day and print what each campaign paid")
    p.add_argument("--transactions", type=int, default=30_000, help="purchases in the day (default 30000)")
    p.add_argument("--seed", type=int, default=20261215)
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--engine", choices=["python", "cython"], default=None)
    p.add_argument(
        "--ledger-transactions",
        type=int,
        default=2_000,
        help="how many of the day's purchases to post through the API into ./setapay-demo.db (0: skip)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="then keep the ledger up behind the API and the pages (/ui/), printing a merchant and a finance key",
    )
    p.add_argument("--host", default="127.0.0.1", help="with --serve (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="with --serve (default 8000)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _with_operations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from engine import cli_ops

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cli_ops.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _with_operations(build_parser()).parse_args(argv)
    if argv is None:  # the console command, a process of its own (not a test calling main)
        collector.tune()
    try:
        return args.func(args) or 0
    except Exception as exc:
        problem = operator_problem(exc)
        if problem is None:
            raise
        print(f"setapay: {problem}", file=sys.stderr)
        return 2


def operator_problem(exc: Exception) -> str | None:
    """What an operator can mend, said in a line, for a failure an operator causes (the database
    away or misnamed, a file or directory that is not there, a malformed key setting); None for
    any other, whose traceback stays (a deadlock, a missing table, a statement the code got wrong
    are not the operator's: helper-100). Never a password or a key: a database URL is not
    repeated, its password is cut out of the driver's text, and the key settings' errors never
    hold the key (helper-93: tracebacks for each)."""
    import sqlite3

    import psycopg
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from engine import sealing
    from engine.settlement import signing

    if type(exc) in (ArgumentError, NoSuchModuleError):  # not their subclasses: the code's own mistakes
        return "SETAPAY_DATABASE_URL is not a database URL this engine reads (sqlite:///… or postgresql+psycopg://…)"
    if isinstance(exc, OperationalError) and _connection_failed(exc.orig, psycopg, sqlite3):
        reason = _without_password(str(exc.orig))
        return f"the database cannot be reached or refused the connection ({reason}); check SETAPAY_DATABASE_URL"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    if isinstance(exc, (sealing.DataKeyError, signing.SigningKeyError)):
        return str(exc)
    return None


def _connection_failed(orig: BaseException | None, psycopg: Any, sqlite3: Any) -> bool:
    """Whether the driver failed to connect: psycopg's `OperationalError` itself (its subclasses
    are a statement's failures: deadlock, cancel, lock), or SQLite unable to open the file."""
    if type(orig) is psycopg.OperationalError:
        return True
    return isinstance(orig, sqlite3.OperationalError) and "unable to open database file" in str(orig)


def _without_password(text: str) -> str:
    """The driver's first line, with the configured URL's password (and anything after a `:` in
    a URL's user part) cut out: a password holding `@` is read as part of the host, which the
    driver names (helper-100)."""
    import os

    from sqlalchemy import make_url

    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"://[^/\s]*@", "://***@", line)
    configured = os.environ.get("SETAPAY_DATABASE_URL", "")
    if "://" in configured and "@" in configured.split("://", 1)[1]:
        credentials = configured.split("://", 1)[1].rsplit("@", 1)[0]
        secret = credentials.split(":", 1)[1] if ":" in credentials else ""
        for piece in {secret, *secret.split("@")} - {""}:
            line = line.replace(piece, "***")
        try:
            password = make_url(configured).password
        except Exception:  # noqa: BLE001 - a URL that does not parse has nothing more to cut
            password = None
        if password:
            line = line.replace(str(password), "***")
    return line


if __name__ == "__main__":
    sys.exit(main())
