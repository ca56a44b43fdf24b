"""What the engine and its backends learn in a run, kept in the ledger between controllers.

Loaded once when an Engine is made; what changed is written back inside a write transaction the
tick makes anyway, so a tick that learned nothing writes nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.backends.base import LearnedState
from corral.ledger import Ledger
from corral.ledger import learned as store

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class Learning:
    """One memory per scope: ``stage:<name>`` for the engine's own values, ``backend:<name>`` for
    each backend's."""

    def __init__(self, ledger: Ledger, run_id: str):
        self.ledger = ledger
        self.run_id = run_id
        with ledger.read() as conn:
            self._stored = store.load(conn, run_id)
        self._memories: dict[str, LearnedState] = {}

    def memory(self, scope: str) -> LearnedState:
        if scope not in self._memories:
            self._memories[scope] = LearnedState(self._stored.get(scope))
        return self._memories[scope]

    def stage(self, name: str) -> LearnedState:
        return self.memory(f"stage:{name}")

    def backend(self, name: str) -> LearnedState:
        return self.memory(f"backend:{name}")

    def mean_seconds(self, stage: str) -> float | None:
        """The moving average of a task's run time in this stage, once any has finished."""
        return self.stage(stage).get("mean_seconds")

    def learn_seconds(self, stage: str, durations: list[float]) -> None:
        mean = self.mean_seconds(stage)
        for seconds in durations:
            mean = seconds if mean is None else 0.9 * mean + 0.1 * seconds
        if mean is not None:
            self.stage(stage).set("mean_seconds", mean)

    def changes(self) -> dict[str, dict[str, Any]]:
        return {scope: changed for scope, memory in self._memories.items() if (changed := memory.changed())}

    def save(self, conn: Connection, now: float) -> None:
        """Write what changed since the last save, in the caller's transaction."""
        changes = self.changes()
        if changes:
            store.save(conn, self.run_id, changes, now)
            for scope in changes:
                self._memories[scope].saved()

    def flush(self, now: float) -> None:
        """Write what is still unsaved (a transaction of its own, only when something changed)."""
        if self.changes():
            with self.ledger.write() as conn:
                self.save(conn, now)
