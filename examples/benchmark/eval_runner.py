"""A stand-in for the benchmark's evaluation runner: one episode of a policy on a perturbed task.

The outcome is drawn from a generator seeded by the episode, so every machine gets the same result
for the same episode. A few episodes fail for good (the perturbation leaves the scene unsolvable
for the simulator) and land in the results folder as failed episodes with their error.
"""

from __future__ import annotations

import hashlib
import random
import time

SKILL = {"Motus": 0.7, "lingbot": 0.5}
PENALTY = {"lm": 0.1, "hv": 0.3}


class SimulatorCrash(RuntimeError):
    """The simulator lost its GPU context; worth another attempt."""


class InvalidScene(RuntimeError):
    """The perturbed scene cannot be built; retrying does not help."""


def _rng(item: dict) -> random.Random:
    name = f"{item['policy']}/{item['setting']}/{item['task']}/{item['repeat']}"
    return random.Random(int(hashlib.sha256(name.encode()).hexdigest()[:16], 16))


def run_episode(item: dict, ctx) -> dict:
    rng = _rng(item)
    if rng.random() < 0.08:
        raise InvalidScene(f"perturbation {item['perturb_type']} cannot be applied to {item['task']}")
    if rng.random() < 0.05 and ctx.attempt == 1:
        raise SimulatorCrash("simulator lost its GPU context")
    time.sleep(rng.uniform(0.001, 0.004))
    chance = max(0.05, SKILL[item["policy"]] - PENALTY[item["severity"]] - (0.1 if item["timing"] == "mid" else 0.0))
    success = rng.random() < chance
    progress = 1.0 if success else round(rng.uniform(0.0, 0.9), 3)
    ctx.log.info("episode %s on GPU %s: success=%s", ctx.item_key, ctx.gpus, success)
    return {"success": success, "progress": progress, "steps": rng.randint(50, 400), "gpu": ",".join(map(str, ctx.gpus))}
