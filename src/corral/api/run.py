"""One run of a campaign: tick it, run it to the end, read where it stands, its tasks and records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Sequence

from corral.errors import CorralError, NotFound
from corral.states import ALL_STATES, TERMINAL

if TYPE_CHECKING:
    from corral.api.campaign import Campaign
    from corral.engine import Clock, Engine, TickReport


@dataclass
class TaskLogs:
    """What ``corral logs TASK`` shows: the task's ledger row, where it ran remotely, its log files."""

    task: dict[str, Any]
    remote: dict[str, Any] | None = None
    #: the files shown: the last attempt's log, or (``all_attempts``) every attempt's and the job's stdout
    files: list[Path] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [path.read_text(errors="replace") for path in self.files]

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "remote": self.remote, "files": [str(p) for p in self.files],
                "texts": self.texts()}


class Run:
    """One run in the ledger. ``controller_id`` and ``lease`` (None: ``CORRAL_CONTROLLER_ID`` or
    ``CORRAL_HOST``, and ``CORRAL_LEASE``) name this controller on a shared ledger."""

    def __init__(self, campaign: "Campaign", row: dict[str, Any], *, controller_id: str | None = None,
                 lease: float | None = None):
        self.campaign = campaign
        self.row = row
        self.id: str = row["id"]
        self.ledger = campaign.ledger()
        self.controller_id = controller_id
        self.lease = lease
        #: set by ``Campaign.start``: an unfinished run of this campaign made from another configuration
        self.unfinished_elsewhere: str | None = None
        #: set by ``Campaign.start``: what continuing the run changed (config changes, items added)
        self.messages: list[str] = []

    def engine(self, clock: "Clock | None" = None) -> "Engine":
        from corral.api.checks import controller
        from corral.api.preflight import load_dotenv
        from corral.engine import Engine

        controller_id, lease = controller(self.controller_id, self.lease)
        load_dotenv(self.campaign.loaded)
        return Engine(self.campaign.loaded, self.ledger, self.id, clock=clock, log=self.campaign.log,
                      controller=controller_id, lease=lease)

    @property
    def run_dir(self) -> Path:
        return self.campaign.root / self.campaign.spec.workdir / "runs" / self.id

    def refresh(self) -> dict[str, Any]:
        self.row = self.ledger.get_run(self.id) or self.row
        return self.row

    # -- running -----------------------------------------------------------------------

    def tick(self, clock: "Clock | None" = None) -> "TickReport":
        engine = self.engine(clock)
        try:
            return engine.tick()
        finally:
            engine.close()
            self.result_files().sync()

    def result_files(self):
        """The campaign's ``results:`` files of this run (``sync()`` writes what was recorded since)."""
        from corral.engine.results_files import ResultFiles

        return ResultFiles(self.campaign.loaded, self.ledger, self.id, log=self.campaign.log)

    def run(self, *, clock: "Clock | None" = None, on_tick: "Callable[[TickReport], None] | None" = None,
            should_stop: Callable[[], bool] = lambda: False, max_interval: float = 5.0) -> "TickReport":
        """Tick until every task is done, failed or cancelled, or ``should_stop()`` (``corral run``)."""
        from corral.engine import SystemClock, TickReport

        clock = clock or SystemClock()
        engine = self.engine(clock)
        engine.keep_polling()
        interval = engine.poll_interval()
        report = TickReport()
        files = self.result_files()
        try:
            while True:
                report = engine.tick(wait_for_lock=True)
                files.sync()
                if on_tick:
                    on_tick(report)
                if report.finished or should_stop():
                    break
                if report.changed:
                    interval = engine.poll_interval()
                else:
                    interval = min(max_interval, interval * 1.5)
                if report.next_wake is not None and report.in_flight == 0 and not report.submitted:
                    interval = min(max_interval, max(0.05, report.next_wake - clock.now()))
                clock.sleep(interval)
                if should_stop():
                    break
            if should_stop() and not report.finished:
                report = engine.interrupt()
                if on_tick:
                    on_tick(report)
            elif report.finished and report.in_flight:
                # Every task is recorded; let the last workers exit so their submissions close.
                deadline = clock.now() + 5.0
                while report.in_flight and clock.now() < deadline:
                    clock.sleep(0.05)
                    report = engine.tick(wait_for_lock=True, submit=False)
        finally:
            engine.close()
            files.sync()
        return report

    def retry(self, stage: str | None = None, error_class: str | None = None, cancelled: bool = False) -> int:
        """Failed tasks and those the budget stopped (and with ``cancelled`` the cancelled ones) back to
        pending; attempt numbers go on, retries count afresh."""
        from corral.spec.models import ERROR_CLASSES

        if error_class is not None and error_class not in ERROR_CLASSES and not error_class[:1].isupper():
            raise CorralError(f"--error-class: no error class {error_class!r}; valid: {', '.join(ERROR_CLASSES)}, "
                              "or an exception class name such as ValueError")
        engine = self.engine()
        try:
            return engine.retry(stage=stage, error_class=error_class, include_cancelled=cancelled)
        finally:
            engine.close()

    def reparse(self, stage: str | None = None) -> dict[str, Any]:
        """The kept raw answers of LLM stages through ``parse`` again, nothing sent: parse failures
        that the current ``parse`` reads become done and what waited on them is released."""
        engine = self.engine()
        try:
            done = engine.reparse(stage=stage)
        finally:
            engine.close()
        self.result_files().sync()
        return {"run_id": self.id, "stages": done.stages, "answers": done.answers, "fixed": done.fixed,
                "still_failing": done.still_failing, "released": done.released}

    def cancel(self, stage: str | None = None) -> int:
        """Cancel the unfinished tasks (of one stage); outputs and logs are kept."""
        engine = self.engine()
        try:
            return engine.cancel(stage=stage)
        finally:
            engine.close()
            self.result_files().sync()

    # -- reading ------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        counts = self.ledger.counts(self.id)
        order = self.campaign.loaded.stage_order()
        out = {}
        for stage in order + [s for s in counts if s not in order]:
            states = counts.get(stage, {})
            out[stage] = {str(s): states.get(str(s), 0) for s in ALL_STATES}
            out[stage]["total"] = sum(states.values())
        return out

    def status(self) -> dict[str, Any]:
        """Where the run stands, as ``corral status --json``."""
        row = self.refresh()
        stages = self.counts()
        totals = {str(s): sum(c[str(s)] for c in stages.values()) for s in ALL_STATES}
        totals["total"] = sum(c["total"] for c in stages.values())
        finished = sum(totals[str(s)] for s in TERMINAL)
        with self.ledger.read() as conn:
            open_subs = self.ledger.open_submissions(conn, self.id)
        return {
            "run": {"id": row["id"], "name": row["name"], "status": row["status"], "items": row["item_count"],
                    "created_at": row["created_at"], "finished_at": row["finished_at"], "host": row["host"],
                    "code_revision": row["code_revision"], "config_hash": row["config_hash"]},
            "stages": stages, "totals": totals,
            "progress": (finished / totals["total"]) if totals["total"] else 1.0,
            "submissions_open": len(open_subs),
            "errors": self.common_errors(order=list(stages)),
            **self._submission_troubles(open_subs),
            **self._llm_progress(open_subs, stages),
            **self.usage(stages),
            **self.job_efficiency(),
        }

    def _llm_progress(self, open_subs: list[dict[str, Any]], stages: dict[str, dict[str, int]]) -> dict[str, Any]:
        """LLM stages: the provider's request counts of the batches in flight and an ETA."""
        import time

        from corral.engine.learning import Learning
        from corral.engine.llm_status import llm_progress

        progress = llm_progress(self.campaign.loaded, Learning(self.ledger, self.id), open_subs, stages, time.time())
        return {"llm": progress} if progress else {}

    def _submission_troubles(self, open_subs: list[dict[str, Any]]) -> dict[str, Any]:
        """Open submissions the provider does not know (polls answered 404 so far), and the
        submissions that failed as a whole (the latest few, with why)."""
        from corral.backends.llm_batch import GONE_AFTER_POLLS
        from corral.ledger import loads
        from corral.ledger.reads import failed_submissions

        unknown = []
        for sub in open_subs:
            info = loads(sub["info"]) or {}
            if info.get("not_found"):
                unknown.append({"id": sub["id"], "stage": sub["stage"], "remote_id": sub["remote_id"],
                                "polls": info["not_found"], "give_up_after": GONE_AFTER_POLLS,
                                "error": info.get("not_found_error")})
        count, latest = failed_submissions(self.ledger, self.id)
        return {"submissions_unknown": unknown, "submissions_failed": count, "submissions_failed_latest": latest}

    def job_efficiency(self) -> dict[str, Any]:
        """Per stage, what cluster jobs used (from sacct, as ``seff`` shows): elements, their end
        states, elapsed time, memory high-water mark, CPUs and nodes. Empty for local runs."""
        from corral.ledger.reads import efficiency_infos

        stages: dict[str, dict[str, Any]] = {}
        for stage, info in efficiency_infos(self.ledger, self.id):
            for _job, state, elapsed, rss, cpus, node, _code in (info.get("efficiency") or {}).values():
                agg = stages.setdefault(stage, {"elements": 0, "states": {}, "elapsed_total_s": 0.0,
                                                "elapsed_max_s": 0.0, "max_rss_bytes": 0, "cpus": 0,
                                                "nodes": []})
                agg["elements"] += 1
                agg["states"][state] = agg["states"].get(state, 0) + 1
                agg["elapsed_total_s"] += elapsed or 0.0
                agg["elapsed_max_s"] = max(agg["elapsed_max_s"], elapsed or 0.0)
                agg["max_rss_bytes"] = max(agg["max_rss_bytes"], rss or 0)
                agg["cpus"] = max(agg["cpus"], cpus or 0)
                if node and node not in agg["nodes"]:
                    agg["nodes"].append(node)
        return {"jobs": stages} if stages else {}

    def usage(self, stages: dict[str, dict[str, int]]) -> dict[str, Any]:
        """Tokens and money recorded per stage, and the whole stage's cost projected from the tasks
        that recorded one (only stages that record tokens or cost)."""
        from corral.ledger.reads import stage_usage

        usage = {}
        for stage, tokens_in, tokens_out, cost, priced in stage_usage(self.ledger, self.id):
            total = stages.get(stage, {}).get("total", 0)
            usage[stage] = {"tokens_in": int(tokens_in or 0), "tokens_out": int(tokens_out or 0),
                            "cost": round(cost or 0.0, 6),
                            "cost_projected": round((cost or 0.0) / priced * total, 4) if priced else None}
        return {"usage": usage} if usage else {}

    def submissions(self, open_only: bool = True) -> list[dict[str, Any]]:
        from corral.ledger.reads import submissions

        return submissions(self.ledger, self.id, open_only=open_only)

    def errors(self) -> list[dict[str, Any]]:
        """Failed tasks counted by stage and error class."""
        from corral.ledger.reads import failure_counts

        return failure_counts(self.ledger, self.id)

    def common_errors(self, order: list[str] | None = None) -> list[dict[str, Any]]:
        """Per stage, for its failed tasks (and its tasks cancelled with a cause, such as
        ``upstream``): how many, the most common error class and message, and a task that has it."""
        from corral.ledger import task_key
        from corral.ledger.reads import common_errors

        order = order or self.campaign.loaded.stage_order()
        rank = {stage: i for i, stage in enumerate(order)}
        rows = common_errors(self.ledger, self.id)
        for row in rows:
            row["task"] = task_key(row.pop("task_id")) if row.get("task_id") is not None else None
        return sorted(rows, key=lambda r: (rank.get(r["stage"], len(rank)), r["state"] != "failed"))

    def task(self, ref: str, stage: str | None = None) -> dict[str, Any]:
        """A task by id (``123`` or ``t123``) or by item key (with ``stage`` when several)."""
        from corral.ledger import parse_task_key, task_key
        from corral.ledger.reads import find_tasks

        rows = find_tasks(self.ledger, self.id, task_id=parse_task_key(ref), ref=ref, stage=stage)
        if not rows:
            raise NotFound(f"no task {ref!r} in run {self.id}")
        if len(rows) > 1:
            raise CorralError(f"{ref!r} names {len(rows)} tasks (stages: "
                              f"{', '.join(r['stage'] for r in rows)}); add --stage")
        row = rows[0]
        row["key_text"] = task_key(row["id"])
        return row

    def remote_details(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """Where the task last ran remotely (a SLURM job: id, state, stdout file, Elapsed, MaxRSS...)."""
        from corral.engine.inspect import remote_details

        return remote_details(self.campaign.loaded, self.ledger, self.id, self.run_dir, task)

    def log_files(self, task: dict[str, Any]) -> list[Path]:
        from corral.ledger import task_key

        folder = self.run_dir / "logs" / task["stage"]
        key = task_key(task["id"])
        return sorted(folder.glob(f"{key}.*.log"),
                      key=lambda p: int(p.suffixes[0][1:]) if p.suffixes[0][1:].isdigit() else 0)

    def logs(self, task: str, stage: str | None = None, all_attempts: bool = False) -> TaskLogs:
        """``corral logs TASK``: the task's record, where it ran remotely, and its log files."""
        row = self.task(task, stage=stage)
        remote = self.remote_details(row)
        files = self.log_files(row)
        if remote and remote.get("stdout") and Path(remote["stdout"]).exists() and all_attempts:
            files = [*files, Path(remote["stdout"])]
        return TaskLogs(task=row, remote=remote, files=files if all_attempts else files[-1:])

    def results(self, stage: str | None = None, states: Sequence[str] | None = None):
        """The records as a pandas DataFrame (``pip install 'corral[pandas]'``): item parameters, result
        fields and metadata (run id, attempts, timings, tokens, cost), one row per item and stage."""
        from corral.api.frames import dataframe

        return dataframe(self.records(stage=stage, states=states))

    def records(self, stage: str | None = None, states: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """One record per (item, stage): item parameters, result fields and metadata."""
        for state in states or ():
            if state not in ALL_STATES:
                raise CorralError(f"--state: no task state {state!r}; valid: {', '.join(map(str, ALL_STATES))}")
        return self._records(stage, states)

    def _records(self, stage: str | None, states: Sequence[str] | None) -> Iterator[dict[str, Any]]:
        from corral.api.export import make_record
        from corral.ledger import loads
        from corral.ledger.reads import record_rows

        order = (loads(self.row.get("selection")) or {}).get("param_order") or []
        for row in record_rows(self.ledger, self.id, stage=stage, states=states):
            yield make_record(self.id, row, order)

    def export(self, path: str | Path | IO[str] | None = None, format: str | None = None,
               stage: str | None = None, state: str | None = None) -> int:
        """``corral export``: the records to a file, a text handle or stdout (None); returns how many.
        ``format``: json, jsonl, csv or parquet (default: the file's suffix, else jsonl)."""
        from corral.api.export import FORMATS, check_format, export_records
        from corral.spec.formats import output_format

        format = output_format(format, path, FORMATS, "jsonl")

        check_format(format, path)
        return export_records(self.records(stage=stage, states=[state] if state else None), path, format)
