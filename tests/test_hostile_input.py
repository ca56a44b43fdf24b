"""Hostile input the fuzz suite (tests/test_fuzz.py) found ending in an internal error: each is now refused
with exit 2 and a message saying what was wrong, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_no_ledger, campaign_dict, corral_cli, write_campaign

STAGES = {"work": {"run": ["true"]}}


@pytest.mark.parametrize("defaults", [[1, "two", None], [{"a": 1}], [{"a": "x", "b": "y"}], [["x"]], [{"g": [1]}]])
def test_a_defaults_entry_that_is_not_a_config_group_is_refused(tmp_path: Path, defaults) -> None:
    write_campaign(tmp_path, {**campaign_dict(STAGES), "defaults": defaults})
    proc = corral_cli(tmp_path, "check", check=2)
    assert "defaults" in proc.stderr and "corral.yaml" in proc.stderr and "_self_" in proc.stderr
    assert "internal error" not in proc.stderr
    assert_no_ledger(tmp_path)


def test_a_config_group_entry_in_defaults_still_composes(tmp_path: Path) -> None:
    write_campaign(tmp_path, {"defaults": ["_self_", {"preset": "smoke"}], **campaign_dict(STAGES)})
    write_campaign(tmp_path / "preset", "# @package _global_\nname: smoke\n", name="smoke.yaml")
    proc = corral_cli(tmp_path, "check", "--json", check=0)
    assert '"name": "smoke"' in proc.stdout


@pytest.mark.parametrize("name", ["x" * 3000, "a/" + "b" * 300, "~nouser/corral.yaml"])
def test_a_campaign_path_the_system_refuses_is_a_clear_error(tmp_path: Path, name: str) -> None:
    write_campaign(tmp_path, campaign_dict(STAGES))
    for args in (["check", name + ".yaml"], ["logs", name], ["status", name]):
        proc = corral_cli(tmp_path, *args)
        assert proc.returncode == 2, proc.stderr
        assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert_no_ledger(tmp_path)


@pytest.mark.parametrize("target", ["i" * 300, "a/" + "i" * 300 + "/b"])
def test_init_into_a_name_too_long_is_refused(tmp_path: Path, target: str) -> None:
    proc = corral_cli(tmp_path, "init", target, "--force", check=2)
    assert "cannot create the folder" in proc.stderr and "internal error" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", [".", "empty-folder", "not-a-ledger.txt", "missing.db", "x" * 300])
def test_ingest_of_a_source_without_runs_creates_no_ledger(tmp_path: Path, source: str) -> None:
    write_campaign(tmp_path, campaign_dict(STAGES))
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "not-a-ledger.txt").write_text("hello")
    proc = corral_cli(tmp_path, "ingest", source, check=2)
    assert "internal error" not in proc.stderr
    assert_no_ledger(tmp_path)


@pytest.mark.parametrize("args", [["runs", "tag", "nope", "k=v"], ["runs", "note", "nope", "a note"],
                                  ["runs", "tag", "r1", "k=v"]])
def test_tagging_a_run_where_nothing_has_run_creates_no_ledger(tmp_path: Path, args: list[str]) -> None:
    write_campaign(tmp_path, campaign_dict(STAGES))
    proc = corral_cli(tmp_path, *args, check=2)
    assert "no ledger" in proc.stderr
    assert_no_ledger(tmp_path)
