"""The Python face of corral: ``corral.open("corral.yaml")`` gives a Campaign; runs, status, results."""

from corral.api.campaign import Campaign, Run
from corral.engine import SystemClock, TickReport, VirtualClock
from corral.engine.runs import Selection

__all__ = ["Campaign", "Run", "Selection", "SystemClock", "TickReport", "VirtualClock"]
