"""The files shared by a controller and the workers it starts, on this machine or on a cluster.

A submission folder holds ``manifest.json`` (what to run, written atomically by the controller),
``started.log`` (one line per task started) and ``results.jsonl`` (one line per finished task).
The result file is the ground truth of what ran; the controller ingests it into the ledger.

Each result line is the whole record, written by one ``write()`` of an append-only file, and
readers take only complete lines (up to the last newline): a record is there entirely or not at
all, as with a temporary file renamed into place, without creating a file per task (a new file
costs about 0.6 ms per task on an ordinary disk, more on a cluster's shared file system).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
STARTED = "started.log"
RESULTS = "results.jsonl"
WORKER_INFO = "worker.json"
LOCK = "lock"
EXIT = "exit.json"


def submission_dir(run_dir: Path, submission_id: int) -> Path:
    return run_dir / "submissions" / str(submission_id)


def element_dir(folder: Path, element: int) -> Path:
    """Where one element of a job array keeps its started/results/exit files."""
    return folder / f"e{element}"


def log_path(run_dir: Path, stage: str, task_key: str, attempt: int) -> Path:
    return run_dir / "logs" / stage / f"{task_key}.{attempt}.log"


def write_json_atomic(path: Path | str, data: Any, *, fsync: bool = False) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a part.

    The temporary name is fixed per target: one writer per file is the protocol (a worker owns its
    tasks' result files), and it saves the cost of a random name on every task.
    """
    path = str(path)
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
    text = json.dumps(data, separators=(",", ":"), default=str, ensure_ascii=False).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(text)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MANIFEST, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


class ResultWriter:
    """Appends result records to a submission's ``results.jsonl``, one complete line per write."""

    def __init__(self, folder: Path):
        self.fd = os.open(folder / RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A writer killed in the middle of a line leaves it unterminated: end it so the next record
        # starts on its own line (the broken one is skipped by readers).
        size = os.fstat(self.fd).st_size
        if size:
            with open(folder / RESULTS, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    os.write(self.fd, b"\n")

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=False) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        os.close(self.fd)


def read_results(folder: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete result records after byte ``offset``, and the offset to read from next time."""
    try:
        with open(folder / RESULTS, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "task_id" in record:
            records.append(record)
    return records, offset + end


def read_started(folder: Path, offset: int = 0) -> tuple[dict[int, float], int]:
    """Task ids started since byte ``offset`` with their start times, and the new offset."""
    path = folder / STARTED
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return {}, offset
    end = data.rfind(b"\n") + 1
    started: dict[int, float] = {}
    for line in data[:end].splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                started[int(parts[0])] = float(parts[1])
            except ValueError:
                continue
    return started, offset + end
