"""Time for the engine and the Batch API simulator. Tests, benchmarks and the simulator share a
virtual clock to run days in seconds."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def __init__(self) -> None:
        self._wake = threading.Event()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)
            self._wake.clear()

    def wake(self) -> None:
        """End the current sleep early (a signal arrived)."""
        self._wake.set()


class VirtualClock:
    """A clock that only moves when slept on or advanced."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._advanced = threading.Condition(self._lock)

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)
            self._advanced.notify_all()

    def wait_until(self, t: float, timeout: float | None = None) -> bool:
        """Block until another thread advances the clock to ``t``, or ``timeout`` real seconds pass;
        True if the clock has reached ``t``."""
        with self._lock:
            return self._advanced.wait_for(lambda: self._now >= t, timeout)

    def wake(self) -> None:
        pass
