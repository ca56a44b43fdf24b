"""``results:``: one JSON file per finished item, for people who want files.

Every task that ended (done, failed or cancelled) gets its file, with its ``state`` and ``error``
beside its result, so a results folder holds the failures too and ``corral ingest`` reads them back.
The controller writes them after the transaction that recorded the results has committed (it
follows the ledger's event log), so a file never holds a result the ledger does not. Each file is
written to a temporary name and renamed into place: a crash leaves a whole file or none, and
writing the same file again is harmless. A cursor file remembers how far the event log was read.
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path
from typing import Any, Iterator

from corral.errors import SpecError
from corral.paths import TemplatePathError, inside
from corral.ledger import Ledger, loads, registry_queries
from corral.spec import LoadedCampaign
from corral.states import TaskState

RUN_FIELDS = ("run_id", "name", "stage", "item_id", "item_key", "task_id", "attempts")
RUNS_FOLDER = Path(".corral") / "runs"


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_template(loaded: LoadedCampaign, sample: dict[str, Any]) -> None:
    """Every field of the ``results:`` template is an item parameter, a run ``params`` value or one of
    RUN_FIELDS; the path is relative and names a JSON file."""
    template = loaded.spec.results
    if not template:
        return
    fields = {**_config_params(loaded.config), **sample, **{k: "x" for k in RUN_FIELDS}}
    try:
        names = template_fields(template)
        template.format_map(fields)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise SpecError(f"the results template {template!r} cannot be filled: {exc!r}", file=str(loaded.path),
                        key="results", expected="fields among " + ", ".join(sorted(fields))) from None
    if Path(template).is_absolute() or ".." in Path(template).parts:
        raise SpecError(f"the results template {template!r} must be a path inside the campaign folder",
                        file=str(loaded.path), key="results", expected="e.g. results/{setting}/episode_{repeat}.json")
    if not names or not template.endswith(".json"):
        raise SpecError(f"the results template {template!r} must name one .json file per item with fields",
                        file=str(loaded.path), key="results",
                        expected="e.g. results/{policy}/{setting}/{task}/episode_{repeat}.json")


def _config_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (config.get("params") or {}).items() if isinstance(v, (str, int, float, bool))}


def base_folder(template: str) -> Path:
    """The folder above every result file: the template's leading parts without fields."""
    parts = []
    for part in Path(template).parts[:-1]:
        if "{" in part:
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def task_error(row: dict[str, Any]) -> dict[str, Any] | None:
    """What a result file says of a task's error: its class and message, or None when it is done."""
    if row["state"] == TaskState.DONE:
        return None
    return {"class": row["error_class"], "message": row["error_message"]}


class ResultFiles:
    """Writes the result files of one run; ``sync()`` after each tick."""

    def __init__(self, loaded: LoadedCampaign, ledger: Ledger, run_id: str, log=None):
        self.log = log
        self.template = loaded.spec.results or ""
        self.ledger = ledger
        self.run_id = run_id
        self.root = loaded.root
        self.base = self.root / base_folder(self.template)
        per_item = [n for n, s in loaded.spec.stages.items() if s.per != "all"]
        needed = {need for s in loaded.spec.stages.values() for need in s.needs}
        # One file per item: the stages that end the pipeline, unless the template names {stage}.
        self.stages = set(per_item if "{stage}" in self.template else [n for n in per_item if n not in needed])
        self.cursor_path = self.root / loaded.spec.workdir / "runs" / run_id / "results.cursor"
        self._run: dict[str, Any] | None = None

    def _cursor(self) -> tuple[float, int]:
        try:
            at, last = json.loads(self.cursor_path.read_bytes())
            return float(at), int(last)
        except (OSError, ValueError, TypeError):
            return 0.0, 0

    def _write_run_file(self) -> dict[str, Any]:
        if self._run is None:
            row = self.ledger.get_run(self.run_id) or {}
            keep = ("id", "name", "campaign", "created_at", "config", "config_hash", "selection", "code_revision",
                    "host", "versions", "tags", "notes")
            self._run = {k: row.get(k) for k in keep}
            atomic_write(self.base / RUNS_FOLDER / f"{self.run_id}.json",
                         json.dumps(self._run, indent=1, default=str))
        return self._run

    def sync(self) -> int:
        """Write files for the tasks that ended since the last call. Returns how many."""
        if not self.template:
            return 0
        at, last = self._cursor()
        with self.ledger.read() as conn:
            events = registry_queries.ended_task_events(conn, self.run_id, at, last)
        if not events:
            return 0
        run = self._write_run_file()
        config = loads(run["config"]) or {}
        params = _config_params(config)
        written = 0
        for rows in self._ended_tasks(events):
            for row in rows:
                if row["stage"] not in self.stages:
                    continue
                try:
                    self._write(row, params, run)
                    written += 1
                except (TemplatePathError, OSError) as exc:
                    self._not_written(row, exc)
        # The time bound only narrows the index range; a minute's margin covers clocks that disagree.
        atomic_write(self.cursor_path, json.dumps([max(e[1] for e in events) - 60.0, events[-1][0]]))
        return written

    def _ended_tasks(self, events: list[tuple]) -> Iterator[list[dict[str, Any]]]:
        """The rows of the tasks the events ended: those named one by one, in chunks, then those
        cancelled together."""
        ids = sorted({task_id for _, _, task_id, _ in events if task_id is not None})
        for start in range(0, len(ids), 900):
            with self.ledger.read() as conn:
                yield registry_queries.ended_tasks_with_items(conn, ids[start:start + 900])
        for at, stage in dict.fromkeys((at, stage) for _, at, task_id, stage in events if task_id is None):
            with self.ledger.read() as conn:
                yield registry_queries.cancelled_tasks_with_items(conn, self.run_id, stage, at)

    def _write(self, row, params: dict[str, Any], run: dict[str, Any]) -> None:
        item = loads(row["item_params"]) if row["item_params"] else {}
        fields = {**params, **item, "run_id": self.run_id, "name": run.get("name"), "stage": row["stage"],
                  "item_id": row["item_id"], "item_key": row["key"], "task_id": f"t{row['id']}",
                  "attempts": row["attempts"]}
        path = inside(self.root, self.template.format_map(fields), key="results", item=row["key"])
        meta = {"run_id": self.run_id, "stage": row["stage"], "item_id": row["item_id"], "item_key": row["key"],
                "task_id": row["id"], "config_hash": run.get("config_hash")}
        for name in ("attempts", "started_at", "finished_at", "host", "tokens_in", "tokens_out", "cost", "backend"):
            meta[name] = row[name]
        record = {"params": item, "config": params, "result": loads(row["result"]), "state": row["state"],
                  "error": task_error(row), "corral": meta}
        atomic_write(path, json.dumps(record, indent=1, default=str, ensure_ascii=False))

    def _not_written(self, row, exc: Exception) -> None:
        """One result file that cannot be written: said on stderr and in the controller's log; the
        others are still written, and the result stays in the ledger (``corral export`` has it)."""
        reason = str(exc) if isinstance(exc, TemplatePathError) else \
            f"results: the file for item {row['key']} cannot be written: {exc.strerror or exc}"
        message = f"error: task t{row['id']}: {reason}"
        if self.log is not None:
            self.log(message)
        sys.stderr.write(message + "\n")
