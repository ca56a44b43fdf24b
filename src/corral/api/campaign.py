"""Campaign: everything the CLI does, callable from Python, one method per command with its options.

``corral check`` is ``check()``, ``corral run`` is ``start()`` then ``Run.run()``, ``corral tick`` is
``tick()``, and so on: ``status``, ``retry``, ``cancel``, ``logs``, ``export``, ``report``, ``runs``
(with the registry's ``show``, ``diff``, ``tag``, ``note``, ``merge``, ``latest``) and ``ingest``.
Bad input raises the CorralError the command prints. Opening a campaign imports neither SQLAlchemy
nor the engine: a report on a SQLite ledger needs neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from corral.api.preflight import preflight
from corral.api.run import Run, TaskLogs
from corral.errors import CorralError
from corral.states import RunStatus
from corral.ledger.location import VALID_LEDGERS, campaign_ledger_url, driver_module, url_problem, url_source
from corral.spec import LoadedCampaign, load_campaign

if TYPE_CHECKING:
    from corral.api.registry import Registry
    from corral.api.report import Report
    from corral.engine import Clock
    from corral.engine.combine import Outcome
    from corral.engine.runs import Selection
    from corral.ledger import Ledger


def find_resumable(ledger, loaded, chosen, param_names=None):
    """The newest run that does this work (``corral.engine.runs.find_resumable``)."""
    from corral.engine.runs import find_resumable as find

    return find(ledger, loaded, chosen, param_names)


class Campaign:
    """A loaded campaign file and its ledger."""

    def __init__(self, loaded: LoadedCampaign, ledger_url: str | None = None):
        self.loaded = loaded
        self.spec = loaded.spec
        self.root = loaded.root
        self.ledger_url = campaign_ledger_url(loaded.root, loaded.spec.workdir, loaded.spec.ledger, ledger_url)
        self._ledger_source = url_source(loaded.spec.ledger, ledger_url)
        self._ledger: "Ledger | None" = None
        self._log = None

    @classmethod
    def load(cls, path: str | Path = "corral.yaml", overrides: list[str] | None = None,
             ledger: str | None = None) -> "Campaign":
        return cls(load_campaign(path, overrides or []), ledger_url=ledger)

    @property
    def log(self):
        """The controller's log, ``.corral/corral.log`` (opened on the first line written)."""
        if self._log is None:
            from corral.engine.log import ControllerLog

            self._log = ControllerLog(self.root / self.spec.workdir / "corral.log")
        return self._log

    def check_write_locations(self) -> None:
        """The workdir and the ledger are places corral may write: not a system folder, a device or
        a file where a folder belongs; a ledger URL of a kind corral can open. Nothing is written."""
        from corral.errors import SpecError
        from corral.paths import folder_problem

        workdir = self.root / self.spec.workdir
        problem = folder_problem(workdir)
        if problem:
            raise SpecError(f"the workdir {str(workdir)!r} {problem}", file=str(self.loaded.path), key="workdir",
                            expected="a folder for corral's own files inside the campaign's, e.g. .corral")
        problem = url_problem(self.ledger_url)
        if problem is None:
            return
        message = f"the ledger {_display(self.ledger_url)} {problem}"
        if self._ledger_source == "ledger":
            raise SpecError(message, file=str(self.loaded.path), key="ledger", expected=VALID_LEDGERS)
        raise SpecError(f"{self._ledger_source}: {message}", expected=VALID_LEDGERS)

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

    def ledger(self, create: bool = True) -> "Ledger":
        if self._ledger is None:
            from corral.ledger import Ledger

            self.check_write_locations()
            self.check_ledger_driver()
            self._ledger = Ledger(self.ledger_url, create=create)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> "Campaign":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sqlite_path(self) -> Path | None:
        if self.ledger_url.startswith("sqlite:///") and ":memory:" not in self.ledger_url:
            return Path(self.ledger_url.split("sqlite:///", 1)[1])
        return None

    def _remove_fresh_ledger(self) -> None:
        """Bad input found while creating the first run: leave nothing behind."""
        path = self.sqlite_path()
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

    # -- corral check --------------------------------------------------------------------

    def check(self, selection: "Selection | None" = None, preview: bool = False, *, limit: int | None = None,
              shard: str | tuple[int, int] | None = None) -> dict[str, Any]:
        """``corral check --json``: validate everything that can be checked without running, and
        describe the plan; with ``preview`` (``corral run --dry-run``), also what the backends would
        send (sbatch scripts, ...)."""
        from corral.api import checks

        return checks.plan(self, checks.selection(limit, shard, base=selection), preview=preview)

    # -- corral run / tick -----------------------------------------------------------------

    def start(self, selection: "Selection | None" = None, *, new: bool = False, run_id: str | None = None,
              force: bool = False, clock: "Clock | None" = None, limit: int | None = None,
              shard: str | tuple[int, int] | None = None, tags: Mapping[str, str] | Sequence[str] | None = None,
              note: str | None = None, controller_id: str | None = None,
              lease: float | None = None) -> tuple[Run, bool]:
        """What ``corral run`` works on: ``run_id`` if given, else the newest run whose defining config
        and selection are the campaign's, else a new one; tagged and noted as asked. A run continued
        takes the campaign's steering settings and new items (``run.messages`` says what changed). Returns (run, created); then
        ``run.run()`` ticks it to the end. ``controller_id``/``lease``: this controller on a shared
        ledger (default ``CORRAL_CONTROLLER_ID`` or ``CORRAL_HOST``, and ``CORRAL_LEASE``)."""
        from corral.api import checks
        from corral.engine import SystemClock
        from corral.engine.registry import parse_tags
        from corral.engine.continuing import continue_run
        from corral.engine.runs import create_run, resolve_run
        from corral.spec import ItemSource

        chosen = checks.selection(limit, shard, base=selection)
        checks.controller(controller_id, lease)
        if tags is not None and not isinstance(tags, Mapping):
            tags = parse_tags(tags)
        checks.check_extras(self.loaded)
        source = ItemSource(self.spec.items, self.root, self.loaded.path, blame=self.loaded.blame)
        param_names = source.param_names()  # item sources that cannot be read fail here, before anything is written
        if self.spec.items.key:
            source._check_key_template(self.spec.items.key)
        source.check_count()  # no items, or more than a run holds: refused before anything is written
        checks.check_stages(self.loaded, next(iter(source.params()), {}))
        preflight(self.loaded)  # secrets, API keys and GPUs, before a run (or a ledger) is created
        fresh = self.sqlite_path() is not None and not self.sqlite_path().exists()
        ledger = self.ledger()
        clock = clock or SystemClock()
        row, created, messages = None, False, []
        if run_id:
            row = resolve_run(ledger, self.loaded, run_id)
        elif not new:
            row = find_resumable(ledger, self.loaded, chosen, param_names)
        if row is not None:
            # Steering changes are recorded, new items added; a defining change needs ``force``.
            continued = continue_run(ledger, self.loaded, row, chosen, param_names, clock.now(), force=force,
                                     log=self.log)
            row, messages = continued.row, continued.messages
        else:
            try:
                row, created = create_run(ledger, self.loaded, chosen, clock.now(), reuse=not new)
            except CorralError:
                if fresh:
                    self._remove_fresh_ledger()
                raise
            if created:
                self.log(f"created run {row['id']} with {row['item_count']} items")
        run = Run(self, row, controller_id=controller_id, lease=lease)
        run.messages = messages
        if tags:
            self.registry().tag(run.id, tags)
        if note:
            self.registry().note(run.id, note)
        if created and not new:
            others = [r for r in ledger.find_runs(name=self.spec.name)
                      if r["id"] != run.id and r["status"] == RunStatus.ACTIVE]
            run.unfinished_elsewhere = others[0]["id"] if others else None
        return run, created

    def tick(self, run_id: str | None = None, *, limit: int | None = None, shard: str | tuple[int, int] | None = None,
             controller_id: str | None = None, lease: float | None = None, force: bool = False,
             clock: "Clock | None" = None) -> dict[str, Any]:
        """``corral tick --json``: one pass (poll, collect, plan, submit) of the run ``start`` picks
        (``force``: continue ``run_id`` even if what defines its work changed, as ``start``)."""
        run, created = self.start(run_id=run_id, limit=limit, shard=shard, controller_id=controller_id,
                                  lease=lease, clock=clock, force=force)
        report = run.tick(clock)
        return {"run_id": run.id, "created": created, "messages": run.messages, "locked": report.locked, "submitted": report.submitted,
                "submitted_tasks": report.submitted_tasks, "completed": report.completed, "failed": report.failed,
                "stopped_by_budget": report.stopped, "in_flight": report.in_flight, "status": report.status, "errors": report.errors}

    # -- one run -----------------------------------------------------------------------

    def run(self, run_id: str | None = None) -> Run:
        """An existing run: ``run_id`` (or a unique prefix of it), else the newest run of the campaign."""
        from corral.engine.runs import latest_run, resolve_run

        ledger = self.ledger(create=False)
        row = resolve_run(ledger, self.loaded, run_id) if run_id else latest_run(ledger, self.loaded)
        return Run(self, row)

    def status(self, run_id: str | None = None, submissions: bool = False) -> dict[str, Any]:
        """``corral status --json`` (with ``submissions``, the in-flight submissions too)."""
        run = self.run(run_id)
        data = run.status()
        if submissions:
            data["submissions"] = run.submissions(open_only=True)
        return data

    def retry(self, run_id: str | None = None, stage: str | None = None, error_class: str | None = None,
              cancelled: bool = False) -> dict[str, Any]:
        """``corral retry``: failed tasks and those the budget stopped (state ``budget``; with
        ``cancelled``, cancelled ones too) back to pending, their
        attempt numbers going on and their retries counted afresh. Returns ``{"run_id", "tasks"}``:
        how many will run again."""
        from corral.api.checks import check_stage

        run = self.run(run_id)
        check_stage(self.loaded, stage)
        return {"run_id": run.id, "tasks": run.retry(stage=stage, error_class=error_class, cancelled=cancelled)}

    def reparse(self, run_id: str | None = None, stage: str | None = None) -> dict[str, Any]:
        """``corral reparse``: the kept raw answers of LLM stages (of ``stage``) through ``parse``
        again, nothing sent. Returns ``{"run_id", "stages", "answers", "fixed", "still_failing",
        "released"}``."""
        from corral.api.checks import check_stage

        run = self.run(run_id)
        check_stage(self.loaded, stage)
        return run.reparse(stage=stage)

    def cancel(self, run_id: str | None = None, stage: str | None = None) -> dict[str, Any]:
        """``corral cancel``: the unfinished tasks cancelled. Returns ``{"run_id", "tasks"}``."""
        from corral.api.checks import check_stage

        run = self.run(run_id)
        check_stage(self.loaded, stage)
        return {"run_id": run.id, "tasks": run.cancel(stage=stage)}

    def logs(self, task: str, run_id: str | None = None, stage: str | None = None,
             all_attempts: bool = False) -> TaskLogs:
        """``corral logs TASK``: the task's record, where it ran remotely, and its log files."""
        return self.run(run_id).logs(task, stage=stage, all_attempts=all_attempts)

    def export(self, path: str | Path | IO[str] | None = None, format: str | None = None,
               stage: str | None = None, state: str | None = None, run_id: str | None = None) -> dict[str, Any]:
        """``corral export``: records to ``path`` (a file, a text handle, or stdout when None) as json,
        jsonl, csv or parquet (default: the format the file's suffix names, else jsonl). Returns
        ``{"run_id", "records", "path"}``."""
        from corral.api.checks import check_stage
        from corral.api.export import FORMATS, check_format
        from corral.spec.formats import output_format

        format = output_format(format, path, FORMATS, "jsonl")

        check_format(format, path)
        check_stage(self.loaded, stage)
        run = self.run(run_id)
        count = run.export(path, format=format, stage=stage, state=state)
        return {"run_id": run.id, "records": count, "path": str(path) if isinstance(path, (str, Path)) else None}

    def records(self, run_id: str | None = None, stage: str | None = None,
                states: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """A run's records (the newest run by default), streamed, as ``corral export`` writes them."""
        return self.run(run_id).records(stage=stage, states=states)

    def results(self, run_id: str | None = None, stage: str | None = None, states: list[str] | None = None):
        """A run's records (the newest run by default) as a pandas DataFrame."""
        return self.run(run_id).results(stage=stage, states=states)

    # -- corral report -----------------------------------------------------------------

    def report(self, name: str | None = None, *, run_id: str | Sequence[str] | None = None,
               where: Sequence[str] | None = None, by: Sequence[str] | str | None = None, metric: str | None = None,
               stage: str | None = None, compare: bool | None = None, format: str | None = None,
               output: str | Path | None = None, plot: str | Path | None = None,
               top: int | None = None, paired_by: str | None = None, pair_on: Sequence[str] | str | None = None,
               baseline: Any = None, paired_test: str | None = None, columns: str | None = None,
               lower_is_better: Sequence[str] | str | None = None,
               caption: str | None = None, label: str | None = None) -> "Report":
        """``corral report [NAME]``: a Report (``render(format)``, ``write(path)``, ``to_dict()``) of the
        named report ``name``; with no option at all, of every named report of the campaign; else of
        the table asked for: runs ``run_id`` (several: compared as columns) or those ``where``
        conditions select (default: the newest run), grouped ``by`` dimensions, rating ``metric``;
        ``top`` lists the N best and worst groups. ``format``, ``output`` and ``plot`` are the
        defaults of ``write()``. ``paired_by`` compares that dimension's values on the units they share
        (``pair_on``: the item parameters making a unit; ``baseline``: the value compared with;
        ``paired_test``: ``t`` or ``wilcoxon`` for numbers);
        ``columns`` puts a dimension's values in the columns; ``lower_is_better`` names result fields
        whose lowest value is best; ``caption`` and ``label`` wrap LaTeX in a table (docs/reports.md)."""
        from corral.api.report import build

        return build(self, name, run_id=run_id, where=where, by=by, metric=metric, stage=stage, compare=compare,
                     format=format, output=output, plot=plot, top=top, paired_by=paired_by, pair_on=pair_on,
                     baseline=baseline, paired_test=paired_test, columns=columns,
                     lower_is_better=lower_is_better, caption=caption, label=label)

    # -- corral runs / ingest ------------------------------------------------------------

    def registry(self) -> "Registry":
        """The runs of this ledger: ``list``, ``show``, ``diff``, ``tag``, ``note``, ``merge``, ``latest``,
        ``ingest`` (``corral runs`` and its sub-commands)."""
        from corral.api.registry import Registry

        return Registry(self)

    def runs(self, where: Sequence[str] = (), all_campaigns: bool = False) -> list[dict[str, Any]]:
        """``corral runs --json``: one summary per run, newest first, ``where`` as in ``--where``."""
        return self.registry().list(where=where, all_campaigns=all_campaigns)

    def ingest(self, paths: Sequence[str | Path]) -> "list[Outcome]":
        """``corral ingest``: runs from other ledger files or results folders, into this ledger."""
        return self.registry().ingest(paths)


def _display(url: str) -> str:
    from corral.api.checks import display_url

    return display_url(url)
