"""The run registry: tags, notes, filters on config values, show, diff, resume refusal, output formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import corral_cli, query_ledger, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: reg
params:
  policy: scripted
  model: gpt-4o
items:
  grid:
    x: {range: [0, 6]}
stages:
  s:
    call: m:f
backends:
  local: {workers: 2, gpus: none}
"""

MODULE = """
def f(item, ctx):
    return {"ok": item["x"] % 2 == 0, "v": item["x"] * 1.5}
"""


@pytest.fixture(scope="module")
def two_runs(module_ledger, tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry")
    write_module(folder, "m", MODULE)
    write_campaign(folder, CAMPAIGN)
    first = corral_cli(folder, "run", "-q", "--tag", "team=vision", "--tag", "round=1", "--note", "baseline",
                       check=0)
    second = corral_cli(folder, "run", "-q", "--new", "params.policy=learned", "params.model=claude-3",
                        check=0)
    ids = [json.loads(corral_cli(folder, "runs", "--json", check=0).stdout)[i]["id"] for i in (1, 0)]
    assert "baseline" not in first.stdout + second.stdout
    return folder, ids


def runs_json(folder, *args):
    return [r["id"] for r in json.loads(corral_cli(folder, "runs", *args, "--json", check=0).stdout)]


def test_tags_notes_and_filters(two_runs):
    folder, (a, b) = two_runs
    assert runs_json(folder) == [b, a]
    assert runs_json(folder, "--where", "model=gpt-4o") == [a]                 # params.X shorthand
    assert runs_json(folder, "--where", "params.policy=learned") == [b]        # dotted path
    assert runs_json(folder, "--where", "team=vision", "--where", "status=done") == [a]
    assert runs_json(folder, "--where", "model!=gpt-4o") == [b]
    assert runs_json(folder, "--where", "policy=learned|scripted") == [b, a]
    corral_cli(folder, "runs", "tag", b, "team=language", "owner=ana", check=0)
    corral_cli(folder, "runs", "note", b, "bigger", "model", check=0)
    assert runs_json(folder, "--where", "tag.owner=ana") == [b]
    shown = json.loads(corral_cli(folder, "runs", "show", b, "--json", check=0).stdout)
    assert shown["tags"] == {"team": "language", "owner": "ana"}
    assert [n["text"] for n in shown["notes"]] == ["bigger model"]
    assert shown["totals"] == {"done": 6} and shown["items"] == 6
    assert shown["config"]["params"]["policy"] == "learned" and shown["config_hash"] and shown["host"]
    assert "python" in shown["versions"]
    text = corral_cli(folder, "runs", "show", a, check=0).stdout
    assert "team=vision" in text and "baseline" in text and "policy: scripted" in text
    bad = corral_cli(folder, "runs", "tag", a, "novalue", check=2)
    assert "key=value" in bad.stderr and "Traceback" not in bad.stderr
    assert "key=value" in corral_cli(folder, "runs", "--where", "model", check=2).stderr


def test_diff(two_runs):
    folder, (a, b) = two_runs
    text = corral_cli(folder, "runs", "diff", a, b, check=0).stdout
    assert "-params.policy: scripted" in text and "+params.policy: learned" in text
    assert "+params.model: claude-3" in text and "name:" not in text
    data = json.loads(corral_cli(folder, "runs", "diff", a, b, "--json", check=0).stdout)
    assert {c["key"] for c in data["changes"]} == {"params.policy", "params.model"}
    same = corral_cli(folder, "runs", "diff", a, a, check=0).stdout
    assert "same configuration" in same


def test_resume_refuses_a_changed_config_unless_forced(two_runs):
    folder, (a, _) = two_runs
    refused = corral_cli(folder, "run", "-q", "--run-id", a, "params.policy=other", check=2)
    assert "different configuration" in refused.stderr
    assert "-params.policy: scripted" in refused.stderr and "+params.policy: other" in refused.stderr
    corral_cli(folder, "run", "-q", "--run-id", a, "params.policy=other", "--force", check=0)
    shown = json.loads(corral_cli(folder, "runs", "show", a, "--json", check=0).stdout)
    assert "+params.policy: other" in shown["notes"][-1]["text"]
    kinds = [r[0] for r in query_ledger(folder, "SELECT message FROM events WHERE run_id = :r AND kind = 'force'",
                                        {"r": a})]
    assert kinds and "+params.policy: other" in kinds[0]


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        self._in = tag in ("td", "th")

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in:
            self.cells.append(data)


def test_formats_on_tables(two_runs, tmp_path):
    folder, (a, b) = two_runs
    md = corral_cli(folder, "runs", "-f", "md", check=0).stdout
    assert "| id | status |" in md and "---:" in md and "100.0%" in md
    rows = list(csv.DictReader(io.StringIO(corral_cli(folder, "runs", "-f", "csv", check=0).stdout)))
    assert [r["id"] for r in rows] == [b, a] and rows[0]["progress"] == "1.0"
    out = tmp_path / "t.html"
    corral_cli(folder, "runs", "-f", "html", "-o", str(out), check=0)
    parser = _Cells()
    parser.feed(out.read_text())
    assert b in parser.cells and "status" in parser.cells
    status = list(csv.DictReader(io.StringIO(corral_cli(folder, "status", "--run-id", b, "-f", "csv",
                                                        check=0).stdout)))
    assert status == [{**status[0], "stage": "s", "done": "6", "total": "6"}]
    latex = corral_cli(folder, "status", "--run-id", b, "-f", "latex", check=0).stdout
    assert "\\toprule" in latex and "\\bottomrule" in latex and "stage & total & done" in latex
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + latex
                       + "\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout[-2000:]
    assert "not one of" in corral_cli(folder, "status", "-f", "xml", check=2).stderr
