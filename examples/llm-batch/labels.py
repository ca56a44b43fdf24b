"""Turn a model's answer into the fields of the merged file."""

from __future__ import annotations

import json

from corral.llm import text_of


def parse(body: dict) -> dict:
    """``body`` is the response body (a chat completion); a bad answer raises, so the task fails
    with error class ``parse`` and keeps the raw response for inspection."""
    answer = json.loads(text_of(body))
    instructions = [str(text).strip() for text in answer["instructions"]]
    descriptions = [str(text).strip() for text in answer["descriptions"]]
    if len(instructions) != 5 or len(descriptions) != 2 or not all(instructions + descriptions):
        raise ValueError(f"wanted 5 instructions and 2 descriptions, got {len(instructions)} and "
                         f"{len(descriptions)}")
    return {"instructions": instructions, "description_k": descriptions[0], "description_change": descriptions[1]}
