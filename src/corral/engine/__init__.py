"""The engine: ticks that poll, collect, plan and submit; budgets; retries; locks; the clock."""

from corral.engine.clock import Clock, SystemClock, VirtualClock
from corral.engine.engine import Engine, TickReport

__all__ = ["Clock", "Engine", "SystemClock", "TickReport", "VirtualClock"]
