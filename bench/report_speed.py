"""How fast is `corral report` on big ledgers, compared with a script over one JSON file per episode?

    python bench/report_speed.py            # 3 x 50,000 episodes, plus 1,000,000 results
    python bench/report_speed.py --quick    # 3 x 50,000 episodes, plus 200,000 results

Workload (job 5 of docs/DESIGN.md): 20 settings x 50 tasks x 50 repeats = 50,000 episodes per policy,
three policies as three runs. The ledger is built fast: each run is created with the API (its stage
is never run), then its tasks are set to done with a seeded random result ({"success", "progress",
"steps"}) by UPDATEs in chunks. The same results are written as one JSON file per episode under
results/<policy>/<setting>/<task>/episode_N.json, and a plain stdlib script that reads them and
computes the success rate by setting is the baseline.

Timed (best of --repeat, warm page cache): corral's aggregation in process (`aggregate()`), and the
whole `python -m corral report ...` command (interpreter start and imports included), against the
baseline script run the same way. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CAMPAIGN = """
name: {name}
params:
  policy: p0
items:
  grid:
    setting: [{settings}]
    task: [{tasks}]
    repeat: {{range: [0, {repeats}]}}
stages:
  episode:
    call: never:run
backends:
  local:
    workers: 1
    gpus: none
"""

BASELINE = r'''
import json, os, sys
root = sys.argv[1]
counts = {}
for policy in sorted(os.listdir(root)):
    for setting in os.listdir(os.path.join(root, policy)):
        k = n = 0
        for task in os.listdir(os.path.join(root, policy, setting)):
            folder = os.path.join(root, policy, setting, task)
            for name in os.listdir(folder):
                with open(os.path.join(folder, name)) as handle:
                    result = json.load(handle)
                k += bool(result["success"])
                n += 1
        counts[(policy, setting)] = (k, n)
print(json.dumps({f"{p}/{s}": k / n for (p, s), (k, n) in sorted(counts.items())}))
'''

SKILL = [0.2, 0.5, 0.75]


def make_campaign(folder: Path, name: str, settings: int, tasks: int, repeats: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "never.py").write_text("def run(item, ctx):\n    raise RuntimeError('never run')\n")
    path = folder / "corral.yaml"
    path.write_text(CAMPAIGN.format(name=name, settings=", ".join(f"s{i:02d}" for i in range(settings)),
                                    tasks=", ".join(f"t{i:02d}" for i in range(tasks)), repeats=repeats))
    return path


def fill_run(db: Path, run_id: str, skill: float, seed: int, files: Path | None) -> int:
    """Mark every task of a run done with a seeded random result; optionally also write result files."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    rows = conn.execute("SELECT t.id, i.params FROM tasks t JOIN items i ON i.run_id = t.run_id AND i.idx = t.item_idx "
                        "WHERE t.run_id = ? ORDER BY t.id", (run_id,)).fetchall()
    now = time.time()
    chunk: list[tuple] = []
    made: set[Path] = set()
    for n, (tid, raw) in enumerate(rows):
        params = json.loads(raw)
        difficulty = int(params["setting"][1:]) / 50
        success = rng.random() < max(0.0, skill - difficulty)
        result = {"success": success, "progress": 1.0 if success else round(rng.uniform(0, 0.9), 3),
                  "steps": rng.randint(20, 200)}
        text = json.dumps(result)
        chunk.append((text, now - 3600 + n * 0.05, now - 3600 + n * 0.05 + 0.04, tid))
        if files is not None:
            folder = files / params["setting"] / params["task"]
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            (folder / f"episode_{params['repeat']}.json").write_text(text)
        if len(chunk) >= 50_000:
            _flush(conn, chunk)
    _flush(conn, chunk)
    conn.execute("UPDATE runs SET status = 'finished', finished_at = ? WHERE id = ?", (now, run_id))
    conn.commit()
    conn.close()
    return len(rows)


def _flush(conn, chunk: list[tuple]) -> None:
    conn.execute("BEGIN")
    conn.executemany("UPDATE tasks SET state = 'done', attempts = 1, result = ?, started_at = ?, finished_at = ? "
                     "WHERE id = ?", chunk)
    conn.execute("COMMIT")
    chunk.clear()


def build(folder: Path, name: str, settings: int, tasks: int, repeats: int, policies: int,
          files: Path | None) -> tuple[Path, list[str], float]:
    import corral

    start = time.perf_counter()
    path = make_campaign(folder, name, settings, tasks, repeats)
    ids = []
    for p in range(policies):
        campaign = corral.open(str(path), [f"params.policy=p{p}"])
        try:
            run, _ = campaign.start()
            ids.append(run.id)
            db = campaign.sqlite_path()
        finally:
            campaign.close()
        fill_run(db, run.id, SKILL[p % len(SKILL)], seed=p, files=(files / f"p{p}") if files else None)
        time.sleep(1.01)  # run ids carry the second they were made
    return path, ids, time.perf_counter() - start


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def time_cli(folder: Path, args: list[str], repeat: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_LEDGER"}

    def call():
        proc = subprocess.run([sys.executable, "-m", "corral", "report", *args], cwd=folder, capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"corral report {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout

    return best_of(repeat, call)[0]


def time_api(path: Path, ids: list[str], by: list[str], repeat: int) -> tuple[float, object]:
    import corral
    from corral.report import aggregate

    campaign = corral.open(str(path))
    try:
        rows = [campaign.run(r).row for r in ids]
        return best_of(repeat, lambda: aggregate(campaign.ledger(), rows, by=by))
    finally:
        campaign.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 instead of 1,000,000 results for the big case")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="Build in this folder and keep it (default: a temporary folder).")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="corral-report-bench-"))
    out: dict = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count()}

    # -- 3 x 50,000 episodes --------------------------------------------------------------
    folder = base / "bench50k"
    files = base / "results"
    path, ids, built = build(folder, "bench", 20, 50, 50, 3, files)
    out["build_50k_x3_s"] = round(built, 2)
    newest = ids[-1]
    api_50k, table = time_api(path, [newest], ["setting"], args.repeat)
    out["episodes"] = table.total["all"]["expected"]
    out["corral_api_50k_by_setting_s"] = round(api_50k, 4)
    out["corral_cli_50k_by_setting_s"] = round(time_cli(folder, ["--run-id", newest, "--by", "setting"], args.repeat), 3)
    out["corral_cli_50k_json_by_setting_task_s"] = round(
        time_cli(folder, ["--run-id", newest, "--by", "setting,task", "-f", "json"], args.repeat), 3)
    api_x, table_x = time_api(path, ids, ["setting"], args.repeat)
    out["corral_api_3x50k_compare_by_setting_s"] = round(api_x, 4)
    cross = [a for r in ids for a in ("--run-id", r)]
    out["corral_cli_3x50k_compare_by_setting_s"] = round(time_cli(folder, cross + ["--by", "setting"], args.repeat), 3)
    out["corral_cli_3x50k_by_policy_s"] = round(time_cli(folder, cross + ["--by", "policy"], args.repeat), 3)

    # Baseline: a stdlib script over one JSON file per episode (one policy = 50,000 files, and all three).
    script = base / "baseline.py"
    script.write_text(BASELINE)
    one = base / "results_one"
    if not one.exists():
        one.mkdir()
        os.symlink(files / "p2", one / "p2")

    def run_baseline(root: Path) -> str:
        return subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True,
                              check=True).stdout

    baseline_50k, rates = best_of(args.repeat, lambda: run_baseline(one))
    baseline_3x, _ = best_of(args.repeat, lambda: run_baseline(files))
    out["files_script_50k_s"] = round(baseline_50k, 3)
    out["files_script_3x50k_s"] = round(baseline_3x, 3)
    # The two agree.
    ours = {f"p2/{row['key'][0]}": row["cells"]["all"]["success"]["rate"] for row in table.rows}
    theirs = json.loads(rates)
    assert all(abs(ours[k] - theirs[k]) < 1e-12 for k in theirs), "corral and the file script disagree"
    out["speedup_api_vs_files_50k"] = round(baseline_50k / api_50k, 1)
    out["speedup_cli_vs_files_50k"] = round(baseline_50k / out["corral_cli_50k_by_setting_s"], 1)
    out["speedup_api_vs_files_3x50k"] = round(baseline_3x / api_x, 1)

    # -- the big case -----------------------------------------------------------------------
    repeats = 200 if args.quick else 1000
    big = base / "big"
    path_big, ids_big, built_big = build(big, "big", 20, 50, repeats, 1, None)
    out["build_big_s"] = round(built_big, 1)
    api_big, table_big = time_api(path_big, ids_big, ["setting"], max(1, args.repeat - 1))
    out["big_results"] = table_big.total["all"]["done"]
    out["corral_api_big_by_setting_s"] = round(api_big, 3)
    api_big2, _ = time_api(path_big, ids_big, ["setting", "task"], 1)
    out["corral_api_big_by_setting_task_s"] = round(api_big2, 3)
    out["corral_cli_big_by_setting_s"] = round(time_cli(big, ["--by", "setting"], 1), 3)
    out["targets"] = {"50k_le_1s": out["corral_cli_50k_by_setting_s"] <= 1.0,
                      "ge_20x_vs_files": out["speedup_cli_vs_files_50k"] >= 20,
                      "big_le_10s": out["corral_cli_big_by_setting_s"] <= 10.0}
    out["workdir"] = str(base)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
