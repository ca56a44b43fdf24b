"""The engine's clocks live in :mod:`corral.clock`, shared with the simulator."""

from corral.clock import Clock, SystemClock, VirtualClock

__all__ = ["Clock", "SystemClock", "VirtualClock"]
