"""The durable ledger of runs, items, tasks, submissions and events.

The names below are imported on first use, so that ``corral.ledger.location`` can be used without
importing SQLAlchemy.
"""

import importlib

__all__ = ["Ledger", "default_url", "dumps", "loads", "parse_task_key", "task_key", "schema"]


def __getattr__(name: str):
    if name == "schema":
        return importlib.import_module("corral.ledger.schema")
    if name in ("dumps", "loads"):
        return getattr(importlib.import_module("corral.ledger.values"), name)
    if name in __all__:
        return getattr(importlib.import_module("corral.ledger.store"), name)
    raise AttributeError(f"module 'corral.ledger' has no attribute {name!r}")
