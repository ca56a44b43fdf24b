"""Clocks for the simulator. Anything with ``now() -> float`` (seconds) works, such as the engine's
VirtualClock; these cover the cases where the simulator runs on its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from corral.clock import VirtualClock


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


#: time that moves only when advanced: the engine's virtual clock, so both can share one
ManualClock = VirtualClock


class SteppedClock(VirtualClock):
    """A virtual clock whose every sleep also leaves real time to the threads that wait on it (the
    simulator's flex answers, a backend's flex requests), so that an answer due during a step
    reaches its client before the clock moves on, as it would in real time: ``pause`` real seconds,
    and, with ``settle``, until ``settle()`` is true (at most ``settle_timeout`` seconds)."""

    def __init__(self, start: float = 1_700_000_000.0, pause: float = 0.01,
                 settle: Callable[[], bool] | None = None, settle_timeout: float = 2.0) -> None:
        super().__init__(start)
        self.pause = pause
        self.settle = settle
        self.settle_timeout = settle_timeout

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        time.sleep(self.pause)
        if self.settle is not None:
            deadline = time.monotonic() + self.settle_timeout
            while not self.settle() and time.monotonic() < deadline:
                time.sleep(0.002)
