"""Named reports in the campaign file's ``report:`` section."""

from __future__ import annotations

import pytest

import csv
import io
import json

from conftest import corral_cli, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

CAMPAIGN = """
name: named
params:
  policy: scripted
items:
  grid:
    setting: [clean, noise]
    repeat: {range: [0, 4]}
stages:
  episode:
    call: m:f
backends:
  local: {workers: 2, gpus: none}
report:
  by_setting:
    by: [setting]
    metric: success
    formats: [table, md, csv]
  policies:
    by: policy
    runs: [status=done]
    formats: [json]
    output: out/{name}-all.{ext}
"""

MODULE = """
def f(item, ctx):
    return {"success": item["setting"] == "clean" or item["repeat"] == 0, "steps": item["repeat"]}
"""


def test_named_reports(tmp_path):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, CAMPAIGN)
    corral_cli(tmp_path, "run", "-q", check=0)
    corral_cli(tmp_path, "run", "-q", "--new", "params.policy=learned", check=0)
    proc = corral_cli(tmp_path, "report", check=0)
    assert "by setting" in proc.stdout and "(all)" in proc.stdout           # the table, on the terminal
    rows = list(csv.DictReader(io.StringIO((tmp_path / "reports" / "by_setting.csv").read_text())))
    assert {r["setting"]: r["success_rate"] for r in rows} == {"clean": "1.0", "noise": "0.25"}
    assert "| setting |" in (tmp_path / "reports" / "by_setting.md").read_text()
    policies = json.loads((tmp_path / "out" / "policies-all.json").read_text())
    assert sorted(g["key"]["policy"] for g in policies["groups"]) == ["learned", "scripted"]
    assert policies["total"]["done"] == 16                                 # both runs, pooled by policy
    only = json.loads(corral_cli(tmp_path, "report", "by_setting", "-f", "json", check=0).stdout)
    assert only["by"] == ["setting"] and only["metric"] == "success" and len(only["runs"]) == 1
    missing = corral_cli(tmp_path, "report", "nope", check=2)
    assert "report" in missing.stderr and "by_setting, policies" in missing.stderr


def test_report_section_is_validated(tmp_path):
    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, CAMPAIGN.replace("formats: [json]", "formats: [pdf]"))
    proc = corral_cli(tmp_path, "check", check=2)
    assert "report.policies.formats" in proc.stderr and "latex" in proc.stderr and "Traceback" not in proc.stderr
    write_campaign(tmp_path, CAMPAIGN.replace("    metric: success\n", "    metric: success\n    colour: red\n"))
    assert "colour" in corral_cli(tmp_path, "check", check=2).stderr
    write_campaign(tmp_path, CAMPAIGN.replace("by: [setting]", "by: [settng]"))
    corral_cli(tmp_path, "run", "-q", check=0)
    bad = corral_cli(tmp_path, "report", "by_setting", check=2)
    assert "report.by_setting" in bad.stderr and "settng" in bad.stderr


@pytest.mark.sqlite_only
def test_sqlite_reports_without_sqlalchemy(tmp_path):
    """On a SQLite ledger, `corral report` reads it with the standard library (SQLAlchemy is never
    imported) and prints exactly what the SQLAlchemy path prints."""
    import corral

    write_module(tmp_path, "m", MODULE)
    write_campaign(tmp_path, CAMPAIGN.replace("    runs: [status=done]\n", ""))
    ids = []
    for overrides in ([], ["params.policy=learned"]):
        campaign = corral.open(str(tmp_path / "corral.yaml"), overrides)
        try:
            run, _ = campaign.start(new=True)
            run.run(max_interval=0.2)
            ids.append(run.id)
        finally:
            campaign.close()
    cases = [["--by", "setting", "-f", "csv"],
             ["--run-id", ids[0], "--run-id", ids[1], "--by", "setting,repeat", "-f", "json"]]
    for args in cases:
        light = corral_cli(tmp_path, "report", *args, check=0).stdout
        full = corral_cli(tmp_path, "report", *args, env={"CORRAL_REPORT_SQLALCHEMY": "1"}, check=0).stdout
        assert light == full and light
    import subprocess
    import sys

    from conftest import cli_env

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "corral", "report", "--by", "setting", "-f",
                           "md"], cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=60)
    assert proc.returncode == 0 and "| setting |" in proc.stdout
    assert " sqlalchemy" not in proc.stderr
    # --where needs the registry, which reads through SQLAlchemy: the same report either way.
    where = corral_cli(tmp_path, "report", "--where", "policy=learned", "--by", "setting", "-f", "csv", check=0)
    assert where.stdout == corral_cli(tmp_path, "report", "--run-id", ids[1], "--by", "setting", "-f", "csv",
                                      check=0).stdout
