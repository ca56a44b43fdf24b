"""The ``local`` backend: worker processes on this machine, one per CPU slot or GPU slot.

Each submission is one worker process running a chunk of tasks. The worker holds an ``flock`` on
its submission folder for its whole life (inherited from the controller before it starts, so
there is no window where it runs unlocked): a lock that can be taken means the worker is gone.
Workers run in their own session, so they outlive a controller killed with SIGKILL and are
adopted by the next tick; SIGINT/SIGTERM to the controller stops them gracefully instead.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.backends.base import (Backend, Backlog, Handle, PollResult, StageContext, SubmissionPlan,
                                  SubmissionRecord, TaskSpec, result_from_record)
from corral.errors import CorralError
from corral.spec.models import LocalBackend as LocalSettings
from corral.worker import protocol

def detect_gpus() -> list[int | str]:
    """GPU ids visible here: those in ``CUDA_VISIBLE_DEVICES`` if set (indices or UUIDs, passed on
    as written so workers get the same physical GPUs), else ``nvidia-smi``'s, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        if "-1" in ids:
            ids = ids[: ids.index("-1")]
        return [int(i) if i.isdigit() else i for i in ids]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]


@dataclass(frozen=True)
class LocalPlan(SubmissionPlan):
    """One worker process: its slot (``cpu#3``, ``gpu0,1#0``) and the GPUs it is pinned to."""

    slot: str = ""
    gpus: tuple[int | str, ...] = ()


class LocalBackendImpl(Backend):
    kind = "local"
    # Worker exits wake the controller at once; polls in between only refresh progress.
    poll_interval = 0.25

    def __init__(self, name: str, settings: LocalSettings, **kwargs: Any):
        super().__init__(name, settings, **kwargs)
        self.settings: LocalSettings = settings
        if settings.gpus == "auto":
            self.gpus = detect_gpus()
        elif settings.gpus == "none":
            self.gpus = []
        else:
            self.gpus = list(settings.gpus)
        self.cpu_workers = settings.workers or os.cpu_count() or 1
        self._children: dict[int, subprocess.Popen] = {}
        self._results_offset: dict[int, int] = {}
        self._started_offset: dict[int, int] = {}

    # -- slots ----------------------------------------------------------------------

    def gpus_per_task(self, stage: StageContext) -> int:
        """The stage's ``resources.gpus``; unset means one GPU per worker when there are GPUs."""
        wanted = stage.spec.resources.gpus
        if wanted is None:
            return 1 if self.gpus else 0
        return wanted

    def slots_for(self, gpus_per_task: int) -> list[dict[str, Any]]:
        if gpus_per_task == 0:
            return [{"slot": f"cpu#{i}", "gpus": []} for i in range(self.cpu_workers)]
        groups = [self.gpus[i:i + gpus_per_task] for i in range(0, len(self.gpus), gpus_per_task)]
        groups = [g for g in groups if len(g) == gpus_per_task]
        # Physical GPU ids are what CUDA_VISIBLE_DEVICES names; indices into self.gpus map to them.
        return [{"slot": f"gpu{','.join(map(str, g))}#{w}", "gpus": g}
                for g in groups for w in range(self.settings.workers_per_gpu)]

    def _free_slots(self, stage: StageContext, all_in_flight: list[SubmissionRecord]) -> list[dict[str, Any]]:
        slots = self.slots_for(self.gpus_per_task(stage))
        if not slots:
            raise CorralError(f"stage {stage.name!r} asks for {self.gpus_per_task(stage)} GPU(s) per task "
                              f"but backend {self.name!r} has GPUs {self.gpus or 'none'}; set "
                              f"backends.{self.name}.gpus or the stage's resources.gpus")
        busy = {sub.info.get("slot") for sub in all_in_flight}
        unknown = sum(1 for sub in all_in_flight if not sub.info.get("slot"))
        free = [slot for slot in slots if slot["slot"] not in busy]
        # Slots of other kinds (CPU vs GPU) do not compete, except the CPU cap for GPU workers.
        return free[: max(0, len(free) - unknown)]

    #: a worker's chunk should hold at least this many seconds of work once task times are known
    min_chunk_seconds = 1.0

    def has_capacity(self, stage: StageContext, all_in_flight: list[SubmissionRecord]) -> bool:
        return bool(self._free_slots(stage, all_in_flight))

    #: how long ready tasks may wait for more to arrive, to make a worker's chunk worth its start-up
    linger = 1.0

    def plan(self, stage: StageContext, backlog: Backlog, in_flight: list[SubmissionRecord],
             all_in_flight: list[SubmissionRecord]) -> list[LocalPlan]:
        ready = backlog.ready
        free = self._free_slots(stage, all_in_flight)
        if not free or ready <= 0:
            return []
        total = len(self.slots_for(self.gpus_per_task(stage)))
        if self.settings.tasks_per_worker:
            chunk = self.settings.tasks_per_worker
        else:
            # About two chunks per slot over what is left: chunks shrink towards the end, so the
            # tail is short, while each worker's start-up is paid for many tasks.
            left = max(ready, backlog.remaining)
            chunk = math.ceil(left / (total * 2))
            if backlog.mean_seconds:
                worth_start = math.ceil(self.min_chunk_seconds / max(backlog.mean_seconds, 1e-6))
                chunk = max(chunk, min(worth_start, math.ceil(left / total)))
        chunk = max(1, min(chunk, self.settings.max_tasks_per_worker))
        if backlog.more_coming and ready < chunk and backlog.waited < self.linger:
            return []
        plans: list[LocalPlan] = []
        left = ready
        for slot in free:
            if left <= 0:
                break
            size = min(chunk, left)
            plans.append(LocalPlan(size=size, slot=slot["slot"], gpus=tuple(slot["gpus"])))
            left -= size
        return plans

    # -- submit / find -------------------------------------------------------------------

    def submit(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
               plan: SubmissionPlan) -> Handle:
        folder = protocol.submission_dir(stage.run_dir, submission.id)
        slot = self._slot_of(stage, submission, plan)
        mode = stage.spec.per
        manifest = {
            "run_id": stage.run_id, "stage": stage.name, "stage_spec": stage.spec.model_dump(mode="json"),
            "root": str(stage.root), "run_dir": str(stage.run_dir), "ledger_url": stage.ledger_url,
            "params": stage.params, "submission_id": submission.id, "mode": mode, "gpus": slot["gpus"], "slot": slot["slot"],
            "tasks": [{"task_id": t.task_id, "key": t.key, "item_idx": t.item_idx, "item_id": t.item_id,
                       "item_key": t.item_key, "params": t.params, "attempt": t.attempt} for t in tasks],
        }
        protocol.write_manifest(folder, manifest)
        env = dict(os.environ)
        if slot["gpus"]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in slot["gpus"])
        elif self.gpus or self.settings.gpus == "none":
            env["CUDA_VISIBLE_DEVICES"] = ""
        for name in stage.spec.secrets:
            if name not in os.environ:
                raise CorralError(f"stage {stage.name!r} needs the secret {name!r} in the environment")
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(stage.root), env.get("PYTHONPATH", "")] if p)
        lock_fd = os.open(folder / protocol.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with open(folder / "worker.log", "ab") as out:
                proc = subprocess.Popen(
                    [self.settings.python or sys.executable, "-m", "corral.worker", str(folder)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=stage.root, env=env,
                    start_new_session=True, pass_fds=(lock_fd,))
        finally:
            os.close(lock_fd)
        self._children[submission.id] = proc
        threading.Thread(target=self._wake_on_exit, args=(proc,), daemon=True).start()
        return Handle(remote_id=f"pid:{proc.pid}", info={"slot": slot["slot"], "gpus": slot["gpus"],
                                                        "pid": proc.pid, "folder": str(folder)})

    def _wake_on_exit(self, proc: subprocess.Popen) -> None:
        proc.wait()
        self.wake()

    def _slot_of(self, stage: StageContext, submission: SubmissionRecord, plan: SubmissionPlan) -> dict[str, Any]:
        if isinstance(plan, LocalPlan) and plan.slot:
            return {"slot": plan.slot, "gpus": list(plan.gpus)}
        slots = self.slots_for(self.gpus_per_task(stage))
        named = {s["slot"]: s for s in slots}
        return named.get(submission.info.get("slot"), slots[0])

    def find(self, stage: StageContext, submission: SubmissionRecord) -> Handle | None:
        folder = protocol.submission_dir(stage.run_dir, submission.id)
        if not (folder / protocol.MANIFEST).exists():
            return None
        alive = _locked(folder)
        info = _read_json(folder / protocol.WORKER_INFO)
        if not alive and info is None and not (folder / protocol.EXIT).exists():
            return None
        manifest = protocol.read_manifest(folder)
        pid = (info or {}).get("pid")
        slot = manifest.get("slot")
        return Handle(remote_id=f"pid:{pid}", info={"slot": slot, "gpus": manifest.get("gpus") or [],
                                                    "pid": pid, "folder": str(folder)})

    # -- poll / cancel -----------------------------------------------------------------------

    def poll(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> dict[int, PollResult]:
        out: dict[int, PollResult] = {}
        for sub in submissions:
            stage = stages.get(sub.stage)
            if stage is None:
                continue
            folder = protocol.submission_dir(stage.run_dir, sub.id)
            child = self._children.get(sub.id)
            if child is not None and child.poll() is not None:
                del self._children[sub.id]
            alive = _locked(folder)
            started, offset = protocol.read_started(folder, self._started_offset.get(sub.id, 0))
            self._started_offset[sub.id] = offset
            result = PollResult(running=alive, finished=not alive, started_task_ids=set(started),
                                started_at=started)
            records, self._results_offset[sub.id] = protocol.read_results(
                folder, self._results_offset.get(sub.id, 0))
            result.results.extend(result_from_record(data) for data in records)
            if not alive:
                exit_info = _read_json(folder / protocol.EXIT)
                if exit_info is None:
                    result.lost_message = ("the worker process ended without finishing (killed, out of "
                                           f"memory or crashed); see {folder / 'worker.log'}")
                self._results_offset.pop(sub.id, None)
                self._started_offset.pop(sub.id, None)
            out[sub.id] = result
        return out

    def cancel(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> None:
        self._signal_all(stages, submissions)

    def interrupt(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord],
                  grace: float) -> None:
        folders = self._signal_all(stages, submissions)
        # Worker processes stop in real time, whatever the engine's (maybe virtual) clock says.
        deadline = time.monotonic() + grace
        while folders and time.monotonic() < deadline:
            folders = [f for f in folders if _locked(f)]
            if folders:
                time.sleep(0.05)
        for child in list(self._children.values()):
            child.poll()

    def _signal_all(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> list[Path]:
        folders = []
        for sub in submissions:
            stage = stages.get(sub.stage)
            if stage is None:
                continue
            folder = protocol.submission_dir(stage.run_dir, sub.id)
            info = _read_json(folder / protocol.WORKER_INFO) or {}
            pid = info.get("pid") or sub.info.get("pid")
            if pid and _locked(folder):
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                folders.append(folder)
        return folders

    def close(self) -> None:
        for child in self._children.values():
            child.poll()


def _locked(folder: Path) -> bool:
    """Whether a live worker holds this submission's lock."""
    try:
        fd = os.open(folder / protocol.LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
