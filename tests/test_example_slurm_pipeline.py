"""examples/slurm-pipeline: the ten-stage pipeline on the local SLURM cluster, and the data registry
it relies on (runs by benchmark/model/status, the latest run, merging collection runs without
duplicate trajectories)."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import corral_cli, write_campaign, write_module

# Collection runs as the pipeline's users make them: one per teacher model, run ids in their format,
# one item per (seed, episode), each episode's actions hashed. Two teachers that solve an episode
# the same way produce the same action hash: the merged training set keeps one of them.
COLLECT = """
name: collect
run_id: "{benchmark}_{provider}_{model}_{timestamp}"
params: {benchmark: webarena, provider: openai, model: gpt-4o, first: 0, episodes: 6}
items:
  grid:
    teacher: ["${params.model}"]
    seed: [1, 2]
    episode: {range: ["${params.first}", "${params.episodes}"]}
stages:
  collect:
    call: collect:collect
backends:
  local: {workers: 2, gpus: none}
"""

COLLECT_MODULE = """
import hashlib
import os
import time

def collect(item, ctx):
    if os.environ.get("COLLECT_SLOWLY"):
        with open(ctx.root / "calls.log", "a") as f:
            f.write(f"{item['seed']} {item['episode']}\\n")
        time.sleep(0.3)
    actions = f"seed{item['seed']}-episode{item['episode']}"
    return {"action_hash": hashlib.sha256(actions.encode()).hexdigest()[:16], "teacher": item["teacher"]}
"""


def action_hash(seed: int, episode: int) -> str:
    return hashlib.sha256(f"seed{seed}-episode{episode}".encode()).hexdigest()[:16]


def collection_runs(tmp_path):
    folder = tmp_path / "collect"
    write_campaign(folder, COLLECT)
    write_module(folder, "collect", COLLECT_MODULE)
    corral_cli(folder, "run", "-q", check=0)
    corral_cli(folder, "run", "-q", "params.model=claude-3-5-sonnet", "params.provider=anthropic",
               "params.first=3", "params.episodes=9", check=0)
    runs = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    return folder, {r["id"].split("_")[2]: r["id"] for r in runs}


@pytest.mark.usefixtures("campaign_ledger")
def test_two_collection_runs_merge_without_duplicate_action_hashes(tmp_path):
    folder, ids = collection_runs(tmp_path)
    assert set(ids) == {"gpt-4o", "claude-3-5-sonnet"}
    assert all(run_id.startswith(f"webarena_{'openai' if m == 'gpt-4o' else 'anthropic'}_{m}_2")
               for m, run_id in ids.items())
    gpt = {action_hash(s, e) for s in (1, 2) for e in range(0, 6)}
    claude = {action_hash(s, e) for s in (1, 2) for e in range(3, 9)}
    merged = json.loads(corral_cli(folder, "runs", "merge", ids["gpt-4o"], ids["claude-3-5-sonnet"],
                                   "--into", "webarena_all", "--prefer", ids["gpt-4o"], "--force",
                                   "--dedupe-by", "collect.action_hash", "--json", check=0).stdout)
    assert merged["duplicates_dropped"] == len(gpt & claude) == 6
    assert merged["items_added"] == len(gpt | claude) == 18 and merged["without_key"] == 0
    out = tmp_path / "merged.jsonl"
    corral_cli(folder, "export", "--run-id", "webarena_all", "--format", "jsonl", "-o", str(out), check=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    hashes = [r["action_hash"] for r in rows]
    assert sorted(hashes) == sorted(gpt | claude)
    # The preferred run keeps the shared episodes; the other contributes only its own.
    teachers = [r["result.teacher"] for r in rows]
    assert teachers.count("gpt-4o") == len(gpt) and teachers.count("claude-3-5-sonnet") == len(claude - gpt)

    again = json.loads(corral_cli(folder, "runs", "merge", ids["gpt-4o"], ids["claude-3-5-sonnet"],
                                  "--into", "webarena_all", "--prefer", ids["gpt-4o"], "--force",
                                  "--dedupe-by", "collect.action_hash", "--json", check=0).stdout)
    assert again["items_added"] == 0 and again["tasks_added"] == 0 and again["tasks_updated"] == 0


@pytest.mark.usefixtures("campaign_ledger")
def test_the_python_api_merges_with_the_same_dedupe_key(tmp_path):
    import corral

    folder, ids = collection_runs(tmp_path)
    campaign = corral.open(str(folder / "corral.yaml"))
    try:
        outcome = campaign.registry().merge([ids["gpt-4o"], ids["claude-3-5-sonnet"]], into="webarena_all",
                                            prefer=ids["gpt-4o"], force=True, dedupe_by="collect.action_hash")
    finally:
        campaign.close()
    shared = {action_hash(s, e) for s in (1, 2) for e in range(3, 6)}
    assert outcome.items_added == 18 and sorted(d["value"] for d in outcome.duplicates) == sorted(shared)
    assert {d["run"] for d in outcome.duplicates} == {ids["claude-3-5-sonnet"]}


def test_an_interrupted_collection_resumes_under_its_run_id_without_collecting_twice(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import cli_env

    folder = tmp_path / "collect"
    write_campaign(folder, COLLECT.replace("workers: 2", "workers: 1"))
    write_module(folder, "collect", COLLECT_MODULE)
    env = cli_env({"COLLECT_SLOWLY": "1"})
    controller = subprocess.Popen([sys.executable, "-m", "corral", "run", "-q"], cwd=folder, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    calls = folder / "calls.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not calls.exists() or len(calls.read_text().splitlines()) < 3):
        time.sleep(0.1)
    os.kill(controller.pid, signal.SIGKILL)
    controller.wait()
    (run,) = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    assert run["done"] < 12

    corral_cli(folder, "run", "-q", "--run-id", run["id"], env={"COLLECT_SLOWLY": "1"}, check=0)
    (resumed,) = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    assert resumed["id"] == run["id"] and resumed["done"] == 12 and resumed["status"] == "finished"
    collected = calls.read_text().splitlines()
    assert sorted(collected) == sorted(f"{s} {e}" for s in (1, 2) for e in range(6))


@pytest.mark.usefixtures("campaign_ledger")
def test_a_dedupe_key_no_item_has_is_refused_naming_the_fields(tmp_path):
    folder, ids = collection_runs(tmp_path)
    proc = corral_cli(folder, "runs", "merge", *ids.values(), "--into", "all", "--force",
                      "--dedupe-by", "action_hsh", check=2)
    assert "--dedupe-by 'action_hsh'" in proc.stderr and "action_hash" in proc.stderr
    assert "Traceback" not in proc.stderr
    runs = json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)
    assert "all" not in {r["id"] for r in runs}


@pytest.mark.usefixtures("campaign_ledger")
def test_runs_are_found_by_benchmark_model_and_status(tmp_path):
    folder, ids = collection_runs(tmp_path)
    found = json.loads(corral_cli(folder, "runs", "--where", "benchmark=webarena", "--where", "model=gpt-4o",
                                  "--where", "status=done", "--json", check=0).stdout)
    assert [r["id"] for r in found] == [ids["gpt-4o"]]
    latest = json.loads(corral_cli(folder, "runs", "latest", "--where", "benchmark=webarena",
                                   "--json", check=0).stdout)
    assert latest["id"] == ids["claude-3-5-sonnet"]
    none = json.loads(corral_cli(folder, "runs", "--where", "benchmark=swebench", "--json", check=0).stdout)
    assert none == []


# -- the pipeline on the local SLURM cluster, as the README runs it ----------------------------

STAGE_NEEDS = {
    "collect": [], "perturb": ["collect"], "train_bc": ["perturb"], "train_verifier": ["collect"],
    "candidates": ["train_bc", "train_verifier"], "train_dpo": ["candidates"],
    "router_features": ["train_dpo"], "train_router": ["router_features"], "evaluate": ["train_router"],
    "ablations": ["train_router"], "tables": ["evaluate", "ablations"],
}
METHODS = ["r2v", "slm_only", "llm_only", "entropy_router"]


@pytest.mark.slurm
def test_the_smoke_pipeline_runs_every_stage_on_slurm_after_its_needs(tmp_path, cluster):
    import csv
    import statistics

    from support.readme import copy_example, run_readme_block

    folder = copy_example("slurm-pipeline", tmp_path)
    results = run_readme_block(folder, folder / "README.md", "smoke", timeout=300)
    (run_dir,) = (folder / ".corral" / "runs").iterdir()
    run_id = run_dir.name
    assert run_id.startswith("webarena_openai_gpt-4o_2") and len(run_id.split("_")[-1]) == len("20260218T210012")
    listed = results[-1].stdout
    assert run_id in listed

    out = tmp_path / "records.jsonl"
    corral_cli(folder, "export", "+preset=smoke", "--format", "jsonl", "-o", str(out), check=0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["state"] for r in records} == {"done"}
    by_stage: dict[str, list[dict]] = {}
    for record in records:
        by_stage.setdefault(record["stage"], []).append(record)
    assert {s: len(v) for s, v in by_stage.items()} == {**{s: 1 for s in STAGE_NEEDS}, "collect": 6}
    for stage, needs in STAGE_NEEDS.items():
        started = min(r["started_at"] for r in by_stage[stage])
        for need in needs:
            assert started >= max(r["finished_at"] for r in by_stage[need]), (stage, need)
    # Every stage went through SLURM (one job per stage, job arrays for collect).
    submissions = [json.loads(p.read_text()) for p in run_dir.glob("submissions/*/plan.json")]
    assert len(submissions) >= len(STAGE_NEEDS)

    # The files, checked from the files themselves.
    episodes = [json.loads(p.read_text()) for p in sorted((run_dir / "data" / "episodes").glob("*.json"))]
    assert len(episodes) == 6 and {e["metadata"]["run_id"] for e in episodes} == {run_id}
    assert {e["metadata"]["teacher_model"] for e in episodes} == {"gpt-4o"}
    trajectories = (run_dir / "data" / "trajectories.jsonl").read_text().splitlines()
    assert len(trajectories) == 6
    manifest = json.loads((run_dir / "data" / "run_manifest.json").read_text())
    assert manifest["n_episodes"] == 6
    assert manifest["success_rate"] == pytest.approx(sum(e["success"] for e in episodes) / 6)
    for e in episodes:
        actions = json.dumps([s["action"] for s in e["steps"]])
        assert e["action_hash"] == hashlib.sha256(actions.encode()).hexdigest()[:16]
    assert len((run_dir / "data" / "perturbed.jsonl").read_text().splitlines()) == 6 * 3
    assert len((run_dir / "data" / "candidates.jsonl").read_text().splitlines()) == 6 * 5
    for checkpoint in ("policy/bc", "verifier", "policy/dpo"):
        assert (run_dir / "outputs" / checkpoint / "checkpoint-latest.json").is_file()
    assert (run_dir / "outputs" / "router" / "router.json").is_file()

    structured = run_dir / "results" / "structured_results"
    rates: dict[str, list[float]] = {}
    for path in structured.glob("*_seed*.json"):
        row = json.loads(path.read_text())
        assert row["success_rate"] == row["successes"] / row["n_episodes"]
        rates.setdefault(row["method"], []).append(row["success_rate"])
    assert sorted(rates) == sorted(METHODS) and all(len(v) == 5 for v in rates.values())
    with (structured / "main_table.csv").open() as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    assert list(table) == METHODS
    for method, values in rates.items():
        assert float(table[method]["success_rate_mean"]) == pytest.approx(statistics.mean(values), abs=1e-6)
        assert float(table[method]["success_rate_std"]) == pytest.approx(statistics.stdev(values), abs=1e-6)
    summary = json.loads((structured / "llm_summary.json").read_text())
    assert summary["run_id"] == run_id and summary["training_episodes"] == 6
    assert summary["best_method"] == max(rates, key=lambda m: statistics.mean(rates[m]))
    with (run_dir / "results" / "ablations" / "structured_results" / "ablations.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4 * 3

    # Resuming the finished run by its id sends nothing again.
    corral_cli(folder, "run", "+preset=smoke", "--run-id", run_id, "-q", check=0)
    assert len(list(run_dir.glob("submissions/*/plan.json"))) == len(submissions)
    assert [p.name for p in (folder / ".corral" / "runs").iterdir()] == [run_id]


# Each stage's sbatch options in the full-size pipeline, as the researchers' scripts had them.
FULL_SIZE = {
    "collect": ("gpu", 1, "1-00:00:00"), "perturb": ("cpu", None, "04:00:00"), "train_bc": ("gpu", 2, "2-00:00:00"),
    "train_verifier": ("gpu", 1, "12:00:00"), "candidates": ("gpu", 1, "1-00:00:00"),
    "train_dpo": ("gpu", 2, "1-00:00:00"), "router_features": ("gpu", 1, "12:00:00"),
    "train_router": ("gpu", 1, "04:00:00"), "evaluate": ("gpu", 1, "1-00:00:00"),
    "ablations": ("gpu", 1, "2-00:00:00"), "tables": ("cpu", None, "00:30:00"),
}


@pytest.mark.slurm
@pytest.mark.parametrize("benchmark, episodes", [("webarena", 1500), ("swebench", 1500)])
def test_the_full_size_dry_run_asks_each_stage_for_its_resources(tmp_path, cluster, benchmark, episodes):
    from support.readme import copy_example

    folder = copy_example("slurm-pipeline", tmp_path)
    plan = json.loads(corral_cli(folder, "run", "--dry-run", f"benchmark={benchmark}", check=0).stdout)
    assert plan["items"] == episodes
    for stage, (partition, gpus, time_limit) in FULL_SIZE.items():
        script = plan["submissions"][stage]["sbatch"][0]["script"]
        assert f"#SBATCH --partition={partition}\n" in script, stage
        assert f"#SBATCH --time={time_limit}\n" in script, stage
        assert (f"#SBATCH --gpus-per-task={gpus}\n" in script) if gpus else "--gpus" not in script, stage
    assert not (folder / ".corral" / "runs").exists() or not any((folder / ".corral" / "runs").iterdir())


@pytest.mark.slurm
def test_the_evaluation_writes_paired_comparisons_and_the_latex_table(tmp_path, cluster):
    """eval.yaml on the local cluster, then `corral report eval.yaml`: comparisons.csv and
    main_table.tex checked against McNemar's test and the rates computed here from the stand-in."""
    import csv
    import importlib.util
    import math

    from support.readme import copy_example, run_readme_block

    folder = copy_example("slurm-pipeline", tmp_path)
    results = run_readme_block(folder, folder / "README.md", "eval-smoke", timeout=300)
    out = folder / "results" / "webarena_noisy" / "structured_results"
    assert sorted(results[-1].stdout.split()) == ["comparisons.csv", "main_table.csv", "main_table.tex"]

    spec = importlib.util.spec_from_file_location("pipeline_standin", folder / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    units = [(seed, episode) for seed in (1, 2) for episode in range(10)]
    truth = {(method, unit): pipeline.evaluate_episode(
        {"benchmark": "webarena", "method": method, "seed": unit[0], "episode": unit[1]}, None)
        for method in METHODS for unit in units}

    with (out / "comparisons.csv").open() as f:
        rows = {(r["other"], r["metric"]): r for r in csv.DictReader(f)}
    assert {r["baseline"] for r in rows.values()} == {"slm_only"}
    assert set(rows) == {(m, metric) for m in METHODS if m != "slm_only" for metric in ("success", "steps", "llm_calls")}
    for method in METHODS:
        if method == "slm_only":
            continue
        b = sum(truth["slm_only", u]["success"] and not truth[method, u]["success"] for u in units)
        c = sum(truth[method, u]["success"] and not truth["slm_only", u]["success"] for u in units)
        n = len(units)
        row = rows[method, "success"]
        assert (row["test"], int(row["n"]), int(row["unpaired"])) == ("mcnemar-exact", n, 0)
        assert float(row["diff"]) == pytest.approx((c - b) / n, abs=1e-6)
        se = math.sqrt(b + c - (c - b) ** 2 / n) / n
        assert float(row["ci_low"]) == pytest.approx((c - b) / n - 1.959964 * se, abs=1e-5)
        assert float(row["ci_high"]) == pytest.approx((c - b) / n + 1.959964 * se, abs=1e-5)
        p = min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c)) if b + c else 1.0
        assert float(row["p_value"]) == pytest.approx(p, rel=1e-5)
        diffs = [truth[method, u]["llm_calls"] - truth["slm_only", u]["llm_calls"] for u in units]
        mean = sum(diffs) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        row = rows[method, "llm_calls"]
        assert row["test"] == "paired-t" and float(row["diff"]) == pytest.approx(mean, abs=1e-6)
        assert float(row["statistic"]) == pytest.approx(mean / (sd / math.sqrt(n)), abs=1e-4)

    rates = {m: sum(truth[m, u]["success"] for u in units) / len(units) for m in METHODS}
    with (out / "main_table.csv").open() as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    for method in METHODS:
        assert float(table[method]["success_rate"]) == pytest.approx(rates[method], abs=1e-6)
    tex = (out / "main_table.tex").read_text()
    assert r"\begin{table}[t]" in tex and r"\label{tab:main}" in tex
    assert r"\caption{Success rate, steps and LLM calls per episode on webarena (noisy), with 95\% intervals.}" in tex
    best = max(rates.values())
    bold_rows = [line.split(" & ")[0] for line in tex.splitlines() if rf"\textbf{{{best:.3f}}}" in line]
    assert sorted(bold_rows) == sorted(latex_name(m) for m in METHODS if rates[m] == best), tex
    calls = {m: sum(truth[m, u]["llm_calls"] for u in units) / len(units) for m in METHODS}
    fewest = min(calls, key=calls.get)   # lower is better for LLM calls: slm_only's zero is bold
    assert rf"\textbf{{{calls[fewest]:.3f}}}" in next(l for l in tex.splitlines() if l.startswith(latex_name(fewest)))


def latex_name(method: str) -> str:
    return method.replace("_", r"\_")
