"""The raw answers of an LLM stage, kept so that ``corral reparse`` can run a fixed ``parse``
over them without sending (and paying for) the requests again.

One gzip-compressed JSONL file per collected batch, ``<run>/llm/raw/<stage>/<submission>.jsonl.gz``,
one line per answered request: its task id, custom id, the provider's answer body and the billed
tokens. The file is written beside its final name and renamed once complete, so a batch collected
again after a crash replaces it whole.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.backends.llm_results import ResultLine

SUFFIX = ".jsonl.gz"


def raw_folder(run_dir: Path, stage: str) -> Path:
    return run_dir / "llm" / "raw" / stage


def raw_path(run_dir: Path, stage: str, submission_id: int) -> Path:
    return raw_folder(run_dir, stage) / f"{submission_id}{SUFFIX}"


class RawWriter:
    """Collects the answered lines of one batch into its raw file (``commit`` makes it visible)."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._tmp = path.with_name(path.name + ".tmp")
        self._handle: Any = None

    def add(self, task_id: int, line: ResultLine) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = gzip.open(self._tmp, "wt", encoding="utf-8")
        record = {"task_id": task_id, "custom_id": line.custom_id, "body": line.body,
                  "tokens_in": line.tokens_in, "tokens_out": line.tokens_out, "cached_in": line.cached_in}
        self._handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.count += 1

    def commit(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._tmp.unlink(missing_ok=True)


def read_answers(run_dir: Path, stage: str) -> Iterator[tuple[int, ResultLine]]:
    """(task id, answer) of every kept answer of a stage, oldest batch first (a task answered
    twice appears twice; the later answer comes last)."""
    folder = raw_folder(run_dir, stage)
    if not folder.is_dir():
        return
    files = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: int(p.name[:-len(SUFFIX)])
                   if p.name[:-len(SUFFIX)].isdigit() else -1)
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for text in handle:
                try:
                    record = json.loads(text)
                except ValueError:
                    continue
                yield int(record["task_id"]), ResultLine(
                    record.get("custom_id") or "", "ok", body=record.get("body"), status_code=200,
                    tokens_in=record.get("tokens_in"), tokens_out=record.get("tokens_out"),
                    cached_in=record.get("cached_in") or 0)
