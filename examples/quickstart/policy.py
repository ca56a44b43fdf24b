"""A toy robot policy: each episode sleeps a few milliseconds and succeeds at random (seeded)."""

from __future__ import annotations

import json
import random
import time

SKILL = {"random": 0.15, "scripted": 0.55, "learned": 0.8}
DIFFICULTY = {"clean": 0.0, "noise": 0.1, "occlusion": 0.2, "lighting": 0.15}


class EnvironmentCrash(RuntimeError):
    """The simulator fell over; worth another attempt."""


def run_episode(item: dict, ctx) -> dict:
    rng = random.Random(f"{item['policy']}/{item['setting']}/{item['task']}/{item['repeat']}")
    if rng.random() < 0.02 and ctx.attempt == 1:
        raise EnvironmentCrash("simulator lost its GPU context")
    time.sleep(rng.uniform(0.002, 0.008))
    p = max(0.0, SKILL[item["policy"]] - DIFFICULTY[item["setting"]])
    success = rng.random() < p
    steps = rng.randint(20, 200)
    progress = 1.0 if success else round(rng.uniform(0.0, 0.9), 3)
    ctx.log.info("episode %s: success=%s steps=%d", ctx.item_key, success, steps)
    return {"success": success, "progress": progress, "steps": steps}


def summarize(ctx) -> dict:
    """Runs once, after every episode is scored: reads the ledger through the Python API."""
    import corral

    campaign = corral.open(str(ctx.root / "corral.yaml"), ledger=ctx.ledger_url)
    records = [r for r in campaign.run(ctx.run_id).records(stage="episode") if r["state"] == "done"]
    by_policy: dict[str, list[bool]] = {}
    for record in records:
        by_policy.setdefault(record["policy"], []).append(bool(record["success"]))
    summary = {policy: round(sum(v) / len(v), 3) for policy, v in sorted(by_policy.items())}
    (ctx.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("success rate by policy:", summary)
    return {"episodes": len(records), "success_rate": summary}
