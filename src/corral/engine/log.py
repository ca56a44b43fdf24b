"""The controller's own log: one line per action, appended to ``.corral/corral.log`` (tail -f it)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path


class ControllerLog:
    def __init__(self, path: Path | None):
        self.path = path
        self._handle = None
        self.pid = os.getpid()

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        for line in str(message).splitlines() or [""]:
            self._handle.write(f"{stamp} [{self.pid}] {line}\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
