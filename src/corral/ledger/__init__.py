"""The durable ledger of runs, items, tasks, submissions and events."""

from corral.ledger.store import Ledger, default_url, dumps, loads, parse_task_key, task_key

__all__ = ["Ledger", "default_url", "dumps", "loads", "parse_task_key", "task_key"]
