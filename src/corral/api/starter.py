"""``corral init`` / ``corral.init(folder)``: a small campaign that runs as written."""

from __future__ import annotations

import contextlib
from pathlib import Path

from corral.errors import CorralError

CAMPAIGN = """\
# A corral campaign: items x stages. Run it with `corral run`, watch it with `corral status`.
name: my-campaign

items:
  grid:
    model: [small, large]
    seed: {range: [0, 5]}
  key: "{model}-s{seed}"

stages:
  evaluate:
    call: tasks:evaluate          # tasks.py beside this file
    retries: {max: 2, backoff: 5s}
    timeout: 10m
  summarize:
    per: all
    needs: evaluate
    run: ["python", "-c", "print('all evaluations finished')"]

backends:
  local:
    workers: 2
"""

TASKS = '''\
"""Functions called by corral: function(item, ctx) -> dict."""

import random


def evaluate(item, ctx):
    rng = random.Random(f"{item['model']}-{item['seed']}")
    ctx.log.info("evaluating %s (attempt %d)", item, ctx.attempt)
    return {"score": rng.random() + (0.2 if item["model"] == "large" else 0.0)}
'''


def init(directory: str | Path = ".", force: bool = False) -> list[Path]:
    """Write a starter corral.yaml and tasks.py into ``directory``; returns the files written."""
    directory = Path(directory)
    try:
        is_file = directory.exists() and not directory.is_dir()
    except OSError as exc:
        raise CorralError(f"cannot create the folder {str(directory)[:200]}: {exc.strerror}") from None
    if is_file:
        raise CorralError(f"{directory} is a file; `corral init` writes a campaign into a folder")
    missing = _missing_parents(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        for parent in missing:  # undo a creation that failed part way
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise CorralError(f"cannot create the folder {str(directory)[:200]}: {exc.strerror}") from None
    files = {directory / "corral.yaml": CAMPAIGN, directory / "tasks.py": TASKS}
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise CorralError(f"{', '.join(map(str, existing))} already exist(s); use --force to overwrite")
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def _missing_parents(directory: Path) -> list[Path]:
    """The folders above ``directory`` that do not exist yet, deepest first."""
    missing = []
    for parent in directory.parents:
        try:
            if parent.exists():
                break
        except OSError:
            pass
        missing.append(parent)
    return missing
