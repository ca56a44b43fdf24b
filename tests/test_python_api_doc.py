"""docs/python-api.md stays true: its python blocks run, in order, in a copy of examples/quickstart."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "python-api.md"

pytestmark = pytest.mark.usefixtures("campaign_ledger")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_examples_run(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", folder, ignore=shutil.ignore_patterns(".corral", "archive"))
    monkeypatch.chdir(folder)
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 12
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}, python block {index + 1}", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "finished" in printed and "| policy |" in printed
    assert (folder / "episodes.csv").is_file() and (folder / "by-policy.tex").is_file()
    assert (folder / "starter" / "corral.yaml").is_file()
