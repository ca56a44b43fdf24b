"""A stand-in for scripts/2_train_laq.py: a few steps of a noisy quadratic, written as a run folder."""

import argparse
import json
import math
import os
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    weight, losses = 5.0, []
    for _ in range(args.epochs * args.steps):
        gradient = 2 * weight + rng.gauss(0, 0.1)
        weight -= args.lr * 100 * gradient
        losses.append(weight * weight)
    metrics = {"lr": args.lr, "seed": args.seed, "steps": len(losses), "final_loss": losses[-1],
               "container": os.environ.get("IN_CONTAINER"), "job": os.environ.get("SLURM_JOB_ID"),
               "partition": os.environ.get("SLURM_JOB_PARTITION"),
               "hf_token_set": bool(os.environ.get("HF_TOKEN")),
               "wandb_key_set": bool(os.environ.get("WANDB_API_KEY"))}
    assert math.isfinite(metrics["final_loss"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "losses.json").write_text(json.dumps(losses))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    result = os.environ.get("CORRAL_RESULT")
    if result:
        Path(result).write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
