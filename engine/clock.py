"""The engine's clock: every instant the engine stamps (acceptance, postings, runs,
campaign versions) comes from one `Clock`, so a replay or a demo can run a
synthetic day at its own dates and tests can step over period ends.

Production uses `SystemClock()` with no offset. `SETAPAY_CLOCK_OFFSET_S`
shifts it for demos and end-to-end tests only.
"""

from __future__ import annotations

import threading
from typing import Protocol

from engine.timeutil import now_us as system_now_us


class Clock(Protocol):
    def now_us(self) -> int:
        """The current instant, in microseconds since the epoch."""
        ...


class SystemClock:
    def __init__(self, offset_s: int = 0) -> None:
        self.offset_us = offset_s * 1_000_000

    def now_us(self) -> int:
        return system_now_us() + self.offset_us


class ManualClock:
    """A clock that moves only when told; never moves backwards."""

    def __init__(self, start_us: int) -> None:
        self._now = start_us
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            # Strictly increasing, so two stamps are never equal by accident.
            self._now += 1
            return self._now

    def set(self, instant_us: int) -> None:
        with self._lock:
            self._now = max(self._now, instant_us)
