"""Campaign and Run: everything the CLI does, callable from Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import select

from corral.engine import Clock, Engine, SystemClock, TickReport
from corral.engine.inspect import remote_details
from corral.engine.log import ControllerLog
from corral.engine.preview import preview_submissions
from corral.engine.results_files import check_template as check_results_template
from corral.engine.runs import (Selection, create_run, find_resumable, latest_run, resolve_run, run_config,
                                snapshot_hash)
from corral.errors import CorralError, NotFound
from corral.ledger import Ledger, loads, parse_task_key, schema, task_key
from corral.ledger.location import campaign_ledger_url, driver_module, url_source
from corral.spec import ItemSource, LoadedCampaign, load_campaign
from corral.states import ALL_STATES, TERMINAL


class Campaign:
    """A loaded campaign file and its ledger."""

    def __init__(self, loaded: LoadedCampaign, ledger_url: str | None = None):
        self.loaded = loaded
        self.spec = loaded.spec
        self.root = loaded.root
        self.ledger_url = campaign_ledger_url(loaded.root, loaded.spec.workdir, loaded.spec.ledger, ledger_url)
        self._ledger_source = url_source(loaded.spec.ledger, ledger_url)
        self._ledger: Ledger | None = None
        self.log = ControllerLog(self.root / self.spec.workdir / "corral.log")

    @classmethod
    def load(cls, path: str | Path = "corral.yaml", overrides: list[str] | None = None,
             ledger: str | None = None) -> "Campaign":
        return cls(load_campaign(path, overrides or []), ledger_url=ledger)

    def check_ledger_driver(self) -> None:
        """A PostgreSQL ledger without its driver is bad input, named where the URL was given."""
        from corral.errors import SpecError
        from corral.extras import Extra, installed

        module = driver_module(self.ledger_url)
        if module is None or installed(module):
            return
        message = f"the ledger {_display(self.ledger_url)} needs the driver {module!r}, which is not installed"
        expected = f"the postgres extra: {Extra.POSTGRES.install}"
        if self._ledger_source == "ledger":
            raise SpecError(message, file=str(self.loaded.path), key="ledger", expected=expected)
        raise SpecError(f"{self._ledger_source}: {message}", expected=expected)

    def ledger(self, create: bool = True) -> Ledger:
        if self._ledger is None:
            self.check_ledger_driver()
            self._ledger = Ledger(self.ledger_url, create=create)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        self.log.close()

    def _sqlite_path(self) -> Path | None:
        if self.ledger_url.startswith("sqlite:///") and ":memory:" not in self.ledger_url:
            return Path(self.ledger_url.split("sqlite:///", 1)[1])
        return None

    def _remove_fresh_ledger(self) -> None:
        """Bad input found while creating the first run: leave nothing behind."""
        path = self._sqlite_path()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        if path is None:
            return
        for extra in ("", "-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
        for lock in path.parent.glob(path.name + ".*.lock"):
            lock.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass

    # -- plan --------------------------------------------------------------------------

    def check(self, selection: Selection | None = None, preview: bool = False) -> dict[str, Any]:
        """Validate everything that can be checked without running, and describe the plan; with
        ``preview``, also what the backends would send (sbatch scripts, ...)."""
        selection = selection or Selection()
        self.check_ledger_driver()
        source = ItemSource(self.spec.items, self.root, self.loaded.path)
        items = list(source.items(limit=selection.limit, shard=selection.shard))
        sample = items[0].params if items else {}
        stages = {}
        check_results_template(self.loaded, sample)
        for name in self.loaded.stage_order():
            stage = self.spec.stages[name]
            _check_templates(self.loaded, name, stage, sample)
            _check_callables(self.loaded, name, stage)
            stages[name] = {
                "tasks": 1 if stage.per == "all" else len(items), "per": stage.per, "needs": stage.needs,
                "backend": stage.backend, "kind": "call" if stage.call else "run",
                "action": stage.call or " ".join(stage.run or []),
                "retries": stage.retries.max, "timeout": stage.timeout,
            }
            if stage.request is not None:
                from corral.llm.projection import project

                stages[name].update(kind="request", action=f"LLM request ({stage.request.get('model') or 'model'})",
                                    llm=project(self.loaded, name, stage, items))
        resumable = None
        ledger_path = Path(self.ledger_url.split("sqlite:///", 1)[1]) if self.ledger_url.startswith("sqlite") else None
        if ledger_path is None or ledger_path.exists():
            try:
                run = find_resumable(self.ledger(), self.loaded, selection)
                resumable = run["id"] if run else None
            except CorralError:
                resumable = None
        return {
            "campaign": str(self.loaded.path), "name": self.spec.name, "items": len(items),
            **({"submissions": preview_submissions(self.loaded, items)} if preview else {}),
            "stages": stages, "tasks": sum(s["tasks"] for s in stages.values()),
            "backends": {n: b.model_dump(mode="json") for n, b in self.loaded.backends.items()},
            "ledger": _display(self.ledger_url),
            "config_hash": snapshot_hash(self.loaded, selection), "resumes": resumable,
            "sample_item": sample,
        }

    # -- runs ----------------------------------------------------------------------------

    def start(self, selection: Selection | None = None, *, new: bool = False, run_id: str | None = None,
              force: bool = False, clock: Clock | None = None) -> tuple["Run", bool]:
        """The run to work on: ``run_id`` if given, else the newest run with this exact config and
        selection, else a new one. Returns (run, created)."""
        selection = selection or Selection()
        source = ItemSource(self.spec.items, self.root, self.loaded.path)
        source.param_names()  # item sources that cannot be read fail here, before anything is written
        if self.spec.items.key:
            source._check_key_template(self.spec.items.key)
        first = next(iter(source.params()), {})
        check_results_template(self.loaded, first)
        for name, stage in self.spec.stages.items():
            _check_templates(self.loaded, name, stage, first)
            _check_callables(self.loaded, name, stage)
        fresh = self._sqlite_path() is not None and not self._sqlite_path().exists()
        ledger = self.ledger()
        clock = clock or SystemClock()
        if run_id:
            row = resolve_run(ledger, self.loaded, run_id)
            if row["config_hash"] != snapshot_hash(self.loaded, selection):
                from corral.engine.registry import config_diff as flat_diff

                diff = flat_diff(run_config(row), self.loaded.config, "run snapshot", "campaign now") or \
                    "(the same config; the item selection differs: --limit or --shard)"
                if not force:
                    raise CorralError(f"run {row['id']} was made from a different configuration; "
                                      f"use the same file and overrides, or --force to continue it anyway\n" + diff)
                _record_forced(ledger, row["id"], diff, clock.now())
                self.log(f"run {row['id']} continued with a different configuration (--force)")
            return Run(self, row), False
        if not new:
            row = find_resumable(ledger, self.loaded, selection)
            if row is not None:
                return Run(self, row), False
        try:
            row, created = create_run(ledger, self.loaded, selection, clock.now(), reuse=not new)
        except CorralError:
            if fresh:
                self._remove_fresh_ledger()
            raise
        if created:
            self.log(f"created run {row['id']} with {row['item_count']} items")
        return Run(self, row), created

    def registry(self):
        """The runs of this ledger: list, filter, tag, note, show, diff, merge, ingest."""
        from corral.api.registry import Registry

        return Registry(self)

    def run(self, run_id: str | None = None) -> "Run":
        ledger = self.ledger(create=False)
        row = resolve_run(ledger, self.loaded, run_id) if run_id else latest_run(ledger, self.loaded)
        return Run(self, row)

    def results(self, run_id: str | None = None, stage: str | None = None, states: list[str] | None = None):
        """A run's records (the newest run by default) as a pandas DataFrame."""
        return self.run(run_id).results(stage=stage, states=states)

    def runs(self, all_campaigns: bool = False) -> list[dict[str, Any]]:
        ledger = self.ledger(create=False)
        rows = ledger.find_runs(name=None if all_campaigns else self.spec.name)
        out = []
        for row in rows:
            counts = ledger.counts(row["id"])
            totals: dict[str, int] = {}
            for states in counts.values():
                for state, n in states.items():
                    totals[state] = totals.get(state, 0) + n
            out.append({"id": row["id"], "name": row["name"], "status": row["status"],
                        "created_at": row["created_at"], "items": row["item_count"],
                        "tasks": sum(totals.values()), "done": totals.get("done", 0),
                        "failed": totals.get("failed", 0), "host": row["host"],
                        "code_revision": row["code_revision"], "config_hash": row["config_hash"]})
        return out


def _record_forced(ledger: Ledger, run_id: str, diff: str, now: float) -> None:
    """``--force`` on a run made from another configuration: the diff goes into its notes and events."""
    from corral.engine.registry import add_note

    add_note(ledger, run_id, "continued with --force; config changes:\n" + diff, now)
    with ledger.write() as conn:
        ledger.add_events(conn, [{"at": now, "run_id": run_id, "kind": "force", "message": diff}])


def _display(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _check_templates(loaded: LoadedCampaign, name: str, stage, sample: dict[str, Any]) -> None:
    from corral.errors import SpecError

    if stage.per == "all":
        fields: dict[str, Any] = {}
    else:
        fields = dict(sample)
    fields.update(run_id="r", stage=name, attempt=1, task_id=1, item_id="i", item_key="k", root=".")
    templates = [("run", t) for t in (stage.run or [])] + [("outputs", t) for t in stage.outputs]
    if stage.skip_if and not stage.skip_callable:
        templates += [("skip_if", t) for t in stage.skip_if]
    for key, template in templates:
        try:
            template.format_map(fields)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise SpecError(f"template {template!r} cannot be filled: {exc!r}", file=str(loaded.path),
                            key=f"stages.{name}.{key}",
                            expected="fields among " + ", ".join(sorted(fields))) from None


def _check_callables(loaded: LoadedCampaign, name: str, stage) -> None:
    """A ``call:`` (or skip_if/verify callable) whose module cannot be found fails at check time,
    not once per task. Only the module is looked up; nothing of the user's code is imported."""
    import importlib.machinery
    import importlib.util

    from corral.errors import SpecError

    from corral.llm.projection import check_llm_stage

    check_llm_stage(loaded, name, stage)
    refs = [("call", stage.call), ("skip_if", stage.skip_callable), ("verify", stage.verify_callable),
            ("parse", stage.parse)]
    for key, ref in refs:
        if not ref:
            continue
        module = ref.split(":", 1)[0]
        top = module.split(".", 1)[0]
        # Beside the campaign file first (as workers see it), then the installed packages; the
        # top-level name is enough, and sys.path is left alone (several controllers may share it).
        try:
            found = (importlib.machinery.PathFinder.find_spec(top, [str(loaded.root)]) is not None
                     or importlib.util.find_spec(top) is not None)
        except (ImportError, ValueError):
            found = False
        if not found:
            raise SpecError(f"cannot find the module {module!r} of {ref!r}", file=str(loaded.path),
                            key=f"stages.{name}.{key}",
                            expected=f"{module.replace('.', '/')}.py beside the campaign file, or an "
                                     "installed package")


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    import difflib

    a = json.dumps(old, indent=2, sort_keys=True, default=str).splitlines()
    b = json.dumps(new, indent=2, sort_keys=True, default=str).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "run snapshot", "campaign now", lineterm=""))


class Run:
    """One run in the ledger."""

    def __init__(self, campaign: Campaign, row: dict[str, Any]):
        self.campaign = campaign
        self.row = row
        self.id: str = row["id"]
        self.ledger = campaign.ledger()

    def engine(self, clock: Clock | None = None) -> Engine:
        return Engine(self.campaign.loaded, self.ledger, self.id, clock=clock, log=self.campaign.log)

    @property
    def run_dir(self) -> Path:
        return self.campaign.root / self.campaign.spec.workdir / "runs" / self.id

    def refresh(self) -> dict[str, Any]:
        self.row = self.ledger.get_run(self.id) or self.row
        return self.row

    # -- running -----------------------------------------------------------------------

    def tick(self, clock: Clock | None = None) -> TickReport:
        engine = self.engine(clock)
        try:
            return engine.tick()
        finally:
            engine.close()
            self.result_files().sync()

    def result_files(self):
        """The campaign's ``results:`` files of this run (``sync()`` writes what was recorded since)."""
        from corral.engine.results_files import ResultFiles

        return ResultFiles(self.campaign.loaded, self.ledger, self.id)

    def run(self, *, clock: Clock | None = None, on_tick: Callable[[TickReport], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False, max_interval: float = 5.0) -> TickReport:
        """Tick until every task is done, failed or cancelled, or ``should_stop()``."""
        clock = clock or SystemClock()
        engine = self.engine(clock)
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
            **self.usage(stages),
            **self.job_efficiency(),
        }

    def job_efficiency(self) -> dict[str, Any]:
        """Per stage, what cluster jobs used (from sacct, as ``seff`` shows): elements, their end
        states, elapsed time, memory high-water mark, CPUs and nodes. Empty for local runs."""
        sub = schema.submissions
        with self.ledger.read() as conn:
            rows = conn.execute(select(sub.c.stage, sub.c.info).where(
                sub.c.run_id == self.id, sub.c.info.like('%"efficiency"%'))).all()
        stages: dict[str, dict[str, Any]] = {}
        for stage, info in rows:
            for _job, state, elapsed, rss, cpus, node, _code in (loads(info).get("efficiency") or {}).values():
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
        from sqlalchemy import func

        t = schema.tasks
        query = (select(t.c.stage, func.sum(t.c.tokens_in), func.sum(t.c.tokens_out), func.sum(t.c.cost),
                        func.count(t.c.cost)).where(t.c.run_id == self.id, (t.c.tokens_in.is_not(None)) |
                                                    (t.c.cost.is_not(None))).group_by(t.c.stage))
        with self.ledger.read() as conn:
            rows = conn.execute(query).all()
        usage = {}
        for stage, tokens_in, tokens_out, cost, priced in rows:
            total = stages.get(stage, {}).get("total", 0)
            usage[stage] = {"tokens_in": int(tokens_in or 0), "tokens_out": int(tokens_out or 0),
                            "cost": round(cost or 0.0, 6),
                            "cost_projected": round((cost or 0.0) / priced * total, 4) if priced else None}
        return {"usage": usage} if usage else {}

    def submissions(self, open_only: bool = True) -> list[dict[str, Any]]:
        s = schema.submissions
        query = select(s).where(s.c.run_id == self.id).order_by(s.c.id)
        if open_only:
            query = query.where(s.c.state.in_(["submitting", "submitted", "running"]))
        with self.ledger.read() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["info"] = loads(row["info"]) or {}
        return rows

    def errors(self) -> list[dict[str, Any]]:
        t = schema.tasks
        from sqlalchemy import func

        query = (select(t.c.stage, t.c.error_class, func.count()).where(t.c.run_id == self.id, t.c.state == "failed")
                 .group_by(t.c.stage, t.c.error_class))
        with self.ledger.read() as conn:
            return [{"stage": a, "error_class": b, "count": n} for a, b, n in conn.execute(query)]

    def task(self, ref: str, stage: str | None = None) -> dict[str, Any]:
        """A task by id (``123`` or ``t123``) or by item key (with ``stage`` when several)."""
        t, i = schema.tasks, schema.items
        query = select(t, i.c.key, i.c.params, i.c.item_id).select_from(
            t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx))).where(t.c.run_id == self.id)
        task_id = parse_task_key(ref)
        with self.ledger.read() as conn:
            rows = []
            if task_id is not None:
                rows = [dict(r) for r in conn.execute(query.where(t.c.id == task_id)).mappings()]
            if not rows:
                q = query.where((i.c.key == ref) | (i.c.item_id == ref))
                if stage:
                    q = q.where(t.c.stage == stage)
                rows = [dict(r) for r in conn.execute(q).mappings()]
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
        return remote_details(self.campaign.loaded, self.ledger, self.id, self.run_dir, task)

    def log_files(self, task: dict[str, Any]) -> list[Path]:
        folder = self.run_dir / "logs" / task["stage"]
        key = task_key(task["id"])
        return sorted(folder.glob(f"{key}.*.log"), key=lambda p: int(p.suffixes[0][1:]) if p.suffixes[0][1:].isdigit() else 0)

    def results(self, stage: str | None = None, states: list[str] | None = None):
        """The records as a pandas DataFrame (``pip install 'corral[pandas]'``): item parameters, result
        fields and metadata (run id, attempts, timings, tokens, cost), one row per item and stage."""
        from corral.api.frames import dataframe

        return dataframe(self.records(stage=stage, states=states))

    def records(self, stage: str | None = None, states: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """One record per (item, stage): item parameters, result fields and metadata."""
        t, i = schema.tasks, schema.items
        query = (select(t.c.stage, t.c.state, t.c.attempts, t.c.result, t.c.error_class, t.c.error_message,
                        t.c.started_at, t.c.finished_at, t.c.host, t.c.tokens_in, t.c.tokens_out, t.c.cost,
                        t.c.id, i.c.key, i.c.item_id, i.c.params)
                 .select_from(t.outerjoin(i, (i.c.run_id == t.c.run_id) & (i.c.idx == t.c.item_idx)))
                 .where(t.c.run_id == self.id).order_by(t.c.id))
        if stage:
            query = query.where(t.c.stage == stage)
        if states:
            query = query.where(t.c.state.in_(states))
        order = (loads(self.row.get("selection")) or {}).get("param_order") or []
        with self.ledger.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
            for row in result:
                yield _record(self.id, row, order)


_META = frozenset(("run_id", "stage", "item_key", "item_id", "task_id", "state", "attempts", "error_class",
                   "error_message", "started_at", "finished_at", "duration_s", "host", "tokens_in", "tokens_out",
                   "cost", "result"))


def _record(run_id: str, row, order: list[str]) -> dict[str, Any]:
    (stage, state, attempts, result, error_class, error_message, started, finished, host, tin, tout, cost,
     tid, key, item_id, params) = row
    record: dict[str, Any] = {"run_id": run_id, "stage": stage, "item_key": key or "all", "item_id": item_id or "all",
                              "task_id": task_key(tid)}
    values = json.loads(params) if params else {}
    # Parameters are stored canonically (sorted); give them back in the campaign file's order.
    # A parameter or result field named like a metadata column gets a prefix instead of being lost.
    for name in [n for n in order if n in values] + [n for n in values if n not in order]:
        record[f"param.{name}" if name in _META else name] = values[name]
    value = json.loads(result) if result else None
    if isinstance(value, dict):
        for name, field in value.items():
            record[f"result.{name}" if name in record or name in _META else name] = field
    elif value is not None:
        record["result"] = value
    record.update(state=state, attempts=attempts, error_class=error_class, error_message=error_message,
                  started_at=started, finished_at=finished,
                  duration_s=(finished - started) if started and finished else None, host=host)
    if tin is not None or tout is not None or cost is not None:
        record.update(tokens_in=tin, tokens_out=tout, cost=cost)
    return record
