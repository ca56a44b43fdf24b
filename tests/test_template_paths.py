"""Paths filled from templates with item values (``results:``, ``skip_if``, ``outputs``, ``verify``)
stay inside the campaign folder: a hostile value fails its own task (class template) or its own
result file, with a message naming the item and the key; the other items go on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

HOSTILE = ["../../escaped", "/tmp/corral-absolute-escape", "a\nb", "nul\x00byte", "tab\there", "l" * 300]
SAFE = ["fine", "also fine"]

MODULE = """
from pathlib import Path

def f(item, ctx):
    Path(item["v"] + ".txt").write_text("x")  # were it to run for a hostile item, it would write outside
    return {"success": True}
"""


def _campaign(folder: Path, stage: dict) -> None:
    write_module(folder, "m", MODULE)
    config = {"name": "tp", "items": {"list": [{"v": v} for v in HOSTILE + SAFE]}, "stages": {"work": stage},
              "backends": {"local": {"workers": 2, "gpus": "none"}}}
    path = folder / "corral.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))  # JSON is YAML, and keeps the NUL and the newline exact


def _tasks(folder: Path) -> list[dict]:
    out = corral_cli(folder, "export", "-f", "json", check=0).stdout
    return json.loads(out) if out.strip().startswith("[") else [json.loads(line) for line in out.splitlines()]


def _outside_untouched(folder: Path) -> None:
    assert not (folder.parent.parent / "escaped").exists()
    assert not (folder.parent.parent / "escaped.txt").exists()
    assert not Path("/tmp/corral-absolute-escape").exists()
    assert not Path("/tmp/corral-absolute-escape.txt").exists()


@pytest.mark.parametrize("key", ["skip_if", "outputs", "verify"])
def test_a_hostile_value_in_a_task_path_fails_that_task_as_template(tmp_path, key):
    folder = tmp_path / "a" / "b" / "camp"
    _campaign(folder, {"call": "m:f", key: ["{v}.txt"]})
    proc = corral_cli(folder, "run", "-q", check=1)
    assert "Traceback" not in proc.stderr
    tasks = _tasks(folder)
    by_value = {t["v"]: t for t in tasks}
    for value in HOSTILE:
        task = by_value[value]
        assert task["state"] == "failed" and task["error_class"] == "template", task
        assert key in task["error_message"] and "inside the campaign folder" in task["error_message"]
    for value in SAFE:
        assert by_value[value]["state"] in ("done", "skipped") and by_value[value]["error_class"] is None
    _outside_untouched(folder)
    assert sorted(p.name for p in folder.glob("*.txt")) == ["also fine.txt", "fine.txt"]


def test_a_hostile_value_in_the_results_template_fails_only_its_file(tmp_path):
    folder = tmp_path / "a" / "b" / "camp"
    _campaign(folder, {"run": ["true"]})
    config = json.loads((folder / "corral.yaml").read_text())
    config["results"] = "results/{v}.json"
    write_campaign(folder, json.dumps(config))
    proc = corral_cli(folder, "run", "-q", check=0)
    assert "Traceback" not in proc.stderr
    for reason in ("goes up a folder", "control character", "longer than 255"):
        assert reason in proc.stderr, proc.stderr
    # "results/" + "/tmp/x" is "results/tmp/x": inside, so written there
    refused = len(HOSTILE) - 1
    assert proc.stderr.count("results: the path") == refused
    assert (folder / "results" / "tmp" / "corral-absolute-escape.json").exists()
    assert sorted(os.listdir(folder / "results")) == sorted([*(f"{v}.json" for v in SAFE), ".corral", "tmp"])
    _outside_untouched(folder)
    assert (folder / ".corral" / "corral.log").read_text().count("results: the path") == refused
    # A later run of the same campaign (everything done already) is not held back by the bad files.
    again = corral_cli(folder, "run", "-q", check=0)
    assert "Traceback" not in again.stderr
    assert all(t["state"] == "done" for t in _tasks(folder))


def test_an_item_key_that_climbs_out_is_refused_in_a_results_path(tmp_path):
    folder = tmp_path / "a" / "b" / "camp"
    write_campaign(folder, {"name": "tk", "items": {"list": [{"v": "../../../up"}, {"v": "ok"}], "key": "{v}"},
                            "stages": {"work": {"run": ["true"]}}, "results": "results/{item_key}.json",
                            "backends": {"local": {"workers": 1, "gpus": "none"}}})
    proc = corral_cli(folder, "run", "-q", check=0)
    assert "item ../../../up" in proc.stderr and "goes up a folder" in proc.stderr
    write_campaign(folder, {"name": "tk", "items": {"list": [{"v": "/tmp/corral-absolute-escape"}], "key": "{v}"},
                            "stages": {"work": {"run": ["true"]}}, "results": "{item_key}.json",
                            "backends": {"local": {"workers": 1, "gpus": "none"}}})
    proc = corral_cli(folder, "run", "-q", check=0)
    assert "is an absolute path" in proc.stderr and "item /tmp/corral-absolute-escape" in proc.stderr
    _outside_untouched(folder)
    assert (folder / "results" / "ok.json").exists() and not (tmp_path / "up.json").exists()
