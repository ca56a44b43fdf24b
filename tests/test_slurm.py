"""The slurm backend against a real SLURM cluster (scripts/slurm-local-cluster: slurmctld, slurmd,
slurmdbd with MariaDB, started by `make test`). Nothing here is mocked: jobs are real sbatch
arrays, states come from sacct, preemption and node failures are caused with scontrol."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import corral_cli, query_ledger, write_campaign, write_module

# One cluster, one node: `make test` runs the SLURM tests one after another, after the others.
pytestmark = pytest.mark.slurm

GOLDEN = Path(__file__).parent / "golden"
NODE = os.uname().nodename


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(tmp_path: Path):
    """A failed test must not leave jobs queued in front of the next one."""
    yield
    try:
        name = job_name(tmp_path)
    except (sqlite3.Error, IndexError):
        return
    subprocess.run(["scancel", "--name", name], capture_output=True)


def rows(folder: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(folder / ".corral" / "ledger.db") as db:
        return db.execute(sql, args).fetchall()


def submissions_made(folder: Path) -> int:
    try:
        return rows(folder, "SELECT count(*) FROM submissions")[0][0]
    except sqlite3.Error:
        return 0     # the controller is still creating the ledger


def slurm_backend(**settings) -> dict:
    return {"type": "slurm", "poll_interval": "1s", "max_poll_interval": "2s", **settings}


def sacct_jobs(name: str) -> list[dict[str, str]]:
    out = subprocess.run(["sacct", "--name", name, "-X", "--parsable2", "--noheader", "--starttime", "now-1hour",
                          "--format", "JobID,State,Comment,Partition,ExitCode"],
                         capture_output=True, text=True, check=True).stdout
    keys = ("job", "state", "comment", "partition", "exit")
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]


def job_name(folder: Path) -> str:
    run_id = rows(folder, "SELECT id FROM runs")[0][0]
    from corral.backends.slurm import job_name_for

    return job_name_for(run_id)


# -- the generated script ---------------------------------------------------------------------------


def test_sbatch_script_matches_golden_file(tmp_path: Path):
    write_module(tmp_path, "gpu_tasks", "def train(item, ctx):\n    return {'ok': True}\n")
    write_campaign(tmp_path, {
        "name": "golden",
        "items": {"grid": {"lr": [0.1, 0.01], "seed": {"range": [0, 5]}}},
        "stages": {"train": {
            "call": "gpu_tasks:train", "backend": "gpu", "timeout": "20m", "secrets": ["HF_TOKEN"],
            "resources": {"cpus": 8, "gpus": 1, "mem": "32G", "time": "2h", "constraint": "a100",
                          "sbatch": ["--mail-type=FAIL"], "setup": ["source .venv/bin/activate"]}}},
        "backends": {"gpu": {
            "type": "slurm", "partition": "gpu", "account": "lab", "qos": "normal", "exclude": "node13",
            "tasks_per_job": 4, "max_running": 2, "launcher": "apptainer exec --nv image.sif",
            "python": "python3", "setup": ["module load cuda/12.1"], "env": ["WANDB_API_KEY"],
            "sbatch": ["--nice=10"]}},
    })
    proc = corral_cli(tmp_path, "run", "--dry-run", check=0, env={"HF_TOKEN": "hf_golden_value"})
    plan = json.loads(proc.stdout)
    preview = plan["submissions"]["train"]
    assert preview["elements"] == 3 and preview["tasks_per_job"] == 4
    script = preview["sbatch"][0]["script"].replace(str(tmp_path), "<ROOT>")
    assert "HF_TOKEN=" not in script and "WANDB_API_KEY=" not in script and "hf_golden_value" not in script
    assert script == (GOLDEN / "slurm_gpu.sbatch").read_text()
    assert not (tmp_path / ".corral" / "runs").exists(), "a dry run writes nothing"


# -- a pipeline on the cluster ----------------------------------------------------------------------

PIPELINE = """
import json, os, pathlib

def prepare(ctx):
    pathlib.Path("prepared.txt").write_text("ok")
    return {"prepared": True}

def summarize(ctx):
    return {"summary": True, "job": os.environ.get("SLURM_JOB_ID")}
"""


def test_pipeline_of_three_stages_with_afterok_an_array_of_1000_tasks_and_retried_exit_codes(
        cluster: str, tmp_path: Path):
    write_module(tmp_path, "pipe", PIPELINE)
    flaky = ("if [ {x} -lt 5 ] && [ ! -e flag_{x} ]; then touch flag_{x}; exit 3; fi; "
             "test -e prepared.txt")
    write_campaign(tmp_path, {
        "name": "pipe",
        "items": {"grid": {"x": {"range": [0, 1000]}}},
        "stages": {
            "prepare": {"call": "pipe:prepare", "per": "all", "backend": "cluster"},
            "work": {"run": ["sh", "-c", flaky], "needs": "prepare", "backend": "cluster",
                     "retries": {"max": 1, "backoff": "1s", "on": ["exit_code"]}},
            "summary": {"call": "pipe:summarize", "per": "all", "needs": "work", "backend": "cluster"},
        },
        "backends": {"cluster": slurm_backend(tasks_per_job=50)},
    })
    corral_cli(tmp_path, "run", "--quiet", timeout=400, check=0)
    states = dict(rows(tmp_path, "SELECT stage, group_concat(DISTINCT state) FROM tasks GROUP BY stage"))
    assert states == {"prepare": "done", "work": "done", "summary": "done"}
    retried = rows(tmp_path, "SELECT item_idx, attempts FROM tasks WHERE stage='work' AND attempts > 1")
    assert sorted(retried) == [(i, 2) for i in range(5)]
    events = rows(tmp_path, "SELECT message FROM events WHERE message LIKE '%exit_code%'")
    assert len(events) == 5
    log = (tmp_path / ".corral" / "corral.log").read_text()
    # The stages after 'prepare' went to the cluster before 'prepare' finished, held by afterok.
    assert "stage work: 1000 tasks sent ahead" in log
    assert "sent ahead" in log.split("stage work: 1000 tasks sent ahead", 1)[1] or "stage summary" in log
    jobs = sacct_jobs(job_name(tmp_path))
    arrays = {j["job"].split("_")[0] for j in jobs}
    subs = rows(tmp_path, "SELECT stage, remote_id, json_extract(info, '$.elements') FROM submissions")
    work_subs = [s for s in subs if s[0] == "work"]
    assert work_subs[0][2] == 20, "1000 tasks in 20 array elements of 50"
    assert len({s[1] for s in subs}) == len(subs), "one sbatch call per submission"
    # The first 'summary' waited on a 'work' array with failures: SLURM held it
    # (DependencyNeverSatisfied), corral cancelled it and sent it again after the retries.
    assert arrays <= {s[1] for s in subs} and [s[0] for s in subs].count("summary") >= 2
    # Job efficiency from sacct is kept with each submission.
    info = json.loads(rows(tmp_path, "SELECT info FROM submissions WHERE stage='work' ORDER BY id")[0][0])
    element = info["efficiency"]["0"]
    assert element[1] in ("COMPLETED", "FAILED") and element[2] is not None and element[5] == NODE
    status = json.loads(corral_cli(tmp_path, "status", "--json", check=0).stdout)
    assert status["totals"]["done"] == 1002
    work_jobs = status["jobs"]["work"]
    # (MaxRSS is sampled every second: elements this short may finish before a sample.)
    assert work_jobs["elements"] == 21 and work_jobs["nodes"] == [NODE] and "max_rss_bytes" in work_jobs
    assert "cluster jobs of work: 21" in corral_cli(tmp_path, "status", check=0).stdout
    # `corral logs` tells where a task ran: its array element, state, node and usage.
    task = rows(tmp_path, "SELECT id FROM tasks WHERE stage='work' AND attempts = 1 ORDER BY id LIMIT 1")[0][0]
    logs = corral_cli(tmp_path, "logs", f"t{task}", check=0).stdout
    assert f"job={work_subs[0][1]}_0" in logs and "state=COMPLETED" in logs or "state=FAILED" in logs, logs
    assert f"node={NODE}" in logs and "elapsed_s=" in logs and "stdout=" in logs, logs


# -- failures the cluster causes ----------------------------------------------------------------------


def test_time_limit_and_memory_kill_with_more_memory_on_retry(cluster: str, tmp_path: Path):
    hog = f"{sys.executable} -c \"import time; x = b'x' * (300 * 2**20); time.sleep(3)\""
    write_campaign(tmp_path, {
        "name": "limits",
        "items": {"list": [{"x": 0}]},
        "stages": {
            "slow": {"run": ["sleep", "300"], "backend": "nosignal", "resources": {"time": "1m"}},
            "hog": {"run": ["sh", "-c", hog], "backend": "cluster", "resources": {"mem": "100M"},
                    "retries": {"max": 1, "backoff": "1s", "on": ["oom"], "mem": "x8"}},
        },
        "backends": {"cluster": slurm_backend(), "nosignal": slurm_backend(signal="")},
    })
    corral_cli(tmp_path, "run", "--quiet", timeout=240, check=1)
    slow = rows(tmp_path, "SELECT state, error_class, error_message FROM tasks WHERE stage='slow'")[0]
    assert slow[:2] == ("failed", "timeout"), slow
    assert "TIMEOUT" in slow[2]
    hog_row = rows(tmp_path, "SELECT state, attempts FROM tasks WHERE stage='hog'")[0]
    assert hog_row == ("done", 2)
    first = rows(tmp_path, "SELECT message FROM events WHERE stage='hog' AND message LIKE 'attempt 1 failed%'")
    assert first and "(oom)" in first[0][0]
    scripts = sorted((tmp_path / ".corral").glob("runs/*/submissions/*/plan.json"))
    mems = [json.loads(p.read_text())["parts"][0]["script"] for p in scripts]
    assert any("--mem=100M" in s for s in mems) and any("--mem=800M" in s for s in mems)


@pytest.mark.postgres
def test_memory_scaled_on_retry_on_a_postgresql_ledger(cluster: str, tmp_path: Path, pg_fresh_url: str):
    """The shared ledger's claim reads the last error class like the SQLite path: the retry after an
    out-of-memory kill asks for eight times the memory."""
    hog = f"{sys.executable} -c \"import time; x = b'x' * (300 * 2**20); time.sleep(3)\""
    write_campaign(tmp_path, {
        "name": "limits_pg",
        "items": {"list": [{"x": 0}]},
        "stages": {"hog": {"run": ["sh", "-c", hog], "backend": "cluster", "resources": {"mem": "100M"},
                           "retries": {"max": 1, "backoff": "1s", "on": ["oom"], "mem": "x8"}}},
        "backends": {"cluster": slurm_backend()},
        "ledger": pg_fresh_url,
    })
    corral_cli(tmp_path, "run", "--quiet", timeout=240, check=0)
    hog_row = query_ledger(tmp_path, "SELECT state, attempts FROM tasks WHERE stage='hog'")[0]
    assert hog_row == ("done", 2)
    scripts = sorted((tmp_path / ".corral").glob("runs/*/submissions/*/plan.json"))
    mems = [json.loads(p.read_text())["parts"][0]["script"] for p in scripts]
    assert any("--mem=100M" in s for s in mems) and any("--mem=800M" in s for s in mems)


def wait_until(predicate, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def running_elements(folder: Path) -> int:
    """Array elements of the folder's run that are running (0 while the ledger is being created)."""
    try:
        name = job_name(folder)
    except (sqlite3.Error, IndexError):
        return 0
    return len(running_jobs(name))


def running_jobs(name: str) -> list[str]:
    out = subprocess.run(["squeue", "--name", name, "-h", "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return out.split()


SLOW = """
import time

def slow(item, ctx):
    for _ in range(40):
        time.sleep(0.25)
    return {"x": item["x"], "attempt": ctx.attempt}
"""


def sbatch_retrying(args: list[str], tries: int = 5) -> str:
    """The test's own sbatch: a slurmctld busy with the suite's other jobs may time out an answer."""
    for attempt in range(tries):
        proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.strip()
        time.sleep(1 + attempt)
    raise AssertionError(f"sbatch {args} failed {tries} times: {proc.stderr}")


def test_preemption_requeues_without_using_an_attempt(cluster: str, tmp_path: Path):
    write_module(tmp_path, "slowmod", SLOW)
    write_campaign(tmp_path, {
        "name": "preempt", "items": {"grid": {"x": [0, 1]}},
        "stages": {"slow": {"call": "slowmod:slow", "backend": "low"}},
        "backends": {"low": slurm_backend(partition="low", tasks_per_job=1)},
    })
    controller = subprocess.Popen([sys.executable, "-m", "corral", "run", "--quiet"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The high job needs both CPUs, so it preempts whatever runs; on a loaded machine the second
        # element may start only after the first has finished, so one running is enough.
        assert wait_until(lambda: running_elements(tmp_path) >= 1, 60)
        time.sleep(2)
        high = sbatch_retrying(["-p", "high", "-c", "2", "--mem=100M", "--output=/dev/null", "--wrap", "sleep 3"])
        controller.wait(timeout=240)
    finally:
        controller.kill()
    assert controller.returncode == 0, controller.stderr.read()
    done = rows(tmp_path, "SELECT state, attempts FROM tasks")
    assert done == [("done", 1), ("done", 1)]
    results = [json.loads(line) for f in (tmp_path / ".corral").glob("runs/*/submissions/*/e*/results.jsonl")
               for line in f.read_text().splitlines()]
    assert any(r["status"] == "interrupted" for r in results), "the preempted worker stopped its task cleanly"
    states = subprocess.run(["sacct", "-j", high, "-X", "-n", "-o", "State"], capture_output=True, text=True).stdout
    assert "COMPLETED" in states


def test_node_down_mid_run_and_recovered(cluster: str, tmp_path: Path):
    write_module(tmp_path, "slowmod", SLOW)
    write_campaign(tmp_path, {
        "name": "nodedown", "items": {"grid": {"x": [0, 1]}},
        "stages": {"slow": {"call": "slowmod:slow", "backend": "cluster"}},
        "backends": {"cluster": slurm_backend(tasks_per_job=1)},
    })
    controller = subprocess.Popen([sys.executable, "-m", "corral", "run", "--quiet"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: running_elements(tmp_path) >= 1, 60)
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"nodename={NODE}", "state=down", "reason=corral-test"], check=True)
        time.sleep(3)
        subprocess.run(["scontrol", "update", f"nodename={NODE}", "state=resume"], capture_output=True)
        controller.wait(timeout=240)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={NODE}", "state=resume"], capture_output=True)
        controller.kill()
    assert controller.returncode == 0, controller.stderr.read()
    assert rows(tmp_path, "SELECT state, attempts FROM tasks") == [("done", 1), ("done", 1)]
    failed = subprocess.run(["sacct", "--name", job_name(tmp_path), "-X", "--duplicates", "-n", "-P", "-o", "State",
                             "--starttime", "now-1hour"], capture_output=True, text=True).stdout.split()
    assert "NODE_FAIL" in failed, failed
    # SLURM requeued the jobs the node took down; corral followed them instead of sending the work twice.
    assert len(rows(tmp_path, "SELECT id FROM submissions")) == 1


def test_dependency_that_can_never_be_satisfied_is_cancelled(cluster: str, tmp_path: Path):
    write_module(tmp_path, "broken", "def prepare(ctx):\n    raise RuntimeError('no data')\n"
                                     "def work(item, ctx):\n    return {}\n")
    write_campaign(tmp_path, {
        "name": "neverdep", "items": {"grid": {"x": [0, 1, 2]}},
        "stages": {"prepare": {"call": "broken:prepare", "per": "all", "backend": "cluster"},
                   "work": {"call": "broken:work", "needs": "prepare", "backend": "cluster"}},
        "backends": {"cluster": slurm_backend()},
    })
    corral_cli(tmp_path, "run", "--quiet", timeout=180, check=1)
    assert rows(tmp_path, "SELECT state, error_class FROM tasks WHERE stage='prepare'") == [("failed", "RuntimeError")]
    assert set(rows(tmp_path, "SELECT state, error_class FROM tasks WHERE stage='work'")) == {("cancelled", "upstream")}
    work_job = rows(tmp_path, "SELECT remote_id FROM submissions WHERE stage='work'")[0][0]
    # Never eligible, so accounting has no line for it; the controller still knows it.
    state = subprocess.run(["squeue", "-h", "-j", work_job, "-t", "all", "-o", "%T"], capture_output=True,
                           text=True).stdout.split()
    assert state and set(state) == {"CANCELLED"}, state


def test_race_between_two_partitions_cancels_the_loser(cluster: str, tmp_path: Path):
    """Also: the worker runs through a launcher (a stand-in for `apptainer exec`), and a secret is
    passed by name only."""
    write_module(tmp_path, "quick", "import os\n"
                                    "def work(item, ctx):\n"
                                    "    return {'x': item['x'], 'launcher': os.environ.get('VIA_LAUNCHER'),\n"
                                    "            'secret_ok': os.environ.get('CORRAL_TEST_SECRET') == 'hunter2'}\n")
    launcher = tmp_path / "container.sh"
    launcher.write_text('#!/bin/sh\nexport VIA_LAUNCHER=yes\nexec "$@"\n')
    launcher.chmod(0o755)
    write_campaign(tmp_path, {
        "name": "race", "items": {"grid": {"x": [0, 1, 2, 3]}},
        "stages": {"work": {"call": "quick:work", "backend": "cluster", "secrets": ["CORRAL_TEST_SECRET"]}},
        "backends": {"cluster": slurm_backend(tasks_per_job=2, launcher=str(launcher),
                                              race=[{"partition": "low"}, {"partition": "debug"}])},
    })
    subprocess.run(["scontrol", "update", "partition=low", "state=down"], check=True)   # queued, never started
    try:
        corral_cli(tmp_path, "run", "--quiet", timeout=180, check=0, env={"CORRAL_TEST_SECRET": "hunter2"})
    finally:
        subprocess.run(["scontrol", "update", "partition=low", "state=up"], check=True)
    assert {r[0] for r in rows(tmp_path, "SELECT state FROM tasks")} == {"done"}
    results = [json.loads(r[0]) for r in rows(tmp_path, "SELECT result FROM tasks")]
    assert all(r["launcher"] == "yes" and r["secret_ok"] for r in results), results
    for path in (tmp_path / ".corral").rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), f"the secret was written to {path}"
    info = json.loads(rows(tmp_path, "SELECT info FROM submissions")[0][0])
    assert info["race_winner"] == "debug"
    assert info["race"]["debug"]["started"] and not info["race"]["low"]["started"]
    jobs = {j["partition"]: j["state"] for j in sacct_jobs(job_name(tmp_path))}
    assert jobs["low"].startswith("CANCELLED") and jobs["debug"] == "COMPLETED", jobs


def test_kill_9_during_submission_never_submits_twice(cluster: str, tmp_path: Path):
    write_module(tmp_path, "quick", "def work(item, ctx):\n    return {'x': item['x']}\n")
    write_campaign(tmp_path, {
        "name": "kill9", "items": {"grid": {"x": {"range": [0, 24]}}},
        "stages": {"work": {"call": "quick:work", "backend": "cluster"}},
        "backends": {"cluster": slurm_backend(tasks_per_job=1, max_jobs=2)},
    })
    # A slow controller answer, as on a busy cluster: the job exists before corral hears its id,
    # so most kills land between the sbatch and the ledger recording it.
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    (slow / "sbatch").write_text(f'#!/bin/sh\nout=$({real} "$@") || exit $?\nsleep 1.5\necho "$out"\n')
    (slow / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"}
    rng = random.Random(7)
    seen = 0
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-m", "corral", "run", "--quiet"], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill it at a random moment of its next submission (sbatch takes 1.5 s here).
        wait_until(lambda seen=seen: (tmp_path / ".corral" / "ledger.db").exists() and submissions_made(tmp_path) > seen,
                   30, step=0.05)
        time.sleep(rng.uniform(0.0, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = submissions_made(tmp_path)
    corral_cli(tmp_path, "run", "--quiet", timeout=240, check=0)
    assert rows(tmp_path, "SELECT count(*), min(state), max(state), max(attempts) FROM tasks") == [(24, "done", "done", 1)]
    jobs = sacct_jobs(job_name(tmp_path))
    arrays: dict[str, set[str]] = {}
    for job in jobs:
        arrays.setdefault(job["comment"], set()).add(job["job"].split("_")[0])
    assert all(len(ids) == 1 for ids in arrays.values()), f"a submission was sent to the cluster twice: {arrays}"
    keys = {r[0] for r in rows(tmp_path, "SELECT idempotency_key FROM submissions WHERE remote_id IS NOT NULL")}
    assert {c.split(":")[0] for c in arrays} == keys, "every job on the cluster is recorded in the ledger"
    adopted = rows(tmp_path, "SELECT count(*) FROM events WHERE message LIKE 'adopted %'")[0][0]
    assert adopted >= 3, "kills landed between sbatch and the ledger, and the jobs were adopted"


def test_a_submit_limit_makes_corral_send_smaller_arrays(cluster: str, tmp_path: Path):
    """MaxSubmitJobs counts array elements: a refused array is not a failure; corral asks for fewer."""
    write_module(tmp_path, "quick", "def work(item, ctx):\n    return {'x': item['x']}\n")
    write_campaign(tmp_path, {
        "name": "limited", "items": {"grid": {"x": {"range": [0, 8]}}},
        "stages": {"work": {"call": "quick:work", "backend": "cluster"}},
        "backends": {"cluster": slurm_backend(tasks_per_job=1)},
    })
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["sacctmgr", "-i", "modify", "user", "where", f"name={user}", "set", "MaxSubmitJobs=3"],
                   capture_output=True, check=True)
    try:
        corral_cli(tmp_path, "run", "--quiet", timeout=180, check=0)
    finally:
        subprocess.run(["sacctmgr", "-i", "modify", "user", "where", f"name={user}", "set", "MaxSubmitJobs=-1"],
                       capture_output=True, check=True)
    assert rows(tmp_path, "SELECT count(*), min(state), max(state), max(attempts) FROM tasks") == [(8, "done", "done", 1)]
    log = (tmp_path / ".corral" / "corral.log").read_text()
    assert "the cluster refused more jobs" in log, log
    sizes = [r[0] for r in rows(tmp_path, "SELECT json_extract(info, '$.elements') FROM submissions "
                                          "WHERE remote_id IS NOT NULL")]
    assert sizes and max(sizes) <= 3 and sum(sizes) == 8, sizes


def test_without_accounting_jobs_are_followed_with_squeue_and_result_files(cluster: str, tmp_path: Path):
    write_module(tmp_path, "quick", "def work(item, ctx):\n    return {'x': item['x']}\n")
    write_campaign(tmp_path, {
        "name": "noacct", "items": {"grid": {"x": [0, 1, 2, 3]}},
        "stages": {"work": {"call": "quick:work", "backend": "cluster"}},
        "backends": {"cluster": slurm_backend(tasks_per_job=2)},
    })
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (shim / "sacct").chmod(0o755)
    corral_cli(tmp_path, "run", "--quiet", timeout=120, check=0, env={"PATH": f"{shim}:{os.environ['PATH']}"})
    assert {r[0] for r in rows(tmp_path, "SELECT state FROM tasks")} == {"done"}
    assert "following jobs with squeue and result files" in (tmp_path / ".corral" / "corral.log").read_text()
