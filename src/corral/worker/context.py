"""The ``ctx`` object handed to a stage's Python function."""

from __future__ import annotations

import io
import logging
from functools import cached_property
from pathlib import Path
from typing import Any


class LazyLog(io.TextIOBase):
    """A text stream that creates its file on first write, so silent tasks cost no file."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: io.TextIOWrapper | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not text:
            return 0
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed by close()
        return self._handle.write(text)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @property
    def used(self) -> bool:
        return self._handle is not None or self.path.exists()


class TaskContext:
    """What a task may know about where and how it runs.

    ``attempt`` starts at 1; ``workdir`` is a folder of this task's own (created on first use),
    ``checkpoint_dir`` another, meant to be kept across attempts of the same task; ``gpus`` are the GPU ids this worker may use (also in
    ``CUDA_VISIBLE_DEVICES``); ``log`` writes to the task's log file; ``params`` is the run's
    ``params:`` section (after overrides), as ``${params.X}`` sees it.
    """

    def __init__(self, *, run_id: str, stage: str, task_id: int | None, task_key: str, attempt: int,
                 item_key: str, item_id: str, run_dir: Path, root: Path, gpus: list[int],
                 log_stream: LazyLog, ledger_url: str | None = None, items: list[dict[str, Any]] | None = None,
                 params: dict[str, Any] | None = None):
        self.run_id = run_id
        self.stage = stage
        self.task_id = task_id
        self.task_key = task_key
        self.attempt = attempt
        self.item_key = item_key
        self.item_id = item_id
        self.run_dir = run_dir
        self.root = root
        self.gpus = gpus
        self.ledger_url = ledger_url
        self.items = items
        self.params = dict(params or {})
        self._log_stream = log_stream

    @cached_property
    def workdir(self) -> Path:
        path = self.run_dir / "work" / self.stage / self.item_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def checkpoint_dir(self) -> Path:
        path = self.run_dir / "checkpoints" / self.stage / self.item_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def log(self) -> logging.Logger:
        logger = logging.Logger(f"corral.task.{self.task_key}")  # not registered: one per task
        logger.setLevel(logging.INFO)
        handler = logging.StreamHandler(self._log_stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.handlers[:] = [handler]
        return logger

    def __repr__(self) -> str:
        return f"TaskContext(run_id={self.run_id!r}, stage={self.stage!r}, task={self.task_key}, attempt={self.attempt})"
