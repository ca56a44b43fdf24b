"""SLURM submission cost: N no-op tasks through corral vs submitit's ``map_array``, same cluster, same run.

    python bench/slurm_submit.py [--tasks 50000] [--submitit-tasks 300] [--skip-submitit] [--json out.json]

corral runs the N tasks to completion in-process (``corral.open(...).start()``, then ``Run.run``,
the loop ``corral run`` uses), with a ``slurm`` backend of default settings except a 1 s poll
interval (5 s at most). Measured: wall time until every task is submitted and until every task is
recorded, sbatch calls, status calls (sacct + squeue) per tick, and slurmctld RPCs (``sdiag``
counters before and after).

submitit (installed only in a separate virtual environment, ``--submitit-python``; see
``--setup-submitit``) runs as a subprocess (``bench/_submitit_part.py``):
  1. it submits all N (arrays of at most 1000: the cluster's MaxArraySize caps array indexes and
     submitit does not split a map_array), the jobs are then cancelled;
  2. a smaller ``--submitit-tasks`` run goes to completion (``job.result()`` on every job); its time
     to finish and its per-task RPCs are extrapolated linearly to N, and labelled so.
Both tools' calls are counted the same way: SLURM's commands are wrapped, on PATH, by shims that
log each call to a file. ``sdiag``'s counters are global: jobs of other users during a measured
part are counted too, so each part records the other jobs that overlapped it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOOLS = ("sbatch", "sacct", "squeue", "scancel", "scontrol", "sinfo")
SUBMITIT_JOB_NAME = "bench-submitit"
#: RPCs sent by the tools' own commands (sbatch, squeue, scontrol, scancel); the rest come from
#: the jobs (batch script completion, srun steps, epilogs) and the daemons.
COMMAND_RPCS = frozenset({
    "REQUEST_SUBMIT_BATCH_JOB", "REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_JOB_USER_INFO",
    "REQUEST_PARTITION_INFO", "REQUEST_BUILD_INFO", "REQUEST_KILL_JOB", "REQUEST_CANCEL_JOB_STEP",
    "REQUEST_FED_INFO", "REQUEST_NODE_INFO", "REQUEST_NODE_INFO_SINGLE", "REQUEST_UPDATE_JOB",
})
#: sdiag's own request, left out of every count
SDIAG_RPC = "REQUEST_STATS_INFO"
QUIET_REASONS = ("BeginTime", "Dependency", "JobHeld", "DependencyNeverSatisfied")


# -- counting ---------------------------------------------------------------------------------


def write_shims(folder: Path) -> Path:
    """A folder of scripts that log their name and run the real tool; put it first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            raise SystemExit(f"{tool} is not on PATH: this machine is not a SLURM submission host")
        shim = folder / tool
        shim.write_text(f'#!/bin/sh\necho {tool} >> "${{BENCH_SLURM_CALL_LOG:-/dev/null}}"\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return folder


def logged_calls(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    return dict(Counter(line.strip() for line in path.read_text().splitlines() if line.strip()))


def sdiag() -> dict[str, Any]:
    """slurmctld's RPC counters by message type and by user."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = None
    by_type: dict[str, int] = {}
    by_user: dict[str, int] = {}
    line_re = re.compile(r"^\s*(\S+)\s+\(\s*\d+\)\s+count:(\d+)")
    for line in out.splitlines():
        if line.startswith("Remote Procedure Call statistics by message type"):
            section = by_type
        elif line.startswith("Remote Procedure Call statistics by user"):
            section = by_user
        elif line and not line[0].isspace():
            section = None
        elif section is not None:
            match = line_re.match(line)
            if match:
                section[match.group(1)] = int(match.group(2))
    since = re.search(r"Data since\s+.*\((\d+)\)", out)
    return {"by_type": by_type, "by_user": by_user, "data_since": int(since.group(1)) if since else None}


def rpc_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """RPCs between two sdiag snapshots (sdiag's own requests left out)."""
    reset = before["data_since"] != after["data_since"]
    by_type = {}
    for name in sorted(set(before["by_type"]) | set(after["by_type"])):
        if name == SDIAG_RPC:
            continue
        count = after["by_type"].get(name, 0) - (0 if reset else before["by_type"].get(name, 0))
        if count:
            by_type[name] = count
    users = {}
    for name in set(before["by_user"]) | set(after["by_user"]):
        count = after["by_user"].get(name, 0) - (0 if reset else before["by_user"].get(name, 0))
        if count:
            users[name] = count
    commands = sum(n for name, n in by_type.items() if name in COMMAND_RPCS)
    total = sum(by_type.values())
    return {"total": total, "from_commands": commands, "from_jobs_and_daemons": total - commands,
            "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])), "by_user_incl_sdiag": users,
            "counters_reset_in_between": reset}


def other_jobs(start: float, end: float, ours: set[str]) -> int:
    """Jobs (array elements counted one by one) not named in ``ours`` that were submitted or ran
    between ``start`` and ``end``: their RPCs are in sdiag's counters too."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start - 3600))
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "--starttime", since, "--endtime", "now",
                          "--format", "JobName,Submit,Start,End"], capture_output=True, text=True, check=False).stdout
    count = 0
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 4 or fields[0] in ours:
            continue
        submit, begin, finish = (_stamp(f) for f in fields[1:4])
        submitted_inside = submit is not None and start <= submit <= end
        ran_inside = begin is not None and begin <= end and (finish is None or finish >= start)
        count += submitted_inside or ran_inside
    return count


def _stamp(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def element_states(name: str, since: float, jobs: list[str] | None = None) -> dict[str, int]:
    """Array elements of the jobs named ``name`` (of ``jobs`` only, if given) by the state sacct
    records (a range like ``[5-999]`` counted element by element): elements CANCELLED by someone
    else show up here. An array cancelled before any element started is not in accounting."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))
    out = subprocess.run(["sacct", "-X", "-n", "-P", "--name", name, "--starttime", start, "--endtime", "now",
                          "--format", "JobID,State"], capture_output=True, text=True, check=False).stdout
    states: Counter[str] = Counter()
    for line in out.splitlines():
        job, _, state = line.partition("|")
        if jobs is not None and job.split("_")[0] not in jobs:
            continue
        count = 1
        bracket = re.search(r"_\[([^\]]*)\]", job)
        if bracket:
            count = 0
            for part in bracket.group(1).split("%")[0].split(","):
                low, _, high = part.partition("-")
                count += int(high or low) - int(low) + 1
        states[state.split()[0] if state.strip() else "?"] += count
    return dict(states)


def wait_for_quiet_cluster(limit: float) -> list[str]:
    """Wait (up to ``limit`` seconds) until no job runs or waits for resources; returns what was
    still there."""
    deadline = time.time() + limit
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r|%j"], capture_output=True, text=True, check=False).stdout
        busy = [line for line in out.splitlines()
                if line.strip() and not any(reason in line.split("|")[2] for reason in QUIET_REASONS)]
        if not busy or time.time() >= deadline:
            return busy
        print(f"waiting for {len(busy)} jobs of others to finish...", file=sys.stderr)
        time.sleep(10)


#: what a stop must clean up: job names to cancel, the temporary folder, the submitit process
CLEANUP: dict[str, Any] = {"names": {SUBMITIT_JOB_NAME}, "folder": None, "scancel": "scancel", "child": None}


def _stop(signum: int, _frame: Any) -> None:
    if CLEANUP["child"] is not None:
        CLEANUP["child"].kill()
    for name in CLEANUP["names"]:
        subprocess.run([CLEANUP["scancel"], "--name", name], capture_output=True, check=False)
    if CLEANUP["folder"]:
        shutil.rmtree(CLEANUP["folder"], ignore_errors=True)
    print(f"stopped by signal {signum}; jobs cancelled", file=sys.stderr)
    os._exit(128 + signum)


def cancel_by_name(name: str, real_scancel: str, wait: float = 300) -> None:
    subprocess.run([real_scancel, "--name", name], capture_output=True, check=False)
    deadline = time.time() + wait
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "--name", name], capture_output=True, text=True, check=False).stdout
        if not out.strip():
            return
        time.sleep(2)


# -- corral -----------------------------------------------------------------------------------


def corral_campaign(folder: Path, tasks: int, partition: str, tasks_per_job: int | None) -> Path:
    (folder / "noop.py").write_text("def noop(item, ctx=None):\n    return {}\n")
    path = folder / "corral.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: slurm-submit-bench
        items:
          grid:
            i: {{range: [0, {tasks}]}}
        stages:
          work:
            call: noop:noop
            backend: cluster
        backends:
          cluster:
            type: slurm
            partition: {partition}
            poll_interval: 1s
            max_poll_interval: 5s
        """) + (f"    tasks_per_job: {tasks_per_job}\n" if tasks_per_job else ""))
    return path


def corral_part(folder: Path, tasks: int, partition: str, call_log: Path, real_scancel: str,
                tasks_per_job: int | None = None) -> dict[str, Any]:
    import corral
    from corral.backends.slurm import job_name_for

    path = corral_campaign(folder, tasks, partition, tasks_per_job)
    os.environ["BENCH_SLURM_CALL_LOG"] = str(call_log)
    wall_start, started = time.time(), time.perf_counter()
    before = sdiag()
    campaign = corral.open(str(path))
    run, _ = campaign.start()
    created_s = time.perf_counter() - started
    job_name = job_name_for(run.id)
    CLEANUP["names"].add(job_name)
    engines = []
    make_engine = run.engine

    def engine(clock=None):
        engines.append(make_engine(clock))
        return engines[-1]

    run.engine = engine     # the same loop as `corral run`; only the engine is kept to read its counters
    ticks: list[dict[str, Any]] = []
    seen: Counter[str] = Counter()
    marks: dict[str, Any] = {"submitted": 0}

    def on_tick(report) -> None:
        now = time.perf_counter() - started
        calls = Counter(engines[-1].backends["cluster"].commands.calls)
        delta = {tool: calls[tool] - seen[tool] for tool in calls if calls[tool] != seen[tool]}
        seen.update(delta)
        marks["submitted"] += report.submitted_tasks
        if report.submitted_tasks and "first_submission_s" not in marks:
            marks["first_submission_s"] = now
        ticks.append({"t": round(now, 3), "calls": delta, "status_calls": delta.get("sacct", 0) + delta.get("squeue", 0),
                      "submitted_tasks": report.submitted_tasks, "completed": report.completed,
                      "in_flight": report.in_flight})
        if marks["submitted"] >= tasks and "submitted_s" not in marks:
            marks["submitted_s"], marks["rpc_submitted"] = now, sdiag()
        if report.finished and "finished_s" not in marks:
            marks["finished_s"], marks["rpc_finished"] = now, sdiag()

    try:
        run.run(on_tick=on_tick)
    except BaseException:
        cancel_by_name(job_name, real_scancel)
        raise
    time.sleep(3)    # accounting records the last elements' end a moment after they end
    done = run.counts()["work"]["done"]
    subs = run.submissions(open_only=False)
    campaign.close()
    wall_end = time.time()
    if done != tasks:
        raise SystemExit(f"corral: only {done} of {tasks} tasks done")
    polled = [t for t in ticks if t["in_flight"] or t["status_calls"]]
    per_tick = [t["status_calls"] for t in polled] or [0]
    elements = sum(int(s["info"].get("elements") or 0) for s in subs)
    return {
        "tasks": tasks, "done": done, "tasks_per_job_setting": tasks_per_job, "create_run_s": round(created_s, 2),
        "first_submission_s": round(marks["first_submission_s"], 2), "submit_s": round(marks["submitted_s"], 2), "finish_s": round(marks["finished_s"], 2),
        "submissions": len(subs), "array_elements": elements,
        "tasks_per_element": round(tasks / elements, 1) if elements else None,
        "calls_counted_by_backend": dict(seen), "calls_logged_by_shims": logged_calls(call_log),
        "ticks": len(ticks), "polling_ticks": len(polled),
        "status_calls_per_tick_max": max(per_tick), "status_calls_per_tick_mean": round(statistics.mean(per_tick), 3),
        "ticks_with_more_than_one_status_call": [t for t in polled if t["status_calls"] > 1],
        "rpc_to_submitted": rpc_diff(before, marks["rpc_submitted"]),
        "rpc_to_finished": rpc_diff(before, marks["rpc_finished"]),
        "other_jobs_overlapping": other_jobs(wall_start, wall_end, {job_name}),
        "element_states": element_states(job_name, wall_start),
        "tick_log": [[t["t"], t["submitted_tasks"], t["completed"], t["calls"]] for t in ticks],
    }


# -- submitit ---------------------------------------------------------------------------------


def submitit_part(python: str, folder: Path, tasks: int, partition: str, wait: bool, env: dict[str, str],
                  call_log: Path, real_scancel: str, timeout: float) -> dict[str, Any]:
    env = {**env, "BENCH_SLURM_CALL_LOG": str(call_log)}
    command = [python, str(HERE / "_submitit_part.py"), "--tasks", str(tasks), "--folder", str(folder / "jobs"),
               "--partition", partition, "--job-name", SUBMITIT_JOB_NAME] + (["--wait"] if wait else [])
    wall_start = time.time()
    before = sdiag()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    CLEANUP["child"] = proc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:
        proc.kill()
        proc.wait()
        cancel_by_name(SUBMITIT_JOB_NAME, real_scancel)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise SystemExit(f"submitit: {tasks} tasks did not finish within {timeout:.0f} s") from None
        raise
    finally:
        CLEANUP["child"] = None
    after = sdiag()
    wall_end = time.time()
    calls = logged_calls(call_log)
    time.sleep(3)
    if not wait:
        cancel_by_name(SUBMITIT_JOB_NAME, real_scancel)   # outside the measured window
    if proc.returncode != 0:
        cancel_by_name(SUBMITIT_JOB_NAME, real_scancel)
        raise SystemExit(f"submitit part failed ({proc.returncode}):\n{stderr[-4000:]}")
    data = json.loads(stdout.strip().splitlines()[-1])
    rpc = rpc_diff(before, after)
    data.update(calls_logged_by_shims=calls, other_jobs_overlapping=other_jobs(wall_start, wall_end,
                                                                              {SUBMITIT_JOB_NAME}))
    data["rpc_to_finished" if wait else "rpc_to_submitted"] = rpc
    data["element_states"] = element_states(SUBMITIT_JOB_NAME, wall_start, data["arrays"])
    if wait:
        waited = max(1e-9, data["finish_s"] - data["submit_s"])
        data["status_calls_per_minute_waiting"] = round((calls.get("sacct", 0) + calls.get("squeue", 0))
                                                        / (waited / 60), 2)
    return data


def setup_submitit(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "submitit>=1.5,<2"], check=True)
    return str(python)


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=False).stdout
    pick = {k: v for k, v in (line.split("=", 1) for line in config.splitlines() if "=" in line)}
    keys = ("MaxArraySize", "MaxJobCount", "SchedulerType", "SchedulerParameters", "SelectType", "MinJobAge")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                          check=False).stdout.strip()
    changed = subprocess.run(["git", "status", "--short", "--", "src"], cwd=HERE.parent, capture_output=True, text=True,
                             check=False).stdout.split("\n")
    return {"corral_revision": head, "corral_uncommitted": [line[3:] for line in changed if line.strip()],
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "slurm": version,
            "slurm_config": {k: next((v.strip() for key, v in pick.items() if key.strip() == k), None) for k in keys}}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    c = results["corral"]
    out: dict[str, Any] = {
        "corral_sbatch_calls": c["calls_logged_by_shims"].get("sbatch", 0),
        "corral_status_calls_per_tick_max": c["status_calls_per_tick_max"],
        "corral_status_calls_per_tick_mean": c["status_calls_per_tick_mean"],
        "corral_rpcs_to_submitted": c["rpc_to_submitted"]["total"],
        "corral_rpcs_to_finished": c["rpc_to_finished"]["total"],
    }
    s = results.get("submitit_submit")
    f = results.get("submitit_finish")
    if s and f:
        n, m = results["tasks"], f["tasks"]
        # submitit's waiting calls sacct (slurmdbd), not slurmctld: what grows with the tasks is
        # the RPCs of the jobs themselves (batch script, srun step, completion), per task.
        per_task_jobs = f["rpc_to_finished"]["from_jobs_and_daemons"] / m
        extrapolated = s["rpc_to_submitted"]["total"] + per_task_jobs * n
        out.update({
            "submitit_extrapolation": (f"RPCs: measured submission of all {n} + {per_task_jobs:.2f} RPCs from "
                                       f"jobs and daemons per task (measured on {m}) x {n}; finish time: "
                                       f"{m} tasks' time x {n}/{m}"),
            "submitit_sbatch_calls": s["calls_logged_by_shims"].get("sbatch", 0),
            "submitit_rpcs_to_submitted": s["rpc_to_submitted"]["total"],
            "submitit_rpcs_to_finished_extrapolated": round(extrapolated),
            "submitit_finish_s_extrapolated": round(f["finish_s"] / m * n, 1),
            "ratio_rpcs_to_submitted": round(c["rpc_to_submitted"]["total"] / max(1, s["rpc_to_submitted"]["total"]), 4),
            "ratio_rpcs_to_finished_vs_extrapolated": round(c["rpc_to_finished"]["total"] / max(1, extrapolated), 4),
            "submitit_small_run_rpcs_per_task": round(f["rpc_to_finished"]["total"] / m, 2),
            "corral_rpcs_per_task": round(c["rpc_to_finished"]["total"] / n, 4),
        })
    return out


def print_table(results: dict[str, Any]) -> None:
    c, s, f = results["corral"], results.get("submitit_submit"), results.get("submitit_finish")
    summary = results["summary"]
    rows = [
        ("submit all tasks (s)", (f"{c['submit_s']:.1f} (run creation {c['create_run_s']:.1f}, first sbatch "
                                  f"{c['first_submission_s']:.1f})"),
         f"{s['submit_s']:.1f}" if s else "-"),
        ("sbatch calls", c["calls_logged_by_shims"].get("sbatch", 0),
         s["calls_logged_by_shims"].get("sbatch", 0) if s else "-"),
        ("slurmctld RPCs until all submitted", c["rpc_to_submitted"]["total"],
         s["rpc_to_submitted"]["total"] if s else "-"),
        ("finish all (s)", f"{c['finish_s']:.1f}",
         (f"{summary['submitit_finish_s_extrapolated']:.0f} (extrapolated from {f['tasks']} tasks: "
          f"{f['finish_s']:.1f})") if f else "-"),
        ("slurmctld RPCs until finished", c["rpc_to_finished"]["total"],
         (f"{summary['submitit_rpcs_to_finished_extrapolated']} (extrapolated; {f['tasks']} tasks: "
          f"{f['rpc_to_finished']['total']})") if f else "-"),
        ("status calls per tick, max / mean",
         f"{c['status_calls_per_tick_max']} / {c['status_calls_per_tick_mean']} ({c['polling_ticks']} ticks)",
         (f"{f['calls_logged_by_shims'].get('sacct', 0)} sacct calls, "
          f"{f['status_calls_per_minute_waiting']}/min ({f['tasks']} tasks)") if f else "-"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{results['tasks']} no-op tasks", file=sys.stderr)
    print(f"{'figure'.ljust(width)} | corral | submitit", file=sys.stderr)
    for name, a, b in rows:
        print(f"{name.ljust(width)} | {a} | {b}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--submitit-tasks", type=int, default=300,
                        help="tasks of the submitit run that goes to completion (extrapolated to --tasks)")
    parser.add_argument("--skip-submitit", action="store_true")
    parser.add_argument("--submitit-python", default="/tmp/bench-venv/bin/python",
                        help="an interpreter with submitit installed (not corral's environment)")
    parser.add_argument("--setup-submitit", action="store_true",
                        help="create the --submitit-python virtual environment and install submitit in it")
    parser.add_argument("--partition", default="debug")
    parser.add_argument("--tasks-per-job", type=int,
                        help="corral's tasks_per_job (default: unset, corral sizes array elements itself)")
    parser.add_argument("--wait-idle", type=float, default=600,
                        help="seconds to wait for other jobs on the cluster to finish before measuring")
    parser.add_argument("--submitit-timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    # A stop leaves no jobs and no temporary folder behind. The clean-up runs in the handler and
    # the process ends there: an exception raised at an arbitrary point of a tick could be caught
    # or block on a lock the interrupted code holds.
    signal.signal(signal.SIGTERM, _stop)

    if subprocess.run(["sinfo"], capture_output=True, check=False).returncode != 0:
        raise SystemExit("sinfo fails: start a cluster first (scripts/slurm-local-cluster)")
    if not args.skip_submitit:
        if args.setup_submitit:
            args.submitit_python = setup_submitit(Path(args.submitit_python).parent.parent)
        if not Path(args.submitit_python).exists():
            raise SystemExit(f"{args.submitit_python} does not exist: pass --setup-submitit, or "
                             "--submitit-python with an interpreter that has submitit")
    real_scancel = shutil.which("scancel") or "scancel"
    CLEANUP["scancel"] = real_scancel
    bench_start = time.perf_counter()
    busy = wait_for_quiet_cluster(args.wait_idle)
    results: dict[str, Any] = {"tasks": args.tasks, "submitit_tasks": args.submitit_tasks, "machine": machine(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "jobs_of_others_at_start": busy}
    with tempfile.TemporaryDirectory(prefix="slurm-submit-bench-") as tmp:
        root = Path(tmp)
        CLEANUP["folder"] = tmp
        shims = write_shims(root / "shims")
        env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"}
        os.environ["PATH"] = env["PATH"]
        (root / "corral").mkdir()
        print(f"corral: {args.tasks} tasks...", file=sys.stderr)
        results["corral"] = corral_part(root / "corral", args.tasks, args.partition, root / "corral.calls",
                                        real_scancel, args.tasks_per_job)
        if not args.skip_submitit:
            print(f"submitit: submitting {args.tasks} tasks (then cancelled)...", file=sys.stderr)
            results["submitit_submit"] = submitit_part(
                args.submitit_python, root / "submitit-submit", args.tasks, args.partition, False, env,
                root / "submitit-submit.calls", real_scancel, args.submitit_timeout)
            wait_for_quiet_cluster(120)
            print(f"submitit: {args.submitit_tasks} tasks to completion...", file=sys.stderr)
            results["submitit_finish"] = submitit_part(
                args.submitit_python, root / "submitit-finish", args.submitit_tasks, args.partition, True, env,
                root / "submitit-finish.calls", real_scancel, args.submitit_timeout)
    results["summary"] = summarize(results)
    results["benchmark_s"] = round(time.perf_counter() - bench_start, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
