"""corral report: statistics, grouping (item parameters, run config values, runs as columns), formats."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import corral_cli, rounded, write_campaign, write_module

from corral.report import aggregate, mean_std_ci, summarize_values, wilson

pytestmark = pytest.mark.usefixtures("campaign_ledger")

POLICY = """
import random

SKILL = {"random": 0.15, "scripted": 0.55, "learned": 0.8}
DIFFICULTY = {"clean": 0.0, "noise": 0.1, "occlusion": 0.2}


def run_episode(item, ctx):
    if item["task"] == "push" and item["repeat"] == 5:
        raise ValueError("the arm fell off")
    rng = random.Random(f"{item['setting']}/{item['task']}/{item['repeat']}")
    success = rng.random() < max(0.0, 0.55 - DIFFICULTY[item["setting"]])
    return {"success": success, "progress": 1.0 if success else round(rng.uniform(0, 0.9), 3),
            "n_steps": rng.randint(20, 200)}
"""

CAMPAIGN = """
name: rep
params:
  seed: 0
  policy: scripted
items:
  grid:
    setting: [clean, noise, occlusion]
    task: [pick, push]
    repeat: {range: [0, 6]}
  key: "{setting}/{task}/{repeat}"
stages:
  episode:
    call: policy:run_episode
backends:
  local:
    workers: 2
    gpus: none
"""


# -- statistics ---------------------------------------------------------------------------------


def test_wilson_known_values():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.490, abs=1e-3) and hi == pytest.approx(0.943, abs=1e-3)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.278, abs=1e-3)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.722, abs=1e-3) and hi == 1.0
    lo, hi = wilson(1, 2)
    assert lo == pytest.approx(0.0945, abs=1e-3) and hi == pytest.approx(0.9055, abs=1e-3)
    assert wilson(0, 0) is None


def test_mean_std_ci_known_values():
    s = summarize_values([1, 2, 3, 4, 5])
    assert s["n"] == 5 and s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(2.5))
    assert s["ci"] == pytest.approx(1.959964 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert s["lo"] == pytest.approx(3.0 - s["ci"]) and s["hi"] == pytest.approx(3.0 + s["ci"])
    one = summarize_values([7.0])
    assert one["mean"] == 7.0 and one["std"] is None and one["ci"] is None
    assert mean_std_ci(0, 0.0, 0.0)["mean"] is None
    # Constant values: zero spread, no negative variance from rounding.
    assert summarize_values([0.1] * 1000)["std"] == pytest.approx(0.0, abs=1e-6)


# -- a campaign with two runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(module_ledger, tmp_path_factory):
    import corral

    folder = tmp_path_factory.mktemp("report")
    write_module(folder, "policy", POLICY)
    path = write_campaign(folder, CAMPAIGN)
    ids = []
    for overrides in ([], ["params.policy=learned", "params.seed=1"]):
        campaign = corral.open(str(path), overrides)
        try:
            run, created = campaign.start()
            assert created
            run.run(max_interval=0.2)
            ids.append(run.id)
        finally:
            campaign.close()
    return folder, ids


def report_json(folder: Path, *args: str) -> dict:
    proc = corral_cli(folder, "report", *args, "--format", "json", check=0)
    return json.loads(proc.stdout)


def expected_success(folder: Path, run_id: str, key: str) -> dict:
    import corral

    campaign = corral.open(str(folder / "corral.yaml"))
    try:
        counts: dict = {}
        for record in campaign.run(run_id).records(stage="episode"):
            k, n = counts.get(record[key], (0, 0))
            if record["state"] == "done":
                counts[record[key]] = (k + int(record["success"]), n + 1)
            else:
                counts.setdefault(record[key], (k, n))
        return counts
    finally:
        campaign.close()


def test_group_by_item_parameter(two_runs):
    folder, (first, second) = two_runs
    data = report_json(folder, "--run-id", first, "--by", "setting")
    assert data["metric"] == "success" and data["metric_kind"] == "bool"
    assert data["stage"] == "episode" and data["by"] == ["setting"]
    assert [g["key"]["setting"] for g in data["groups"]] == ["clean", "noise", "occlusion"]
    truth = expected_success(folder, first, "setting")
    for group in data["groups"]:
        k, n = truth[group["key"]["setting"]]
        assert group["expected"] == 12 and group["done"] == 11 and group["failed"] == 1
        assert group["progress"] == 1.0 and group["running"] == 0
        assert (group["success"]["k"], group["success"]["n"]) == (k, n)
        lo, hi = wilson(k, n)
        assert group["success"]["lo"] == pytest.approx(lo) and group["success"]["hi"] == pytest.approx(hi)
        assert group["errors"] == {"ValueError": 1}
        assert set(group["numeric"]) == {"progress", "n_steps"}
        assert group["numeric"]["n_steps"]["n"] == 11
    assert data["total"]["expected"] == 36 and data["total"]["errors"] == {"ValueError": 3}
    assert data["best"]["value"] >= data["worst"]["value"]
    # The newest run is the default.
    assert report_json(folder, "--by", "task")["runs"][0]["id"] == second


def test_sql_matches_python(two_runs):
    import corral

    folder, ids = two_runs
    campaign = corral.open(str(folder / "corral.yaml"))
    try:
        rows = [campaign.run(r).row for r in ids]
        for by in (["setting", "task"], ["params.policy", "setting"], [], ["stage"], ["result.success"]):
            fast = aggregate(campaign.ledger(), rows, by=by, engine="sql").to_dict()
            slow = aggregate(campaign.ledger(), rows, by=by, engine="python").to_dict()
            # PostgreSQL sums in its own order: the same numbers to 12 significant digits.
            assert json.dumps(rounded(fast), sort_keys=True, default=str) == \
                json.dumps(rounded(slow), sort_keys=True, default=str), by
    finally:
        campaign.close()


def test_runs_compared_as_columns(two_runs):
    folder, (first, second) = two_runs
    data = report_json(folder, "--run-id", first, "--run-id", second, "--by", "setting,task")
    assert data["compare_runs"] is True
    assert [r["id"] for r in data["runs"]] == [first, second]
    labels = [r["label"] for r in data["runs"]]
    assert labels == ["policy=scripted,seed=0", "policy=learned,seed=1"]
    assert len(data["groups"]) == 6
    for group in data["groups"]:
        assert set(group["runs"]) == {first, second}
        assert group["runs"][first]["expected"] == 6
    assert set(data["best"]) == {first, second}
    table = corral_cli(folder, "report", "--run-id", first, "--run-id", second, "--by", "setting", check=0).stdout
    assert "policy=scripted,seed=0: success rate" in table and "policy=learned,seed=1: success rate" in table


def test_group_by_run_config_value(two_runs):
    folder, (first, second) = two_runs
    for dim in ("params.policy", "policy"):
        data = report_json(folder, "--run-id", first, "--run-id", second, "--by", dim)
        assert data["compare_runs"] is False
        assert data["dimensions"][0]["kind"] == "config" and data["dimensions"][0]["source"] == "params.policy"
        groups = {g["key"][dim]: g for g in data["groups"]}
        assert set(groups) == {"scripted", "learned"}
        assert all(g["expected"] == 36 for g in groups.values())
    data = report_json(folder, "--run-id", first, "--run-id", second, "--by", "params.seed", "--by", "setting")
    assert {(g["key"]["params.seed"], g["key"]["setting"]) for g in data["groups"]} == {
        (s, t) for s in (0, 1) for t in ("clean", "noise", "occlusion")}


def test_every_format(two_runs, tmp_path):
    folder, (first, second) = two_runs
    both = ["--run-id", first, "--run-id", second]
    # JSON: self-contained.
    data = report_json(folder, *both, "--by", "setting", "--metric", "success")
    assert {"groups", "runs", "metric", "by", "total"} <= set(data)
    # CSV parses, one row per group and run when runs are compared.
    text = corral_cli(folder, "report", *both, "--by", "setting", "-f", "csv", check=0).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6 and {"setting", "run", "success_rate", "success_lo", "success_hi", "n_steps_mean"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["success_rate"]) <= 1.0
    # Markdown: a header separator.
    md = corral_cli(folder, "report", "--by", "setting", "-f", "md", check=0).stdout
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| setting |") and set(lines[1]) <= set("|-: ")
    # LaTeX: booktabs, escaped.
    latex = corral_cli(folder, "report", "--by", "setting", "-f", "latex", check=0).stdout
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in latex
    assert r"n\_steps mean" in latex and "n_steps" not in latex.replace(r"n\_steps", "")
    assert r"\%" in latex  # the progress column
    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[margin=0.5cm,landscape]{geometry}"
                       "\\begin{document}\\tiny\n" + latex + "\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout[-2000:]
        assert (tmp_path / "t.pdf").exists()
    # HTML: one static page with a table.
    out = folder / "report.html"
    corral_cli(folder, "report", *both, "--by", "setting", "-f", "html", "-o", str(out), check=0)

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: list[str] = []
            self.srcs: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.srcs += [v for k, v in attrs if k in ("src", "href") and v]

    parser = Parser()
    parser.feed(out.read_text())
    assert "table" in parser.tags and "style" in parser.tags and parser.tags.count("tr") == 1 + 3 + 1
    assert "script" not in parser.tags and "link" not in parser.tags and not parser.srcs
    # The terminal table.
    table = corral_cli(folder, "report", "--by", "setting", check=0).stdout
    assert "success rate" in table and "clean" in table and "(all)" in table and "best setting=" in table


def test_plot_is_png(two_runs):
    pytest.importorskip("matplotlib")
    folder, (first, second) = two_runs
    png = folder / "plot.png"
    corral_cli(folder, "report", "--run-id", first, "--run-id", second, "--by", "setting", "--plot", str(png),
               "-f", "json", check=0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_dimension_and_metric(two_runs):
    folder, _ = two_runs
    proc = corral_cli(folder, "report", "--by", "setting,nope", check=2)
    assert "'nope'" in proc.stderr
    for valid in ("setting", "task", "repeat", "params.seed", "params.policy", "stage"):
        assert valid in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = corral_cli(folder, "report", "--metric", "nope", check=2)
    assert "'nope'" in proc.stderr and "success" in proc.stderr
    proc = corral_cli(folder, "report", "--format", "xml", check=2)
    assert "xml" in proc.stderr
    proc = corral_cli(folder, "report", "--stage", "nope", check=2)
    assert "episode" in proc.stderr
