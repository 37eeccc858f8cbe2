"""The access lines are gathered and handed to the logger together (`api.access_log._Lines`): one
record a flush, at most `FLUSH_S` after the first line, at once at `FLUSH_LINES`, and whatever
waits when the process exits; every line intact, in order."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from api import access_log


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("setapay.access")
    level, kept = logger.level, _Kept()
    logger.setLevel(logging.INFO)
    logger.addHandler(kept)
    yield kept.records
    logger.removeHandler(kept)
    logger.setLevel(level)


def _lines(records: list[logging.LogRecord]) -> list[dict]:
    return [json.loads(line) for r in records if r.name == "setapay.access" for line in r.getMessage().split("\n")]


def test_lines_of_a_burst_go_as_one_record_within_the_flush_interval(records):
    lines = access_log._Lines()

    async def main() -> tuple[int, int]:
        for i in range(10):
            lines.add(json.dumps({"event": "request", "n": i}))
        before = len(records)
        await asyncio.sleep(access_log.FLUSH_S * 3)
        return before, len(records)

    before, after = asyncio.run(main())
    assert before == 0 and after == 1
    assert [line["n"] for line in _lines(records)] == list(range(10))


def test_a_full_buffer_goes_at_once(records):
    lines = access_log._Lines()

    async def main() -> int:
        for i in range(access_log.FLUSH_LINES):
            lines.add(json.dumps({"n": i}))
        return len(records)  # no await: nothing else ran

    assert asyncio.run(main()) == 1
    assert [line["n"] for line in _lines(records)] == list(range(access_log.FLUSH_LINES))


def test_outside_a_loop_a_line_is_written_at_once(records):
    access_log._Lines().add(json.dumps({"n": 1}))
    assert _lines(records) == [{"n": 1}]


def test_lines_waiting_at_exit_are_written():
    program = (
        "import asyncio, json\n"
        "from api import access_log\n"
        "access_log.configure('info')\n"
        "async def main():\n"
        "    for i in range(3): access_log._LINES.add(json.dumps({'n': i}))\n"
        "asyncio.run(main())\n"  # the loop ends before the flush was due
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["n"] for line in done.stderr.splitlines()] == [0, 1, 2]


def test_every_logger_writes_json_lines_with_their_time():
    """A library's warning (psycopg's "error ignored terminating <Pipeline>") was a plain text line
    among the JSON ones, and no line said when it was written (helper-93)."""
    program = (
        "import logging\n"
        "from api import access_log\n"
        "access_log.configure('info')\n"
        "logging.getLogger('psycopg').warning('error ignored terminating %s', '<Pipeline>')\n"
        "logging.getLogger('engine.store').error('child killed')\n"
        "logging.getLogger('psycopg').info('below the libraries level')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("psycopg", "warning", "error ignored terminating <Pipeline>"),
        ("engine.store", "error", "child killed"),
    ]
    assert all(line["event"] == "log" and line["time"].endswith("Z") for line in lines)


def test_a_loop_that_ends_before_its_flush_leaves_none_behind(records):
    lines = access_log._Lines()

    async def first() -> None:
        lines.add(json.dumps({"n": 1}))  # its flush was due after this loop ended

    async def second() -> None:
        lines.add(json.dumps({"n": 2}))
        await asyncio.sleep(access_log.FLUSH_S * 3)

    asyncio.run(first())
    assert records == []
    asyncio.run(second())
    assert [line["n"] for line in _lines(records)] == [1, 2]


def test_a_forked_child_does_not_write_its_parents_lines():
    access_log._LINES.waiting.append(json.dumps({"n": "parent's"}))
    try:
        pid = os.fork()
        if pid == 0:  # the child: nothing of the parent's waits
            os._exit(0 if access_log._LINES.waiting == [] else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        access_log._LINES.waiting.clear()
