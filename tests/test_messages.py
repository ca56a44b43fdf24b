"""What the user reads: durations in SLURM's format, errors in config-group files, Hydra's sweep and
group syntax said in corral's terms, expected-value texts, the end of `corral run`, and the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign

SLURM_CAMPAIGN = """\
name: times
items:
  grid:
    x: [1, 2]
stages:
  train:
    run: [echo, "{x}"]
    backend: cluster
    timeout: "1-12:00:00"
    resources: {time: "72:00:00"}
  evaluate:
    run: [echo, "{x}"]
    backend: cluster
    timeout: "30"
    retries: {max: 1, backoff: "2-0"}
backends:
  cluster: {type: slurm, partition: debug, time: "30:00"}
"""


def _sbatch_time(stage_preview: dict) -> str:
    script = stage_preview["sbatch"][0]["script"]
    return next(line.split("=", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH --time="))


def test_slurm_time_formats_are_durations(tmp_path: Path) -> None:
    write_campaign(tmp_path, SLURM_CAMPAIGN)
    plan = json.loads(corral_cli(tmp_path, "run", "--dry-run", check=0).stdout)
    assert plan["stages"]["train"]["timeout"] == 36 * 3600
    assert _sbatch_time(plan["submissions"]["train"]) == "3-00:00:00"
    assert plan["stages"]["evaluate"]["timeout"] == 30
    assert plan["backends"]["cluster"]["time"] == 30 * 60
    assert _sbatch_time(plan["submissions"]["evaluate"]) == "00:30:00"

    # The same forms on the command line, through the override grammar.
    plan = json.loads(corral_cli(tmp_path, "run", "--dry-run", "stages.evaluate.timeout=2-0",
                                 "stages.train.resources.time=1-12:00:00", check=0).stdout)
    assert plan["stages"]["evaluate"]["timeout"] == 2 * 86400
    assert _sbatch_time(plan["submissions"]["train"]) == "1-12:00:00"


def test_a_wrong_duration_says_what_a_duration_is(tmp_path: Path) -> None:
    write_campaign(tmp_path, SLURM_CAMPAIGN)
    for override in ("stages.train.timeout=5parsecs", "stages.train.resources.time=72:00:00:00",
                     "stages.evaluate.retries.backoff=soon", "backends.cluster.time=1-"):
        proc = corral_cli(tmp_path, "check", override, check=2)
        key, value = override.split("=", 1)
        assert f"{key}: '{value}' is not a duration" in proc.stderr, proc.stderr
        for form in ("seconds (90)", "30s", "10m", "72:00:00", "1-12:00:00"):
            assert form in proc.stderr, proc.stderr
        assert "float" not in proc.stderr and "None" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


LOCAL_CAMPAIGN = """\
name: hints
items:
  grid:
    x: [1, 2]
stages:
  train:
    run: [echo, "{x}"]
    timeout: 10m
    retries: {max: 1}
    resources: {gpus: 1, cpus: 2, time: 1h, mem: 1G}
backends:
  local: {workers: 2, gpus: none}
"""


def test_the_expected_text_describes_the_key(tmp_path: Path) -> None:
    write_campaign(tmp_path, LOCAL_CAMPAIGN)
    # override -> (words the expected line must have, words it must not have)
    cases = {
        "stages.train.resources.gpus=two": (["whole number of GPUs per task", "0 for none"], ["auto", "list"]),
        "backends.local.gpus=two": (["'auto', 'none' or a list of GPU ids"], ["per task"]),
        "stages.train.resources.time=soon": (["time limit", "a duration", "1-12:00:00"], []),
        "stages.train.timeout=soon": (["a duration", "or null for none"], []),
        "stages.train.resources.mem=lots": (["a size", "512M"], []),
        "stages.train.retries.max=three": (["whole number of retries"], []),
        "stages.train.resources.cpus=many": (["whole number of CPUs"], []),
    }
    for override, (wanted, unwanted) in cases.items():
        proc = corral_cli(tmp_path, "check", override, check=2)
        expected = next(line for line in proc.stderr.splitlines() if line.strip().startswith("expected:"))
        for word in wanted:
            assert word in expected, (override, proc.stderr)
        for word in [*unwanted, "None", "float", "int"]:
            assert word not in expected, (override, proc.stderr)


# -- config groups ----------------------------------------------------------------------------------

SWEEP = """\
defaults:
  - _self_
  - experiment: base

name: sweep
items:
  grid:
    lr: [0.1]
    seed: [0, 1]
stages:
  train:
    run: [echo, "{lr}", "{seed}"]
    timeout: 10m
backends:
  local: {workers: 2, gpus: none}
"""

GROUP_FILES = {
    "base": "# @package _global_\nstages:\n  train:\n    timeout: 20m\n",
    "big": "# @package _global_\nitems:\n  grid:\n    seed: [0, 1, 2, 3]\n",
    "broken": "# @package _global_\nstages:\n  train:\n    timeout: [20m\n",
    "typo": "# @package _global_\nstages:\n  train:\n    retires: {max: 2}\n",
    "slow": "# @package _global_\nstages:\n  train:\n    timeout: 5 parsecs\n",
    "missing": "# @package _global_\nstages:\n  train:\n    run: [echo, '${params.nope}']\n",
    "unpackaged": "stages:\n  train:\n    timeout: 1h\n",
    "badkey": "# @package _global_\nitems:\n  key: '{lr}-{nope}'\n",
}


def sweep_campaign(folder: Path, text: str = SWEEP) -> Path:
    path = write_campaign(folder, text)
    (folder / "experiment").mkdir(exist_ok=True)
    for name, body in GROUP_FILES.items():
        (folder / "experiment" / f"{name}.yaml").write_text(body)
    return path


def _error_line(proc) -> str:
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return next(line for line in proc.stderr.splitlines() if line.startswith("error: "))


def test_invalid_yaml_in_a_group_file_names_that_file(tmp_path: Path) -> None:
    sweep_campaign(tmp_path)
    broken = tmp_path / "experiment" / "broken.yaml"
    for args in (["experiment=broken"], ["+experiment=broken", "~experiment"]):
        proc = corral_cli(tmp_path, "check", *args, check=2)
        line = _error_line(proc)
        assert line.startswith(f"error: {broken}: is not valid YAML (line 5, column 1)"), proc.stderr
    # The same file chosen in the defaults list.
    write_campaign(tmp_path, SWEEP.replace("experiment: base", "experiment: broken"))
    line = _error_line(corral_cli(tmp_path, "check", check=2))
    assert line.startswith(f"error: {broken}: is not valid YAML (line 5"), line


def test_an_error_in_a_group_file_is_blamed_on_that_file(tmp_path: Path) -> None:
    sweep_campaign(tmp_path)
    group = tmp_path / "experiment"
    cases = {
        "typo": ["stages.train.retires: unknown key 'retires'", "did you mean: retries"],
        "slow": ["stages.train.timeout: '5 parsecs' is not a duration"],
        "missing": ["stages.train.run[1]: cannot resolve an interpolation", "params.nope"],
        "badkey": ["items.key: key template uses unknown parameters ['nope']"],
    }
    for option, wanted in cases.items():
        proc = corral_cli(tmp_path, "check", f"experiment={option}", check=2)
        line = _error_line(proc)
        assert line.startswith(f"error: {group / option}.yaml: {wanted[0]}"), proc.stderr
        for text in wanted[1:]:
            assert text in proc.stderr
        assert "corral.yaml" not in proc.stderr
    # A key the command line set is the command line's: the campaign file is named.
    line = _error_line(corral_cli(tmp_path, "check", "experiment=slow", "stages.train.timeout=soon", check=2))
    assert line.startswith(f"error: {tmp_path / 'corral.yaml'}: stages.train.timeout: 'soon'"), line


def test_a_mandatory_value_left_unset_names_its_key_and_how_to_give_it(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path, {"name": "m", "params": {"data": "???"}, "items": {"list": [{"a": 1}]},
                                         "stages": {"s": {"run": ["echo", "${params.data}"]}}})
    for command in ("check", "run"):
        line = _error_line(corral_cli(tmp_path, command, check=2))
        assert line == f"error: {campaign}: params.data: is mandatory (??? in the file) and has no value", line
    assert "expected: a value, on the command line (params.data=VALUE) or in the file" in \
        corral_cli(tmp_path, "check", check=2).stderr
    assert not (tmp_path / ".corral").exists()
    # In a group file, that file is named; given on the command line, it runs.
    write_campaign(tmp_path, {"name": "m", "items": {"list": [{"a": 1}]},
                              "stages": {"s": {"run": ["echo", "${params.data}"]}}})
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "needs_data.yaml").write_text("# @package _global_\nparams:\n  data: ???\n")
    line = _error_line(corral_cli(tmp_path, "check", "+preset=needs_data", check=2))
    assert line.startswith(f"error: {tmp_path / 'preset' / 'needs_data.yaml'}: params.data: is mandatory"), line
    corral_cli(tmp_path, "check", "+preset=needs_data", "params.data=x", check=0)


def test_a_group_file_placed_under_its_group_says_how_to_merge_it(tmp_path: Path) -> None:
    sweep_campaign(tmp_path)
    proc = corral_cli(tmp_path, "check", "experiment=unpackaged", check=2)
    line = _error_line(proc)
    assert line.startswith(f"error: {tmp_path / 'experiment' / 'unpackaged.yaml'}: experiment: its keys land "
                           "under 'experiment:'"), proc.stderr
    assert "`# @package _global_` as the file's first line" in proc.stderr
    assert "experiment@_global_: unpackaged" in proc.stderr
    # With the header, the same file merges.
    (tmp_path / "experiment" / "unpackaged.yaml").write_text("# @package _global_\n" + GROUP_FILES["unpackaged"])
    plan = json.loads(corral_cli(tmp_path, "run", "--dry-run", "experiment=unpackaged", check=0).stdout)
    assert plan["stages"]["train"]["timeout"] == 3600


# -- Hydra's syntax in corral's words --------------------------------------------------------------

@pytest.mark.usefixtures("campaign_ledger")
def test_a_comma_list_on_a_grid_axis_is_a_grid(tmp_path: Path) -> None:
    sweep_campaign(tmp_path)
    plan = json.loads(corral_cli(tmp_path, "check", "items.grid.lr=1e-3,1e-4", "--json", check=0).stdout)
    assert plan["items"] == 4
    proc = corral_cli(tmp_path, "run", "-q", "items.grid.lr=1e-3,1e-4", check=0)
    assert "multirun" not in proc.stderr
    records = [json.loads(line) for line in
               corral_cli(tmp_path, "export", "items.grid.lr=1e-3,1e-4", check=0).stdout.splitlines()]
    assert sorted((r["lr"], r["seed"]) for r in records) == [(0.0001, 0), (0.0001, 1), (0.001, 0), (0.001, 1)]
    # The comma list is the same configuration as the list, and as Hydra's choice(): the same run.
    for same in ("items.grid.lr=[1e-3,1e-4]", "items.grid.lr=choice(1e-3,1e-4)"):
        proc = corral_cli(tmp_path, "run", same, check=0)
        assert "continuing run" in proc.stderr, proc.stderr


def test_a_comma_sweep_says_how_to_write_it_in_corral(tmp_path: Path) -> None:
    sweep_campaign(tmp_path)
    cases = {
        "stages.train.timeout=1h,2h": ["corral has no multirun", "+items.grid.timeout=[1h, 2h]", "{timeout}",
                                       "stages.train.timeout='1h,2h'"],
        "experiment=base,big": ["a run has one configuration", "`corral run experiment=base`",
                                "`corral run experiment=big`"],
        "items.grid.seed=range(0,4)": ["a grid axis takes a list of values", "items.grid.seed=[",
                                       "'items.grid.seed={range: [START, STOP]}'"],
    }
    for override, wanted in cases.items():
        proc = corral_cli(tmp_path, "check", override, check=2)
        _error_line(proc)
        for text in wanted:
            assert text in proc.stderr, (override, proc.stderr)
        assert "--multirun" not in proc.stderr and "Ambiguous value" not in proc.stderr, proc.stderr


def test_a_misspelled_group_suggests_the_group_and_its_options(tmp_path: Path) -> None:
    sweep_campaign(tmp_path)
    options = "badkey, base, big, broken, missing, slow, typo, unpackaged"
    cases = {
        "experment=big": ("no config group 'experment'", "did you mean: experiment=big"),
        "+experment=big": ("no config group 'experment'", "did you mean: +experiment=big"),
        "experiment=bgi": ("config group 'experiment' has no option 'bgi'", "did you mean: experiment=big"),
    }
    for override, (message, suggestion) in cases.items():
        proc = corral_cli(tmp_path, "check", override, check=2)
        assert message in _error_line(proc), proc.stderr
        assert suggestion in proc.stderr and options in proc.stderr, proc.stderr
        assert "+experment" not in proc.stderr.replace(suggestion, "")
        assert "search path" not in proc.stderr and "provider=" not in proc.stderr, proc.stderr
    # The same in the file's defaults list.
    write_campaign(tmp_path, SWEEP.replace("- experiment: base", "- experimnt: base"))
    proc = corral_cli(tmp_path, "check", check=2)
    assert "no config group 'experimnt'" in _error_line(proc)
    assert "did you mean: experiment: base" in proc.stderr and options in proc.stderr


def test_a_defaults_list_without_self_composes_without_hydra_warnings(tmp_path: Path) -> None:
    sweep_campaign(tmp_path, SWEEP.replace("  - _self_\n", ""))
    for args in ([], ["experiment=big"], ["+experiment=big", "~experiment"]):
        proc = corral_cli(tmp_path, "check", *args, check=0)
        assert proc.stderr == "", proc.stderr
    # Without _self_ the file itself comes last: its timeout wins over the group's.
    plan = json.loads(corral_cli(tmp_path, "run", "--dry-run", check=0).stdout)
    assert plan["stages"]["train"]["timeout"] == 600


# -- the end of `corral run` ------------------------------------------------------------------------

FAILING = """\
name: failing
items:
  grid:
    x: {range: [0, 6]}
stages:
  work:
    call: tasks:work
  summary:
    per: all
    needs: work
    call: tasks:summary
backends:
  local: {workers: 2, gpus: none}
"""

FAILING_TASKS = """\
def work(item, ctx):
    if item["x"] == 5:
        raise KeyError("frame")
    if item["x"] >= 1:
        raise ValueError("no data for this setting")
    return {"ok": True}


def summary(ctx):
    return {"n": 1}
"""


@pytest.mark.usefixtures("campaign_ledger")
def test_run_prints_the_most_common_error_per_stage(tmp_path: Path) -> None:
    write_campaign(tmp_path, FAILING)
    (tmp_path / "tasks.py").write_text(FAILING_TASKS)
    proc = corral_cli(tmp_path, "run", check=1)
    lines = proc.stderr.splitlines()
    work = next(line for line in lines if line.startswith("work: "))
    assert work.startswith("work: 5 failed, most often ValueError (4 of 5): no data for this setting "
                           "(corral logs t"), proc.stderr
    summary = next(line for line in lines if line.startswith("summary: "))
    assert summary.startswith("summary: 1 cancelled, upstream: a needed task (work) did not finish"), proc.stderr
    # The task it names is one with that error.
    task = work.rsplit("corral logs ", 1)[1].rstrip(")")
    shown = corral_cli(tmp_path, "logs", task, check=0).stdout
    assert "error (ValueError): ValueError: no data for this setting" in shown, shown
    # `corral status` says the same.
    assert work in corral_cli(tmp_path, "status", check=0).stdout


MERGE = """\
name: merge
items:
  grid:
    x: [1, 2, 3]
stages:
  label:
    run: [echo, "label {x}"]
  summary:
    per: all
    needs: label
    run: [sh, -c, "echo merged the labels"]
  archive:
    per: all
    needs: summary
    run: [echo, archived]
backends:
  local: {workers: 2, gpus: none}
"""


@pytest.mark.usefixtures("campaign_ledger")
def test_logs_all_shows_the_task_of_a_per_all_stage(tmp_path: Path) -> None:
    write_campaign(tmp_path, MERGE)
    corral_cli(tmp_path, "run", "-q", check=0)
    shown = corral_cli(tmp_path, "logs", "all", "--stage", "summary", check=0).stdout
    assert "stage=summary item=all state=done attempts=1" in shown, shown
    assert "merged the labels" in shown
    # Two stages run once per run: `all` alone names both.
    proc = corral_cli(tmp_path, "logs", "all", check=2)
    assert "'all' names 2 tasks (stages: summary, archive); add --stage" in proc.stderr, proc.stderr


@pytest.mark.usefixtures("campaign_ledger")
def test_run_quiet_prints_only_the_result_and_errors(tmp_path: Path) -> None:
    ok, failing = tmp_path / "ok", tmp_path / "failing"
    write_campaign(ok, MERGE)
    proc = corral_cli(ok, "run", "-q", check=0)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]], proc.stderr
    assert proc.stderr.startswith("run merge_") and "finished (100.0% of 5 tasks finished)" in proc.stderr

    write_campaign(failing, FAILING)
    (failing / "tasks.py").write_text(FAILING_TASKS)
    proc = corral_cli(failing, "run", "--quiet", check=1)
    lines = proc.stderr.splitlines()
    assert proc.stdout == "" and len(lines) == 3, proc.stderr
    assert lines[0].startswith("run failing_") and "finished_with_failures" in lines[0]
    assert lines[1].startswith("work: 5 failed, most often ValueError (4 of 5)")
    assert lines[2].startswith("summary: 1 cancelled, upstream")


# -- the README --------------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_command_table_lists_every_command() -> None:
    import re

    import typer

    from corral.cli.main import app

    commands = set(typer.main.get_command(app).commands)
    assert {"run", "ingest", "sim"} <= commands
    text = README.read_text()
    section = text[text.index("## Commands"):text.index("\n## ", text.index("## Commands") + 1)]
    listed = set(re.findall(r"^\| `corral ([a-z-]+)", section, flags=re.MULTILINE))
    assert listed == commands, f"missing from the README: {sorted(commands - listed)}; " \
                               f"not commands: {sorted(listed - commands)}"
    setup = text[text.index("## Set up"):text.index("\n## ", text.index("## Set up") + 1)]
    assert re.search(r"make test.*starts a throwaway PostgreSQL.*local single-node SLURM cluster", setup,
                     flags=re.DOTALL), setup
