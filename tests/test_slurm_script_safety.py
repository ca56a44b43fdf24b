"""Every value written into a job script is quoted or refused: a campaign folder, a partition or an
sbatch option holding spaces, quotes, ``$(...)``, ``#`` or ``%`` reaches sbatch as written, and a
newline (which would start a line of its own) is refused with exit 2 before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign, write_module

GOLDEN = Path(__file__).parent / "golden"
HOSTILE_FOLDER = "run $(touch pwned) `touch pwned2` 'single' \"double\" #not-a-comment 50%A"

MODULE = """
import os

def work(item, ctx):
    return {"x": item["x"], "cwd": os.getcwd()}
"""


def _campaign(folder: Path, backend: dict, stage: dict | None = None, name: str = "hostile") -> None:
    write_module(folder, "jobs", MODULE)
    write_campaign(folder, {
        "name": name,
        "items": {"grid": {"x": [1, 2]}},
        "stages": {"work": {"call": "jobs:work", "backend": "cluster", **(stage or {})}},
        "backends": {"cluster": {"type": "slurm", "poll_interval": "1s", "max_poll_interval": "2s", **backend}},
    })


def _no_command_ran(top: Path) -> None:
    for name in ("pwned", "pwned2"):
        assert not list(top.rglob(name)) and not Path(name).exists()


def test_hostile_folder_partition_and_options_match_the_golden_script(tmp_path: Path):
    folder = tmp_path / HOSTILE_FOLDER
    _campaign(folder, {"partition": 'gpu "a100" #1', "account": "lab one", "qos": "back\\slash",
                       "sbatch": ["--mail-user=a b@example.org", "--exclusive"], "python": "python3"},
              {"resources": {"constraint": "a100|h100 & ib", "sbatch": ["--wckey='x'"]}})
    proc = corral_cli(folder, "run", "--dry-run", check=0)
    script = json.loads(proc.stdout)["submissions"]["work"]["sbatch"][0]["script"]
    script = script.replace(str(tmp_path), "<TMP>")
    assert script == (GOLDEN / "slurm_hostile.sbatch").read_text()
    _no_command_ran(tmp_path)
    assert not (folder / ".corral" / "runs").exists()


@pytest.mark.parametrize("where", ["folder", "partition", "sbatch", "backslash"])
def test_a_newline_or_a_backslash_in_a_script_value_is_refused(tmp_path: Path, where: str):
    folder = tmp_path / ("camp\n#SBATCH --wrap=touch pwned" if where == "folder" else
                         "back\\slash" if where == "backslash" else "camp")
    backend = {"partition": "gpu\n#SBATCH --wrap=x"} if where == "partition" else {}
    stage = {"resources": {"sbatch": ["--mail-type=FAIL\ntouch pwned"]}} if where == "sbatch" else None
    _campaign(folder, backend, stage)
    for command in (["run", "--dry-run"], ["run", "-q"]):
        proc = corral_cli(folder, *command, check=2)
        assert "Traceback" not in proc.stderr
        expected = "backslash" if where == "backslash" else "control character"
        assert expected in proc.stderr, proc.stderr
    _no_command_ran(tmp_path)


@pytest.mark.slurm
def test_a_run_on_the_cluster_in_a_folder_named_with_a_command_substitution(cluster: str, tmp_path: Path):
    folder = tmp_path / HOSTILE_FOLDER
    _campaign(folder, {"partition": "debug", "tasks_per_job": 1})
    corral_cli(folder, "run", "-q", timeout=300, check=0)
    rows = [json.loads(line) for line in corral_cli(folder, "export", check=0).stdout.splitlines()]
    assert sorted(r["x"] for r in rows) == [1, 2] and {r["cwd"] for r in rows} == {str(folder)}
    # the job logs are where --output says, with %A_%a filled in and the folder's own % kept
    outs = list((folder / ".corral" / "runs").rglob("slurm-*_*.out"))
    assert len(outs) == 2 and all("%" not in p.name for p in outs), outs
    _no_command_ran(tmp_path)
