"""The ``slurm`` backend: job arrays whose elements run the worker on slices of tasks.

Ground truth is what the workers write (``submissions/<id>/e<element>/results.jsonl``); SLURM's
state only says what became of tasks that left no result. One ``sacct --name`` call per poll covers
every job of the run (each carries the run's job name); without accounting one ``squeue`` call
does, with the result files for jobs squeue has already forgotten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.backends.base import (
    Backend,
    Backlog,
    CapacityError,
    Handle,
    PollResult,
    StageContext,
    SubmissionPlan,
    SubmissionRecord,
    TaskResult,
    TaskSpec,
    TransientError,
    result_from_record,
)
from corral.backends.slurm_cli import (
    LIVE,
    STARTED,
    JobRow,
    SlurmCommands,
    SlurmError,
    SlurmState,
)
from corral.backends.slurm_outcomes import ended_results
from corral.backends.slurm_race import race
from corral.backends.slurm_script import (
    ArrayJob,
    JobResources,
    base_resources,
    render_script,
    sbatch_options,
    scaled,
)
from corral.errors import CorralError
from corral.spec.slurm import SlurmBackend, SlurmTarget
from corral.states import Outcome
from corral.worker import protocol

PLAN = "plan.json"
#: seconds a just-submitted job may be missing from sacct before squeue is asked about it
UNLISTED_GRACE = 30.0
#: after sacct fails, follow jobs with squeue this long before asking sacct again
ACCOUNTING_RETRY = 300.0
MAYBE_REQUEUED = frozenset({SlurmState.NODE_FAIL, SlurmState.PREEMPTED, SlurmState.BOOT_FAIL})


def job_name_for(run_id: str) -> str:
    """One name for every job of a run: sacct/squeue select them all with one ``--name``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    if len(safe) > 40:
        safe = safe[:31] + "-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"corral.{safe}"


@dataclass(frozen=True)
class SlurmPlan(SubmissionPlan):
    """One submission: ``size`` tasks, ``tasks_per_element`` run one after another by each array
    element, the elements this backend had in flight when it was planned, and whether it is the pilot."""

    tasks_per_element: int = 1
    elements_in_flight: int = 0
    #: the stage's pilot: the first submission, whose run times size the rest
    pilot: bool = False


class SlurmBackendImpl(Backend):
    kind = "slurm"

    def __init__(self, name: str, settings: SlurmBackend, **kwargs: Any):
        super().__init__(name, settings, **kwargs)
        self.settings: SlurmBackend = settings
        self.commands = SlurmCommands()
        self.poll_interval = settings.poll_interval
        self.supports_dependencies = settings.dependencies
        self._offsets: dict[tuple[int, int], tuple[int, int]] = {}
        self._closed: set[tuple[int, int]] = set()
        self._nodes: dict[str | None, list[str]] = {}
        self._accounting = True
        self._accounting_retry_at = 0.0
        self._quiet_polls = 0
        self._unknown_states: set[str] = set()
        #: submissions with a trace of having run (a row in sacct/squeue, a worker's file)
        self._traced: set[int] = set()

    # -- plan -------------------------------------------------------------------------------

    def _elements_in_flight(self, subs: list[SubmissionRecord]) -> int:
        return sum(int(s.info.get("elements") or s.task_count) for s in subs)

    # What this backend learns is kept in its memory (the engine keeps it in the ledger), so a
    # controller started from cron decides as a long-lived one does.

    @property
    def _limit(self) -> int | None:
        return self.memory.get("job_limit")

    @_limit.setter
    def _limit(self, value: int | None) -> None:
        self.memory.set("job_limit", value)

    def job_limit(self) -> int:
        """Array elements this backend may have queued or running: ``max_jobs``, or less while the
        cluster refuses more (MaxSubmitJobs): halved on each refusal, grown again on success."""
        return min(self.settings.max_jobs, self._limit or self.settings.max_jobs)

    def failed_nodes(self) -> dict[str, float]:
        """Nodes that took a job down (NODE_FAIL), with when that was last seen."""
        return self.memory.get("failed_nodes") or {}

    def has_capacity(self, stage: StageContext, all_in_flight: list[SubmissionRecord]) -> bool:
        return self._elements_in_flight(all_in_flight) < self.job_limit()

    def tasks_per_element(self, backlog: Backlog) -> int:
        if self.settings.tasks_per_job:
            return self.settings.tasks_per_job
        left = max(backlog.ready, backlog.remaining)
        per = math.ceil(left / min(self.settings.max_jobs, 1000))
        if backlog.mean_seconds:
            # Worth a job's start-up (seconds on a busy cluster), within an hour per element.
            per = max(per, math.ceil(60 / max(backlog.mean_seconds, 1e-3)))
            per = min(per, max(1, int(3600 / max(backlog.mean_seconds, 1e-3))))
        return max(1, per)

    def plan(self, stage: StageContext, backlog: Backlog, in_flight: list[SubmissionRecord],
             all_in_flight: list[SubmissionRecord]) -> list[SlurmPlan]:
        if backlog.more_coming and backlog.ready < 100 and backlog.waited < 5.0:
            return []   # let a few more become ready: one array instead of many tiny ones
        elements = self._elements_in_flight(all_in_flight)
        pilot = self.settings.pilot
        first = False
        if pilot and not self.settings.tasks_per_job and backlog.mean_seconds is None:
            # How long is a task? A small array first tells, so the rest is packed into elements
            # worth starting (no-op tasks in a thousand jobs would mostly measure job start-up).
            # A stage's first submission is its pilot, once per run; the rest waits for its results.
            sent = (self.memory.get(_pilot_key(stage)) or {}).get("submission")
            first = sent is None and not in_flight
            if first and backlog.ready > 2 * pilot:
                return [SlurmPlan(size=pilot, tasks_per_element=1, elements_in_flight=elements, pilot=True)]
            if not first and backlog.waited < self.settings.pilot_wait and \
                    (any(s.id == sent for s in in_flight) if sent is not None else backlog.ready > 2 * pilot):
                return []
        per = self.tasks_per_element(backlog)
        room = (self.job_limit() - elements) * per
        size = min(backlog.ready, self.settings.max_tasks_per_submission, room)
        return [SlurmPlan(size=size, tasks_per_element=per, elements_in_flight=elements, pilot=first)] \
            if size > 0 else []

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
               plan: SubmissionPlan) -> Handle:
        folder = protocol.submission_dir(stage.run_dir, submission.id)
        if isinstance(plan, SlurmPlan):
            per, in_flight = plan.tasks_per_element, plan.elements_in_flight
        else:
            per, in_flight = self.tasks_per_element(Backlog(ready=len(tasks), remaining=len(tasks))), 0
        for name in stage.spec.secrets:
            if name not in os.environ:
                raise CorralError(f"stage {stage.name!r} needs the secret {name!r} in the environment")
        manifest, parts = self._build_plan(stage, submission, tasks, folder, per)
        protocol.write_manifest(folder, manifest)
        if isinstance(plan, SlurmPlan) and plan.pilot:
            parts["pilot"] = True     # for find() after a crash between sbatch and the ledger
        protocol.write_json_atomic(folder / PLAN, parts)
        handle = self._send_parts(stage, submission, parts, folder, in_flight=in_flight)
        if isinstance(plan, SlurmPlan) and plan.pilot:
            self._record_pilot(stage, submission)
        return handle

    def _record_pilot(self, stage: StageContext, submission: SubmissionRecord) -> None:
        self.memory.set(_pilot_key(stage), {"submission": submission.id, "sent_at": self.now()})
        self.log(f"stage {stage.name}: submission {submission.id} is the pilot; the rest waits for its "
                 "run times to size array elements")

    def preview(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec]) -> dict[str, Any]:
        """What ``submit`` would send, sending nothing: the sbatch command and script of each array."""
        folder = protocol.submission_dir(stage.run_dir, submission.id)
        per = self.tasks_per_element(Backlog(ready=len(tasks), remaining=len(tasks)))
        _, plan = self._build_plan(stage, submission, tasks, folder, per)
        return {"tasks_per_job": per if stage.spec.per == "item" else len(tasks), "elements": plan["elements"],
                "sbatch": [{"command": "sbatch --parsable", "script": p["script"]} for p in plan["parts"]]}

    def _build_plan(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
                    folder: Path, per: int) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = stage.spec
        if stage.spec.per != "item":
            per = len(tasks)
        # Tasks with equal needs share an array; a retry after an out-of-memory failure may need more.
        base = base_resources(spec, self.settings, per)
        groups: dict[JobResources, list[TaskSpec]] = {}
        for task in tasks:
            groups.setdefault(scaled(base, spec, task.attempt, task.last_error), []).append(task)
        ordered: list[TaskSpec] = []
        elements: list[list[int]] = []
        jobs: list[ArrayJob] = []
        max_array = self.commands.max_array_size()
        for resources, group in groups.items():
            first_element = len(elements)
            for start in range(0, len(group), per):
                elements.append([len(ordered) + start, len(ordered) + min(start + per, len(group))])
            ordered.extend(group)
            count = len(elements) - first_element
            for offset in range(0, count, max_array):
                for target in self.settings.race or [None]:
                    jobs.append(ArrayJob(part=len(jobs), offset=first_element + offset,
                                         count=min(max_array, count - offset), resources=resources,
                                         target=target))
        manifest = {
            "run_id": stage.run_id, "stage": stage.name, "stage_spec": spec.model_dump(mode="json"),
            "root": str(stage.root), "run_dir": str(stage.run_dir), "ledger_url": stage.ledger_url,
            "params": stage.params, "submission_id": submission.id, "mode": spec.per, "gpus": [], "elements": elements,
            "tasks": [{"task_id": t.task_id, "key": t.key, "item_idx": t.item_idx, "item_id": t.item_id,
                       "item_key": t.item_key, "params": t.params, "attempt": t.attempt} for t in ordered],
        }
        exclude = self._exclusions(stage)
        after = [str(a) for a in submission.info.get("after") or []]
        name = job_name_for(stage.run_id)
        parts = []
        for job in jobs:
            options = sbatch_options(spec, self.settings, job, job_name=name,
                                     comment=f"{submission.idempotency_key}:{job.part}",
                                     output=folder / "slurm-%A_%a.out", root=stage.root, max_array=max_array,
                                     max_running=self.settings.max_running, exclude=exclude, after=after)
            script = render_script(options, setup=[*self.settings.setup, *spec.resources.setup],
                                   launcher=self.settings.launcher, python=self.settings.python, folder=folder,
                                   root=stage.root, offset=job.offset, race=bool(self.settings.race))
            parts.append({"part": job.part, "offset": job.offset, "count": job.count,
                          "target": job.target.partition if job.target else None, "script": script})
        plan = {"key": submission.idempotency_key, "elements": len(elements), "parts": parts, "job_name": name}
        return manifest, plan

    def _send_parts(self, stage: StageContext, submission: SubmissionRecord, plan: dict[str, Any],
                    folder: Path, found: dict[int, str] | None = None, in_flight: int = 0) -> Handle:
        ids: dict[int, str] = dict(found or {})
        for part in plan["parts"]:
            if part["part"] in ids:
                continue
            try:
                ids[part["part"]] = self.commands.sbatch(part["script"])
            except TransientError:
                # The answer was lost, but the job may exist: adopt it if the queue shows it.
                job_id = self._queued_part(plan, part["part"])
                if job_id is not None:
                    ids[part["part"]] = job_id
                    continue
                if ids:
                    self.commands.scancel(list(ids.values()))
                raise
            except SlurmError as exc:
                if ids:
                    self.commands.scancel(list(ids.values()))
                if "dependency" in str(exc).lower():
                    raise CapacityError(f"a dependency is gone: {exc}", retry_after=1.0) from None
                raise
            except CapacityError as exc:
                if ids:
                    self.commands.scancel(list(ids.values()))
                if exc.limit:
                    # The cluster counts array elements against MaxSubmitJobs: ask for fewer.
                    self._limit = max(1, min(self._limit or self.settings.max_jobs,
                                             in_flight + plan["elements"]) // 2)
                    self.log(f"the cluster refused more jobs ({exc}); at most {self._limit} elements from now")
                    raise CapacityError(str(exc), retry_after=2.0) from None
                raise
        if self._limit is not None:
            self._limit = self._limit + max(1, self._limit // 10)
            if self._limit >= self.settings.max_jobs:
                self._limit = None
        jobs = [{"id": ids[p["part"]], "offset": p["offset"], "count": p["count"], "target": p["target"]}
                for p in plan["parts"]]
        info: dict[str, Any] = {"elements": plan["elements"], "jobs": jobs, "job_name": plan["job_name"]}
        if submission.info.get("after"):
            info["after"] = submission.info["after"]
        return Handle(remote_id=",".join(ids[p["part"]] for p in plan["parts"]), info=info)

    def _queued_part(self, plan: dict[str, Any], part: int) -> str | None:
        try:
            rows = self.commands.squeue(plan["job_name"], all_states=True)
        except (SlurmError, CapacityError, TransientError):
            return None
        comment = f"{plan['key']}:{part}"
        return next((row.job_id for row in rows if row.comment == comment), None)

    def _exclusions(self, stage: StageContext) -> list[str]:
        failed = self.failed_nodes()
        if not failed or not self.settings.exclude_failed_nodes:
            return []
        partition = stage.spec.resources.partition or self.settings.partition
        if partition not in self._nodes:
            try:
                self._nodes[partition] = self.commands.partition_nodes(partition)
            except SlurmError:
                self._nodes[partition] = []
        nodes = set(self._nodes[partition])
        bad = sorted(set(failed) & nodes) if nodes else []
        # Never exclude every node: the work would never run.
        return bad if nodes - set(bad) else []

    # -- find (after a crash) ------------------------------------------------------------------

    def find(self, stage: StageContext, submission: SubmissionRecord) -> Handle | None:
        folder = protocol.submission_dir(stage.run_dir, submission.id)
        try:
            plan = json.loads((folder / PLAN).read_text())
        except (OSError, ValueError):
            return None      # the plan is written before any sbatch: nothing was sent
        found: dict[int, str] = {}
        name = job_name_for(stage.run_id)
        # squeue with every state (jobs that ended recently too; accounting may not have their
        # comment yet), then sacct for jobs older than the controller keeps.
        rows = self.commands.squeue(name, all_states=True)
        if self._accounting:
            rows += self._rows(name, submission.created_at)
        for row in rows:
            key, _, part = row.comment.partition(":")
            if key == submission.idempotency_key and part.isdigit():
                found[int(part)] = row.job_id
        if not found:
            return None
        handle = self._send_parts(stage, submission, plan, folder, found)
        if plan.get("pilot"):
            self._record_pilot(stage, submission)
        return handle

    # -- poll --------------------------------------------------------------------------------

    def _rows(self, name: str, since: float) -> list[JobRow]:
        if not self._accounting and self.now() >= self._accounting_retry_at:
            self._accounting = True      # accounting may be back (slurmdbd restarted)
        if self._accounting:
            try:
                return self.commands.sacct(name, since)
            except (SlurmError, CapacityError, TransientError) as exc:
                self.log(f"sacct failed ({exc}); following jobs with squeue and result files "
                         f"for {ACCOUNTING_RETRY:.0f}s")
                self._accounting = False
                self._accounting_retry_at = self.now() + ACCOUNTING_RETRY
        return self.commands.squeue(name, all_states=True)

    def poll(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> dict[int, PollResult]:
        subs = [s for s in submissions if s.stage in stages and s.info.get("jobs")]
        if not subs:
            return {}
        run_id = stages[subs[0].stage].run_id
        name = job_name_for(run_id)
        rows = self._rows(name, min(s.submitted_at or s.created_at for s in subs))
        listed = {row.job_id for row in rows}
        # A job sacct does not list yet: just submitted (slurmdbd has not heard of it; wait), or
        # held by a dependency (never eligible, so never in accounting: ask squeue).
        now = self.now()
        missing = any(j["id"] not in listed and (s.info.get("after") or
                                                 now - (s.submitted_at or s.created_at) > UNLISTED_GRACE)
                      for s in subs for j in s.info["jobs"])
        requeued = any(row.state in MAYBE_REQUEUED for row in rows)
        if self._accounting and (missing or requeued):
            # sacct lists a job once it is eligible: one held by a dependency only squeue shows. And
            # a job that SLURM requeues after a node failure or preemption keeps its ended record
            # in sacct until it starts again; squeue shows it pending.
            queue = self.commands.squeue(name)
            live = {row.key: row for row in queue}
            rows = [live.get(row.key, row) if row.state in MAYBE_REQUEUED else row for row in rows]
            rows += [row for row in queue if row.job_id not in listed]
        by_job: dict[str, dict[int, JobRow]] = {}
        pending_jobs: dict[str, JobRow] = {}
        for row in rows:
            if row.pending_range is not None:
                pending_jobs[row.job_id] = row
            else:
                by_job.setdefault(row.job_id, {})[row.index if row.index is not None else 0] = row
        out: dict[int, PollResult] = {}
        changed = False
        to_cancel: list[str] = []
        for sub in subs:
            result = self._poll_one(stages[sub.stage], sub, by_job, pending_jobs, to_cancel)
            out[sub.id] = result
            changed = changed or bool(result.results) or result.finished
        if to_cancel:
            self.commands.scancel(sorted(set(to_cancel)))
        # Poll less often while nothing happens, back to the base interval when something does.
        self._quiet_polls = 0 if changed else self._quiet_polls + 1
        self.poll_interval = min(self.settings.max_poll_interval,
                                 self.settings.poll_interval * (1.5 ** min(self._quiet_polls, 10)))
        return out

    def _poll_one(self, stage: StageContext, sub: SubmissionRecord, by_job: dict[str, dict[int, JobRow]],
                  pending: dict[str, JobRow], to_cancel: list[str]) -> PollResult:
        folder = protocol.submission_dir(stage.run_dir, sub.id)
        age = self.now() - (sub.submitted_at or sub.created_at)
        jobs, info = sub.info["jobs"], {}
        if self.settings.race:
            jobs, waits, cancel = race(jobs, sub.info.get("race_winner"), by_job, pending, self.now())
            to_cancel.extend(cancel)
            if waits is not None:
                info = {"race_winner": jobs[0]["target"], "race": waits}
        if self.settings.race and not jobs:
            seen = any(j["id"] in by_job or j["id"] in pending for j in sub.info["jobs"])
            if seen or age < self.settings.missing_grace:
                return PollResult(info=info or None)
            return PollResult(finished=True, lost_message="the cluster has no record of this submission's jobs",
                              gone=self._gone_message(sub, age))
        result = PollResult(info=info or None)
        manifest: dict[str, Any] | None = None
        stats = dict(sub.info.get("efficiency") or {})
        stats_changed = False
        all_ended = True
        # Whether anything shows this submission ran: a row for one of its jobs, or a worker's file.
        traces = sub.id in self._traced
        for job in jobs:
            rows = by_job.get(job["id"], {})
            waiting = pending.get(job["id"])
            for index in range(job["count"]):
                element = job["offset"] + index
                if (sub.id, element) in self._closed:
                    continue
                row = rows.get(index)
                if row is None and waiting is not None:
                    row = JobRow(job_id=job["id"], index=index, pending_range=waiting.pending_range,
                                 state=waiting.state, raw_state=waiting.raw_state, reason=waiting.reason)
                edir = protocol.element_dir(folder, element)
                started, results = self._read(sub.id, element, edir)
                traces = traces or row is not None or bool(started or results) or edir.exists()
                result.results.extend(r for r in results if r.outcome != Outcome.INTERRUPTED)
                result.started_at.update(started)
                if row is not None and row.state in STARTED:
                    result.running = True
                dependency = row is not None and row.state == SlurmState.PENDING and \
                    "DependencyNeverSatisfied" in row.reason
                if dependency:
                    to_cancel.append(job["id"])
                elif row is not None and row.state in LIVE or row is None and self._maybe_alive(edir, age):
                    all_ended = False
                    continue
                elif row is not None and row.state == SlurmState.UNKNOWN:
                    # Neither live nor ended: not counted as running, and asked about again next poll.
                    self._unknown_state(row)
                    all_ended = False
                    continue
                manifest = manifest or protocol.read_manifest(folder)
                result.results.extend(self._ended(manifest, element, edir, row, dependency))
                if row is not None and row.elapsed is not None and not dependency:
                    stats[str(element)] = [f"{row.job_id}_{index}", row.state.value, row.elapsed, row.max_rss,
                                           row.alloc_cpus, row.node, f"{row.exit_code}:{row.signal}"]
                    stats_changed = True
                self._closed.add((sub.id, element))
        result.finished = all_ended
        if traces:
            self._traced.add(sub.id)
        elif all_ended:
            result.gone = self._gone_message(sub, age)
        if stats_changed:
            result.info = {**(result.info or {}), "efficiency": stats}
        if result.finished:
            self._traced.discard(sub.id)
            for key in [k for k in self._closed if k[0] == sub.id]:
                self._closed.discard(key)
                self._offsets.pop(key, None)
        return result

    def _gone_message(self, sub: SubmissionRecord, age: float) -> str:
        ids = ", ".join(j["id"] for j in sub.info.get("jobs") or [])
        return (f"the cluster has no record of job(s) {ids}: neither squeue nor sacct lists them {age:.0f}s after "
                "submission, and no worker of theirs started")

    def _unknown_state(self, row: JobRow) -> None:
        if row.raw_state not in self._unknown_states:
            self._unknown_states.add(row.raw_state)
            self.log(f"{self.name}: job {row.key} is in state {row.raw_state!r}, which corral does not know; "
                     "it is neither counted as running nor as ended, and asked about again at each poll")

    def _maybe_alive(self, edir: Path, age: float) -> bool:
        """An element neither sacct nor squeue lists: just submitted (not listed yet), or, without
        accounting, forgotten by squeue after MinJobAge; its files tell whether it finished."""
        if not self._accounting and (edir / protocol.EXIT).exists():
            return False
        return age < self.settings.missing_grace

    def _read(self, sub_id: int, element: int, edir: Path) -> tuple[dict[int, float], list[TaskResult]]:
        started_offset, results_offset = self._offsets.get((sub_id, element), (0, 0))
        started, started_offset = protocol.read_started(edir, started_offset)
        records, results_offset = protocol.read_results(edir, results_offset)
        self._offsets[(sub_id, element)] = (started_offset, results_offset)
        return started, [result_from_record(r) for r in records]

    def _ended(self, manifest: dict[str, Any], element: int, edir: Path, row: JobRow | None,
               dependency: bool = False) -> list[TaskResult]:
        """Results for an element's tasks that reported nothing final before its job ended."""
        if row is not None and row.state == SlurmState.NODE_FAIL and row.node:
            self.memory.set("failed_nodes", {**self.failed_nodes(), row.node: self.now()})
        return ended_results(manifest, element, edir, row, dependency)

    # -- describe ------------------------------------------------------------------------------

    def describe_task(self, stage: StageContext, submission: SubmissionRecord, task_id: int) -> dict[str, Any] | None:
        folder = protocol.submission_dir(stage.run_dir, submission.id)
        try:
            manifest = protocol.read_manifest(folder)
        except (OSError, ValueError):
            return None
        position = next((n for n, t in enumerate(manifest["tasks"]) if t["task_id"] == task_id), None)
        if position is None:
            return None
        element = next(e for e, (start, end) in enumerate(manifest["elements"]) if start <= position < end)
        jobs = submission.info.get("jobs") or []
        winner = submission.info.get("race_winner")
        job = next((j for j in jobs if j["offset"] <= element < j["offset"] + j["count"]
                    and (winner is None or j["target"] == winner)), None)
        out: dict[str, Any] = {"submission": submission.id, "element": element}
        if job is not None:
            index = element - job["offset"]
            out["job"] = f"{job['id']}_{index}"
            out["stdout"] = str(folder / f"slurm-{job['id']}_{index}.out")
        stats = (submission.info.get("efficiency") or {}).get(str(element))
        if stats:
            keys = ("job", "state", "elapsed_s", "max_rss_bytes", "alloc_cpus", "node", "exit_code")
            out.update(dict(zip(keys, stats)))
        else:
            out["state"] = "queued or running" if submission.state in ("submitted", "running") else submission.state
        return out

    # -- cancel ------------------------------------------------------------------------------

    def cancel(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> None:
        ids = [job["id"] for sub in submissions for job in sub.info.get("jobs") or []]
        if ids:
            self.commands.scancel(ids)

    def interrupt(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord],
                  grace: float) -> None:
        """Jobs keep running on the cluster while the controller is away; the next one adopts them."""


def _pilot_key(stage: StageContext) -> str:
    return f"pilot.{stage.name}"


__all__ = ["SlurmBackendImpl", "SlurmTarget", "job_name_for"]
