"""``corral``: every command takes the campaign file first (default ./corral.yaml), then overrides."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from corral.cli import formats, output, report_cmd, runs_cmd
from corral.cli import sim_cmd
from corral.cli.args import split_args
from corral.cli.output import err, print_json, when
from corral.errors import CorralError
from corral.states import RunStatus, TaskState

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run research campaigns from one campaign file, with one durable ledger.",
                  context_settings={"help_option_names": ["-h", "--help"]})

def _print_version(value: bool) -> None:
    if value:
        from corral import __version__

        typer.echo(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print corral's version and exit.")) -> None:
    """Run research campaigns from one campaign file, with one durable ledger."""


ARGS = typer.Argument(None, help="[CAMPAIGN.yaml] [key=value overrides...]", show_default=False)
LEDGER = typer.Option(None, "--ledger", help="Ledger URL or SQLite path (default: CORRAL_LEDGER, the file's "
                      "ledger:, or .corral/ledger.db beside the campaign file).")
RUN_ID = typer.Option(None, "--run-id", help="Act on this run (default: the newest run of the campaign).")
JSON = typer.Option(False, "--json", help="Print JSON on stdout.")
CONTROLLER_ID = typer.Option(None, "--controller-id", help="This controller's name on a shared ledger (default: "
                             "CORRAL_HOST or the host name); it polls only its own submissions.")
LEASE = typer.Option(None, "--lease", help="Seconds without a tick after which other controllers of a shared "
                     "ledger take this one's tasks back (default: CORRAL_LEASE or 60).")


def _campaign(args: list[str] | None, ledger: str | None, positional: int = 0):
    from corral.api import Campaign

    path, overrides, others = split_args(args, positional=positional)
    if len(others) > positional:
        raise CorralError(f"unexpected arguments {others[positional:]}: overrides look like key=value")
    return Campaign.load(path, overrides, ledger=ledger), others


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="Folder for the new campaign."),
         force: bool = typer.Option(False, "--force", help="Overwrite existing files.")) -> None:
    """Write a starter corral.yaml and tasks.py."""
    from corral.api.starter import init as write_starter

    written = write_starter(directory, force=force)
    for path in written:
        err.print(f"wrote {path}")
    err.print(f"next: corral check {directory / 'corral.yaml'} && corral run {directory / 'corral.yaml'}")


@app.command()
def check(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, as_json: bool = JSON,
          limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N items."),
          shard: Optional[str] = typer.Option(None, "--shard", help="Only shard I of N (I/N).")) -> None:
    """Validate the campaign and print the plan: items, tasks per stage, what would run."""
    campaign, _ = _campaign(args, ledger)
    plan = campaign.check(limit=limit, shard=shard)
    if as_json:
        print_json(plan)
        return
    output.out.print(f"campaign [bold]{plan['name']}[/bold] ({plan['campaign']})", highlight=False)
    output.out.print(f"items: {plan['items']}   tasks: {plan['tasks']}   ledger: {plan['ledger']}", highlight=False)
    rows = [{"stage": name, "per": s["per"], "tasks": s["tasks"], "needs": ",".join(s["needs"]) or "-",
             "backend": s["backend"], "slots": output.slots_text(s.get("slots")), s["kind"]: s["action"]}
            for name, s in plan["stages"].items()]
    output.out.print(output.table([{**r, "action": r.get("call") or r.get("run") or r.get("request")} for r in rows],
                                  ["stage", "per", "tasks", "needs", "backend", "slots", "action"]))
    for line in output.machine_lines(plan):
        output.out.print(line, highlight=False)
    from corral.cli.llm_output import projection_lines

    for line in projection_lines(plan["stages"]):
        output.out.print(line, highlight=False)
    if plan["resumes"]:
        adds = f" and add {plan['adds_items']} items" if plan.get("adds_items") else ""
        output.out.print(f"`corral run` would continue run {plan['resumes']}{adds}", highlight=False)
        if plan.get("drops_items"):
            output.out.print(f"{plan['drops_items']} items of run {plan['resumes']} are no longer in the campaign; "
                             "they stay in the run", highlight=False)
    else:
        output.out.print("`corral run` would start a new run", highlight=False)


@app.command()
def run(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
        dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run and exit."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N items (smoke runs)."),
        shard: Optional[str] = typer.Option(None, "--shard", help="Only items whose stable hash is in shard I of N."),
        new: bool = typer.Option(False, "--new", help="Start a new run even if one with this config exists."),
        force: bool = typer.Option(False, "--force", help="Continue --run-id even if its config differs."),
        tag: Optional[List[str]] = typer.Option(None, "--tag", help="Tag the run: key=value (repeatable)."),
        note: Optional[str] = typer.Option(None, "--note", help="Add a note to the run."),
        controller_id: Optional[str] = CONTROLLER_ID, lease: Optional[float] = LEASE,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings, errors and the result line.")) -> None:
    """Run the campaign until every task is done, failed or cancelled (resumes an unfinished run)."""
    campaign, _ = _campaign(args, ledger)
    if dry_run:
        print_json(campaign.check(limit=limit, shard=shard, preview=True))
        return
    the_run, created = campaign.start(run_id=run_id, limit=limit, shard=shard, new=new, force=force, tags=tag or [],
                                      note=note, controller_id=controller_id, lease=lease)
    if not quiet:
        err.print(f"{'started' if created else 'continuing'} run [bold]{the_run.id}[/bold]", highlight=False)
    for message in the_run.messages:
        err.print(message, highlight=False, markup=False)
    if the_run.unfinished_elsewhere:
        err.print(f"note: unfinished run {the_run.unfinished_elsewhere} has a different configuration; to continue "
                  f"it instead: corral run --run-id {the_run.unfinished_elsewhere} --force", highlight=False)
    from corral.cli.progress import RunProgress
    from corral.api import SystemClock

    clock = SystemClock()
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        err.print(f"\n{signal.Signals(signum).name}: stopping; running tasks will run again next time "
                  "(again to stop at once)")
        stop.set()
        clock.wake()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with RunProgress(the_run) if not quiet else contextlib.nullcontext() as progress:
            report = the_run.run(clock=clock, on_tick=progress.update if progress else None, should_stop=stop.is_set)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = the_run.status()
    _print_summary(status, quiet=quiet)
    if stop.is_set() and not report.finished:
        raise typer.Exit(130)
    if status["run"]["status"] != RunStatus.FINISHED:
        raise typer.Exit(1)


@app.command()
def tick(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
         limit: Optional[int] = typer.Option(None, "--limit"), shard: Optional[str] = typer.Option(None, "--shard"),
         as_json: bool = JSON, controller_id: Optional[str] = CONTROLLER_ID, lease: Optional[float] = LEASE,
         force: bool = typer.Option(False, "--force", help="Continue --run-id even if what defines its work changed.")
         ) -> None:
    """One pass (poll, collect, plan, submit) and exit: for cron."""
    campaign, _ = _campaign(args, ledger)
    data = campaign.tick(run_id=run_id, limit=limit, shard=shard, controller_id=controller_id, lease=lease,
                         force=force)
    if as_json:
        print_json(data)
        return
    for message in data["messages"]:
        err.print(message, highlight=False, markup=False)
    if data["locked"]:
        err.print(f"run {data['run_id']}: another controller is ticking; nothing done")
    else:
        err.print(f"run {data['run_id']}: submitted {data['submitted_tasks']} tasks in {data['submitted']} "
                  f"submissions, recorded {data['completed']} done and {data['failed']} failed"
                  + (f", {data['stopped_by_budget']} stopped by the budget" if data["stopped_by_budget"] else "")
                  + f"; {data['status']}",
                  highlight=False)
        for message in data["errors"]:
            err.print(f"  {message}", highlight=False)


@app.command()
def status(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
           as_json: bool = JSON,
           submissions: bool = typer.Option(False, "--submissions", help="List in-flight submissions."),
           fmt: Optional[str] = formats.FORMAT, out_file: Optional[Path] = formats.OUTPUT) -> None:
    """Where a run stands: tasks per stage and state."""
    fmt = formats.chosen_format(fmt, as_json, out_file)
    campaign, _ = _campaign(args, ledger)
    data = campaign.status(run_id=run_id, submissions=submissions)
    if fmt != "table" or out_file is not None:
        rows = [{"stage": stage, **states} for stage, states in data["stages"].items()]
        formats.emit(rows, status_columns(data), fmt, out_file, title=f"run {data['run']['id']}: {data['run']['status']}",
                     data=data)
        return
    _print_summary(data, to=output.out)
    if submissions:
        rows = [{"id": s["id"], "stage": s["stage"], "backend": s["backend"], "state": s["state"],
                 "remote_id": s["remote_id"], "tasks": s["task_count"], "submitted": when(s["submitted_at"])}
                for s in data["submissions"]]
        output.out.print(output.table(rows, ["id", "stage", "backend", "state", "remote_id", "tasks", "submitted"],
                                      title="in-flight submissions"))


def _print_summary(data, to=None, quiet: bool = False) -> None:
    """The result line, the table of tasks per stage and state, usage, and the most common error
    per stage; ``quiet``: the result line and the errors only."""
    console = to or err
    run = data["run"]
    stopped = data["totals"].get(TaskState.BUDGET.value, 0)
    console.print(f"run [bold]{run['id']}[/bold]: {run['status']} ({data['progress']:.1%} of "
                  f"{data['totals']['total']} tasks finished" + (f", {stopped:,} of them stopped by the budget"
                                                                  if stopped else "") + ")", highlight=False)
    if quiet:
        for line in output.error_lines(data.get("errors") or []):
            console.print(line, highlight=False)
        return
    rows = []
    for stage, states in data["stages"].items():
        rows.append({"stage": stage, **{k: v for k, v in states.items()}})
    console.print(output.table(rows, status_columns(data)))
    from corral.cli.llm_output import progress_lines, usage_lines

    for line in usage_lines(data) + progress_lines(data):
        console.print(line, highlight=False)
    for sub in data.get("submissions_unknown") or []:
        console.print(f"submission {sub['id']} ({sub['stage']}): the provider does not know {sub['remote_id']} "
                      f"({sub['polls']} polls so far); given up and sent again after {sub['give_up_after']}",
                      highlight=False)
    if data.get("submissions_failed"):
        console.print(f"submissions failed as a whole: {data['submissions_failed']}; latest:", highlight=False)
        for sub in data["submissions_failed_latest"]:
            console.print(f"  {sub['id']} ({sub['stage']}, {sub['remote_id']}, {sub['task_count']} tasks): "
                          f"{sub['error']}", highlight=False)
    for line in output.error_lines(data.get("errors") or []):
        console.print(line, highlight=False)
    for stage, jobs in (data.get("jobs") or {}).items():
        states = ", ".join(f"{k} {v}" for k, v in sorted(jobs["states"].items()))
        mean = jobs["elapsed_total_s"] / max(1, jobs["elements"])
        console.print(f"cluster jobs of {stage}: {jobs['elements']} ({states}); elapsed mean {mean:.1f}s, "
                      f"max {jobs['elapsed_max_s']:.0f}s; MaxRSS {jobs['max_rss_bytes'] / 2**20:.0f} MiB; "
                      f"{jobs['cpus']} CPUs; nodes {', '.join(jobs['nodes'])}", highlight=False)


STATUS_COLUMNS = ["stage", "total", "done", "failed", "cancelled", "running", "queued", "pending", "waiting"]


def status_columns(data) -> list[str]:
    """The status table's columns: ``budget`` (tasks the budget stopped) when a run has any."""
    if not data["totals"].get(TaskState.BUDGET.value):
        return STATUS_COLUMNS
    at = STATUS_COLUMNS.index("cancelled") + 1
    return STATUS_COLUMNS[:at] + [TaskState.BUDGET.value] + STATUS_COLUMNS[at:]


@app.command()
def retry(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
          stage: Optional[str] = typer.Option(None, "--stage", help="Only this stage."),
          error_class: Optional[str] = typer.Option(None, "--error-class", help="Only failures of this class."),
          cancelled: bool = typer.Option(False, "--cancelled", help="Also tasks cancelled by the user."),
          as_json: bool = JSON) -> None:
    """Send failed tasks, and those the budget stopped, back to pending (attempt numbers go on, retries count
    afresh); then `corral run` or `tick`."""
    campaign, _ = _campaign(args, ledger)
    done = campaign.retry(run_id=run_id, stage=stage, error_class=error_class, cancelled=cancelled)
    if as_json:
        print_json(done)
    else:
        err.print(f"{done['tasks']} tasks of run {done['run_id']} will run again")


@app.command()
def reparse(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
            stage: Optional[str] = typer.Option(None, "--stage", help="Only this LLM stage."),
            as_json: bool = JSON) -> None:
    """Run `parse` again over the kept raw answers of LLM stages, sending nothing."""
    campaign, _ = _campaign(args, ledger)
    done = campaign.reparse(run_id=run_id, stage=stage)
    if as_json:
        print_json(done)
    else:
        err.print(f"{done['answers']} kept answers of {', '.join(done['stages'])} parsed again: {done['fixed']} "
                  f"parse failures now done, {done['still_failing']} still failing"
                  + (f", {done['released']} waiting tasks released" if done["released"] else ""))


@app.command()
def cancel(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
           stage: Optional[str] = typer.Option(None, "--stage", help="Only this stage."),
           as_json: bool = JSON) -> None:
    """Cancel the unfinished tasks of a run (outputs and logs are kept)."""
    campaign, _ = _campaign(args, ledger)
    done = campaign.cancel(run_id=run_id, stage=stage)
    if as_json:
        print_json(done)
    else:
        err.print(f"cancelled {done['tasks']} tasks of run {done['run_id']}")


@app.command()
def logs(args: Optional[List[str]] = typer.Argument(None, help="[CAMPAIGN.yaml] TASK [overrides...]"),
         ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
         stage: Optional[str] = typer.Option(None, "--stage", help="The stage, when TASK is an item key."),
         all_attempts: bool = typer.Option(False, "--all", help="Every attempt, not only the last.")) -> None:
    """Show a task's record and its log (TASK: a task id like t42, or an item key)."""
    campaign, others = _campaign(args, ledger, positional=1)
    if not others:
        raise CorralError("which task? give a task id (t42) or an item key")
    found = campaign.logs(others[0], run_id=run_id, stage=stage, all_attempts=all_attempts)
    task = found.task
    output.out.print(f"task t{task['id']} stage={task['stage']} item={task['key']} state={task['state']} "
                     f"attempts={task['attempts']}", highlight=False)
    if task["error_class"]:
        output.out.print(f"error ({task['error_class']}): {task['error_message']}", highlight=False)
    if found.remote:
        output.out.print(" ".join(f"{k}={v}" for k, v in found.remote.items() if v is not None), highlight=False)
    if not found.files:
        output.out.print("(no log output)")
        return
    for path, text in zip(found.files, found.texts()):
        output.out.print(f"--- {path}", highlight=False)
        sys.stdout.write(text)
        sys.stdout.flush()


@app.command()
def export(args: Optional[List[str]] = ARGS, ledger: Optional[str] = LEDGER, run_id: Optional[str] = RUN_ID,
           fmt: Optional[str] = typer.Option(None, "--format", "-f", help="json | jsonl | csv | parquet (needs -o); "
                                                                    "default: from the -o file's suffix, else jsonl"),
           out_file: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
           stage: Optional[str] = typer.Option(None, "--stage", help="Only this stage."),
           state: Optional[str] = typer.Option(None, "--state", help="Only tasks in this state, e.g. done.")) -> None:
    """Item parameters + result fields + metadata, one record per item and stage."""
    campaign, _ = _campaign(args, ledger)
    done = campaign.export(out_file, format=fmt, stage=stage, state=state, run_id=run_id)
    err.print(f"exported {done['records']} records of run {done['run_id']}")


app.command(name="runs")(runs_cmd.runs)
app.command(name="ingest")(runs_cmd.ingest)
app.command(name="report")(report_cmd.report)
app.add_typer(sim_cmd.app, name="sim")


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    output.show_corral_warnings()
    try:
        code = command.main(args=argv, prog_name="corral", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except CorralError as exc:
        from rich.text import Text

        err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # typer's command-line parsing errors (usage errors) know how to show themselves.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return 2
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            return exc.exit_code
        if type(exc).__name__ == "Abort":
            err.print("aborted")
            return 130
        return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    """Never show a traceback to a user: keep it in a file and say where."""
    from rich.text import Text

    log = Path(".corral") / "crash.log"
    try:
        log.parent.mkdir(exist_ok=True)
        log.write_text(traceback.format_exc())
        where = f" (details in {log})"
    except OSError:
        where = ""
    err.print(Text.assemble(("internal error: ", "bold red"), f"{type(exc).__name__}: {exc}{where}"))
    return 3


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
