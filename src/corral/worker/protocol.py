"""The files shared by a controller and the workers it starts, on this machine or on a cluster.

A submission folder holds ``manifest.json`` (what to run), ``started.log`` (one line per task
started) and ``results/<task key>.json``, each written atomically by the worker. Result files are
the ground truth of what ran; the controller ingests them into the ledger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
STARTED = "started.log"
RESULTS = "results"
WORKER_INFO = "worker.json"
LOCK = "lock"
EXIT = "exit.json"


def submission_dir(run_dir: Path, submission_id: int) -> Path:
    return run_dir / "submissions" / str(submission_id)


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
    (folder / RESULTS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MANIFEST, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def result_path(folder: Path, task_key: str) -> Path:
    return folder / RESULTS / f"{task_key}.json"


def iter_results(folder: Path, skip: set[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (file name, result) for complete result files not in ``skip``."""
    results = folder / RESULTS
    try:
        names = os.listdir(results)
    except FileNotFoundError:
        return
    for name in names:
        if name[0] == "." or not name.endswith(".json") or (skip and name in skip):
            continue
        try:
            with open(os.path.join(results, name), "rb") as handle:
                yield name, json.loads(handle.read())
        except (OSError, ValueError):
            continue


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
