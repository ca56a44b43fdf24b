"""The Python face of corral: ``corral.open("corral.yaml")`` gives a Campaign with one method per command.

The names below are imported on first use: opening a campaign for a report on a SQLite ledger
imports neither SQLAlchemy nor the engine.
"""

import importlib

_WHERE = {"Campaign": "corral.api.campaign", "Run": "corral.api.run", "TaskLogs": "corral.api.run",
          "Report": "corral.api.report", "Registry": "corral.api.registry", "Selection": "corral.engine.runs",
          "SystemClock": "corral.engine", "TickReport": "corral.engine", "VirtualClock": "corral.engine",
          "init": "corral.api.starter"}

__all__ = ["Campaign", "Registry", "Report", "Run", "Selection", "SystemClock", "TaskLogs", "TickReport",
           "VirtualClock", "init"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'corral.api' has no attribute {name!r}")
