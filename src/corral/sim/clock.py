"""Clocks for the simulator. Anything with ``now() -> float`` (seconds) works, such as the engine's
VirtualClock; these cover the cases where the simulator runs on its own."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class RealClock:
    """Wall-clock time, optionally running ``speed`` times faster from the moment it was made."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.time()

    def now(self) -> float:
        if self.speed == 1.0:
            return time.time()
        return self._origin + (time.time() - self._origin) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)


class ManualClock:
    """Time that moves only when advanced (same interface as the engine's VirtualClock)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)
