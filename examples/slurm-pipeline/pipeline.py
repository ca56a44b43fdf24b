"""Stand-ins for R2V-Agent's stage scripts: each writes the files the real one writes, with the same
names and shapes, in a second instead of hours. Replace a body with the real work (or with a call
to the real script); the campaign does not change.

Every file goes under the run's folder (``ctx.run_dir``):

    data/episodes/seed<S>_episode<E>.json      collect: one trajectory per episode
    data/trajectories.jsonl, data/run_manifest.json, data/perturbed.jsonl      perturb
    outputs/policy/bc/, outputs/verifier/, outputs/policy/dpo/, outputs/router/  the training stages
    data/candidates.jsonl, data/router_features.jsonl
    results/structured_results/<method>_seed<S>.json                         evaluate
    results/ablations/structured_results/ablations.csv                       ablations
    results/structured_results/main_table.csv, llm_summary.json              tables
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import statistics
from pathlib import Path

METHODS = ["r2v", "slm_only", "llm_only", "entropy_router"]
EVAL_SEEDS = [1, 2, 3, 4, 5]
ABLATIONS = ["no_verifier", "no_dpo", "no_router_features", "no_perturbations"]
PERTURBATIONS = ["prompt_injection", "tool_failure", "observation_noise"]
CANDIDATES_K = 5
#: a method's success rate around which its evaluation seeds scatter
BASE_SUCCESS = {"r2v": 0.62, "slm_only": 0.41, "llm_only": 0.58, "entropy_router": 0.52}


def _rng(*parts) -> random.Random:
    return random.Random(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest())


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        count = 0
        for row in rows:
            f.write(json.dumps(row) + "\n")
            count += 1
    tmp.replace(path)
    return count


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _episodes(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "data" / "episodes").glob("*.json"))]


def collect(item, ctx):
    """scripts/collect_trajectories.py for one episode: the teacher's steps and the action hash."""
    rng = _rng(item["benchmark"], item["seed"], item["episode"])
    steps = [{"observation": f"page {i}", "action": rng.choice(["click", "type", "scroll", "submit"])}
             for i in range(rng.randint(3, 8))]
    actions = json.dumps([s["action"] for s in steps])
    action_hash = hashlib.sha256(actions.encode()).hexdigest()[:16]
    success = rng.random() < 0.6
    episode = {"episode_id": f"{item['benchmark']}_seed{item['seed']}_{item['episode']}", "steps": steps,
               "success": success, "action_hash": action_hash,
               "metadata": {"run_id": ctx.run_id, "teacher_model": item["teacher"],
                            "teacher_provider": item["provider"], "benchmark": item["benchmark"],
                            "seed": item["seed"]}}
    _write_json(ctx.run_dir / "data" / "episodes" / f"seed{item['seed']}_episode{item['episode']}.json", episode)
    return {"action_hash": action_hash, "success": success, "steps": len(steps)}


def perturb(ctx):
    """02_perturb.sh: trajectories.jsonl, the run manifest, and perturbed copies (CPU only)."""
    episodes = _episodes(ctx.run_dir)
    data = ctx.run_dir / "data"
    _write_jsonl(data / "trajectories.jsonl", episodes)
    _write_json(data / "run_manifest.json", {
        "run_id": ctx.run_id, "n_episodes": len(episodes),
        "success_rate": sum(e["success"] for e in episodes) / len(episodes) if episodes else 0.0,
        "teacher_model": episodes[0]["metadata"]["teacher_model"] if episodes else None})
    perturbed = [{**e, "perturbation": p} for e in episodes for p in PERTURBATIONS]
    return {"episodes": len(episodes), "perturbed": _write_jsonl(data / "perturbed.jsonl", perturbed)}


def _checkpoint(ctx, folder: str, trained_on: int, **extra) -> dict:
    loss = round(2.0 / (1 + trained_on) + _rng(ctx.run_id, folder).random() * 0.1, 4)
    _write_json(ctx.run_dir / "outputs" / folder / "checkpoint-latest.json",
                {"trained_on": trained_on, "final_loss": loss, **extra})
    return {"trained_on": trained_on, "final_loss": loss}


def train_bc(ctx):
    """03_train_policy.sh BENCH noisy bc."""
    return _checkpoint(ctx, "policy/bc", len(_read_jsonl(ctx.run_dir / "data" / "perturbed.jsonl")), stage="bc")


def train_verifier(ctx):
    """04_train_verifier.sh."""
    return _checkpoint(ctx, "verifier", len(_episodes(ctx.run_dir)), stage="verifier")


def candidates(ctx):
    """05_generate_candidates.sh BENCH 5: K scored candidates per episode."""
    rows = []
    for e in _read_jsonl(ctx.run_dir / "data" / "trajectories.jsonl"):
        rng = _rng(e["episode_id"], "candidates")
        rows += [{"episode_id": e["episode_id"], "candidate": k, "verifier_score": round(rng.random(), 4)}
                 for k in range(CANDIDATES_K)]
    return {"candidates": _write_jsonl(ctx.run_dir / "data" / "candidates.jsonl", rows)}


def train_dpo(ctx):
    """03_train_policy.sh BENCH noisy preference: DPO on (best, worst) candidate pairs."""
    pairs = len({r["episode_id"] for r in _read_jsonl(ctx.run_dir / "data" / "candidates.jsonl")})
    return _checkpoint(ctx, "policy/dpo", pairs, stage="preference")


def router_features(ctx):
    """06_generate_router_features.sh: entropy and verifier score per episode."""
    rows = [{"episode_id": e["episode_id"], "entropy": round(_rng(e["episode_id"], "h").random() * 2, 4),
             "verifier_score": round(_rng(e["episode_id"], "v").random(), 4)}
            for e in _read_jsonl(ctx.run_dir / "data" / "trajectories.jsonl")]
    return {"features": _write_jsonl(ctx.run_dir / "data" / "router_features.jsonl", rows)}


def train_router(ctx):
    """07_train_router.sh: a threshold on entropy."""
    rows = _read_jsonl(ctx.run_dir / "data" / "router_features.jsonl")
    threshold = round(statistics.median(r["entropy"] for r in rows), 4) if rows else 1.0
    _write_json(ctx.run_dir / "outputs" / "router" / "router.json", {"entropy_threshold": threshold})
    return {"entropy_threshold": threshold}


def evaluate(ctx):
    """08_evaluate.sh BENCH noisy "1 2 3 4 5" "r2v slm_only llm_only entropy_router": one JSON per
    (method, seed) in results/structured_results/."""
    out = ctx.run_dir / "results" / "structured_results"
    n = len(_read_jsonl(ctx.run_dir / "data" / "trajectories.jsonl"))
    for method in METHODS:
        for seed in EVAL_SEEDS:
            rng = _rng(ctx.run_id, method, seed)
            successes = sum(rng.random() < BASE_SUCCESS[method] for _ in range(max(n, 1) * 10))
            episodes = max(n, 1) * 10
            _write_json(out / f"{method}_seed{seed}.json", {
                "method": method, "seed": seed, "n_episodes": episodes, "successes": successes,
                "success_rate": successes / episodes,
                "llm_calls_per_episode": round({"slm_only": 0.0, "llm_only": 1.0}.get(method, rng.random()), 4)})
    return {"results": len(METHODS) * len(EVAL_SEEDS)}


def ablations(ctx):
    """09_ablations.sh BENCH "1 2 3": results/ablations/structured_results/ablations.csv."""
    path = ctx.run_dir / "results" / "ablations" / "structured_results" / "ablations.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ablation", "seed", "success_rate"])
        for name in ABLATIONS:
            for seed in (1, 2, 3):
                writer.writerow([name, seed, round(BASE_SUCCESS["r2v"] - _rng(ctx.run_id, name, seed).random() * 0.2, 4)])
    return {"ablations": len(ABLATIONS)}


def tables(ctx):
    """main_table.csv (one row per method: mean and standard deviation over seeds) and
    llm_summary.json, from evaluate's per-seed files."""
    out = ctx.run_dir / "results" / "structured_results"
    by_method: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*_seed*.json")):
        row = json.loads(path.read_text())
        by_method.setdefault(row["method"], []).append(row)
    table = []
    for method in METHODS:
        rates = [r["success_rate"] for r in by_method.get(method, [])]
        table.append({"method": method, "n_seeds": len(rates),
                      "success_rate_mean": round(statistics.mean(rates), 6) if rates else None,
                      "success_rate_std": round(statistics.stdev(rates), 6) if len(rates) > 1 else 0.0,
                      "llm_calls_per_episode": round(statistics.mean(r["llm_calls_per_episode"]
                                                                     for r in by_method.get(method, [])), 6)
                      if rates else None})
    with (out / "main_table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    best = max((r for r in table if r["success_rate_mean"] is not None), key=lambda r: r["success_rate_mean"])
    manifest = json.loads((ctx.run_dir / "data" / "run_manifest.json").read_text())
    _write_json(out / "llm_summary.json", {
        "run_id": ctx.run_id, "teacher_model": manifest["teacher_model"],
        "training_episodes": manifest["n_episodes"], "methods": table, "best_method": best["method"],
        "headline": f"{best['method']} reaches {best['success_rate_mean']:.1%} success "
                    f"over {best['n_seeds']} seeds"})
    return {"best_method": best["method"], "best_success_rate": best["success_rate_mean"]}


#: how much more than the small model each method solves of what it fails (eval.yaml)
SKILL = {"slm_only": 0.0, "entropy_router": 0.22, "llm_only": 0.30, "r2v": 0.38}
#: LLM calls per step: the small model never calls it, the large model always does
LLM_CALL_RATE = {"slm_only": 0.0, "entropy_router": 0.45, "llm_only": 1.0, "r2v": 0.3}


def evaluate_episode(item, ctx):
    """One episode of eval.yaml: the episode's difficulty is the same for every method (drawn from
    benchmark, seed and episode), so the methods' results pair up as a real evaluation's do."""
    episode = _rng(item["benchmark"], item["seed"], item["episode"])
    difficulty, luck = episode.random(), episode.random()
    method = item["method"]
    solved_by_slm = luck > 0.35 + 0.5 * difficulty
    success = solved_by_slm or _rng(item["benchmark"], item["seed"], item["episode"], method).random() < SKILL[method]
    own = _rng("steps", item["benchmark"], item["seed"], item["episode"], method)
    steps = 5 + int(difficulty * 20) + own.randint(0, 6) - (3 if success else 0)
    llm_calls = sum(own.random() < LLM_CALL_RATE[method] for _ in range(steps))
    return {"success": success, "steps": steps, "llm_calls": llm_calls}
