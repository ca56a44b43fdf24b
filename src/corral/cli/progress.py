"""Live per-stage progress for ``corral run``: rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from corral.cli.output import err
from corral.states import TERMINAL


class RunProgress:
    def __init__(self, run, *, live: bool | None = None, every: float = 10.0):
        self.run = run
        self.live = err.is_terminal if live is None else live
        self.every = every
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._bars: dict[str, Any] = {}
        self._started = time.monotonic()
        self._first_done: int | None = None

    def __enter__(self) -> "RunProgress":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[detail]}"), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(), console=err, refresh_per_second=4)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self.update(force=True)
            self._progress.stop()

    def update(self, report=None, force: bool = False) -> None:
        for message in (report.errors if report is not None else []):
            err.print(f"[{time.strftime('%H:%M:%S')}] {message}", highlight=False)
        now = time.monotonic()
        if self._progress is None and not force and now - self._last_line < self.every and \
                not (report and report.finished):
            return
        counts = self.run.counts()
        if self._progress is not None:
            for stage, states in counts.items():
                finished = sum(states[str(s)] for s in TERMINAL)
                detail = f"run {states['running']} queued {states['queued']}"
                if states["failed"]:
                    detail += f" [red]failed {states['failed']}[/red]"
                if states["budget"]:
                    detail += f" [yellow]stopped by the budget {states['budget']}[/yellow]"
                elapsed = max(1e-6, time.monotonic() - self._started)
                if stage not in self._bars:
                    self._bars[stage] = (self._progress.add_task(stage, total=states["total"], detail=detail,
                                                                 rate=""), finished)
                bar, first = self._bars[stage]
                rate = (finished - first) / elapsed
                self._progress.update(bar, completed=finished, total=states["total"], detail=detail,
                                      rate=f"{rate:.1f}/s" if rate else "")
            return
        self._last_line = now
        parts = []
        for stage, states in counts.items():
            finished = sum(states[str(s)] for s in TERMINAL)
            text = f"{stage} {finished}/{states['total']}"
            if states["running"] or states["queued"]:
                text += f" (running {states['running']}, queued {states['queued']})"
            if states["failed"]:
                text += f" failed {states['failed']}"
            if states["budget"]:
                text += f" stopped by the budget {states['budget']}"
            parts.append(text)
        err.print(f"[{time.strftime('%H:%M:%S')}] " + "; ".join(parts), highlight=False)
