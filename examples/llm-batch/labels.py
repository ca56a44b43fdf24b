"""Turn a model's answer into the fields of all_instructions.json, and write that file."""

from __future__ import annotations

import json
from pathlib import Path

from corral.llm import text_of

FIELDS = ("instructions", "what_changed", "frame1_description", "frame2_description")


def parse(body: dict) -> dict:
    """``body`` is the response body (a chat completion); a bad answer raises, so the task fails
    with error class ``parse`` and keeps the raw response for inspection."""
    answer = json.loads(text_of(body))
    instructions = [str(text).strip() for text in answer["instructions"]]
    texts = {name: str(answer[name]).strip() for name in FIELDS[1:]}
    if len(instructions) != 5 or not all(instructions) or not all(texts.values()):
        raise ValueError(f"wanted 5 instructions and 3 descriptions, got {len(instructions)} instructions and "
                         f"empty fields {[name for name, text in texts.items() if not text]}")
    return {"instructions": instructions, **texts}


def merge(ctx) -> dict:
    """Once every pair is labelled: each pair's metadata (as in the pairs file) next to its labels,
    in pair order, written to <output_dir>/final/all_instructions.json."""
    import corral

    campaign = corral.open(str(ctx.root / "corral.yaml"), ledger=ctx.ledger_url)
    params = ctx.params
    pairs = json.loads((ctx.root / params["pairs_file"]).read_text())
    labels = {record["item_key"]: record for record in campaign.run(ctx.run_id).records(stage="label")
              if record["state"] == "done"}
    merged = [{**pair, **{name: labels[str(pair["pair_index"])][name] for name in FIELDS}} for pair in pairs
              if str(pair["pair_index"]) in labels]
    target = ctx.root / params["output_dir"] / "final" / "all_instructions.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    partial.replace(target)
    print(f"{len(merged):,} of {len(pairs):,} pairs written to {target}")
    return {"pairs": len(merged), "file": str(target.relative_to(ctx.root))}
