"""Bad input: every error names the file and key, suggests a fix, exits 2, shows no traceback
and leaves no ledger behind."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import corral_cli, write_campaign, write_module

BASE = """\
name: t
items:
  grid:
    x: [1, 2, 3]
stages:
  a:
    call: tasks:f
backends:
  local:
    workers: 2
"""


def stage_a(extra: str) -> str:
    """BASE with ``extra`` (indented YAML lines) added to stage ``a``."""
    return BASE.replace("    call: tasks:f\n", "    call: tasks:f\n" + extra, 1)


def items(block: str) -> str:
    """BASE with the items section replaced."""
    return BASE.replace("items:\n  grid:\n    x: [1, 2, 3]\n", block, 1)


# (id, campaign text or None for "no file", extra CLI args, substrings the message must contain)
CASES = [
    ("unknown-top-level-key", BASE + "stagse: {}\n", [],
     ["{file}", "stagse", "unknown key", "did you mean: stages"]),
    ("unknown-stage-key", stage_a("    retires: {max: 2}\n"), [],
     ["{file}", "stages.a.retires", "did you mean: retries"]),
    ("wrong-type", stage_a("    retries: {max: \"three\"}\n"), [],
     ["{file}", "stages.a.retries.max", "three", "integer"]),
    ("missing-name", BASE.replace("name: t\n", ""), [],
     ["{file}", "name", "missing required key"]),
    ("invalid-yaml", BASE.replace("x: [1, 2, 3]", "x: [1, 2, 3}"), [],
     ["{file}", "not valid YAML", "line 4"]),
    ("run-and-call", stage_a("    run: [echo, hi]\n"), [],
     ["{file}", "stages.a", "exactly one of 'run'", "'call'"]),
    ("needs-unknown-stage", stage_a("  b:\n    call: tasks:f\n    needs: aa\n"), [],
     ["{file}", "stages.b.needs", "'aa'", "did you mean: a"]),
    ("needs-cycle", stage_a("    needs: b\n  b:\n    call: tasks:f\n    needs: a\n"), [],
     ["{file}", "cycle", "a -> b -> a"]),
    ("unknown-backend", stage_a("    backend: slurm\n"), [],
     ["{file}", "stages.a.backend", "unknown backend 'slurm'", "local"]),
    ("unknown-backend-type", BASE + "  cluster: {type: slurmm}\n", [],
     ["{file}", "backends.cluster.type", "slurmm"]),
    ("bad-duration", stage_a("    timeout: 5 parsecs\n"), [],
     ["{file}", "stages.a.timeout", "5 parsecs", "duration"]),
    ("bad-call-reference", BASE.replace("call: tasks:f", "call: tasks.f"), [],
     ["{file}", "stages.a.call", "tasks.f", "package.module:function"]),
    ("override-unknown-key", BASE, ["foo=1"],
     ["{file}", "foo", "+key=value"]),
    ("missing-campaign-file", None, [],
     ["nope.yaml", "no such campaign file"]),
    ("shard-out-of-range", BASE, ["--shard", "5/2"],
     ["5/2", "out of range"]),
    ("shard-not-a-fraction", BASE, ["--shard", "two"],
     ["two", "I/N"]),
    ("from-file-missing", items("items:\n  from: nofile.csv\n"), [],
     ["{file}", "items.from", "nofile.csv", "does not exist"]),
    ("key-template-unknown-param", items("items:\n  grid:\n    x: [1, 2, 3]\n  key: \"{x}-{y}\"\n"), [],
     ["{file}", "items.key", "'y'", "x"]),
    ("duplicate-items", items("items:\n  grid:\n    x: [1, 2, 1.0]\n"), [],
     ["{file}", "items", "same parameters", "distinct"]),
    ("zip-length-mismatch", items("items:\n  zip:\n    x: [1, 2, 3]\n    y: [1, 2]\n"), [],
     ["{file}", "items.zip", "same length"]),
]

# Errors in the item sources are found only after `corral run` has opened (and created) the ledger.
ITEM_SOURCE_CASES = {"from-file-missing", "key-template-unknown-param", "duplicate-items", "zip-length-mismatch"}


def _setup(folder: Path, text: str | None) -> str:
    write_module(folder, "tasks", "def f(item, ctx):\n    return item\n")
    if text is None:
        return "nope.yaml"
    write_campaign(folder, text)
    return "corral.yaml"


def _assert_bad_input(proc, folder: Path, expected: list[str]) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "internal error" not in proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    message = " ".join(proc.stderr.split())  # rich may wrap long lines
    for part in expected:
        part = part.format(file=folder / "corral.yaml")
        assert part in message, f"{part!r} not in {proc.stderr!r}"
    assert proc.stdout == ""


# Each CLI start costs about a second of CPU: run every bad campaign once, two at a time, up front.
EXTRA = {
    # the realistic typo: `stages` itself misspelt, so `stages` is also missing
    "typo-replaces-stages": ("check", BASE.replace("stages:", "stagse:"), ["--json"]),
    "retires-check": ("check", stage_a("    retires: {max: 2}\n"), []),
    "retires-tick": ("tick", stage_a("    retires: {max: 2}\n"), []),
    "retires-status": ("status", stage_a("    retires: {max: 2}\n"), []),
    "retires-export": ("export", stage_a("    retires: {max: 2}\n"), []),
    "template": ("check", BASE.replace("call: tasks:f", "run: [echo, \"{y}\"]"), []),
    "retries-on": ("check", stage_a("    retries: {max: 1, on: [timout]}\n"), []),
    "gpus": ("check", BASE.replace("workers: 2", "gpus: some"), []),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    jobs = {case_id: ("run", text, [*args, "-q"]) for case_id, text, args, _ in CASES}
    jobs.update(EXTRA)

    def one(case_id: str):
        command, text, args = jobs[case_id]
        folder = tmp_path_factory.mktemp(case_id)
        file = _setup(folder, text)
        return case_id, (corral_cli(folder, command, file, *args, timeout=120), folder)

    tmp_path_factory.getbasetemp()  # made once here: two threads making it at once collide
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, jobs))


@pytest.mark.parametrize("case_id,expected", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_message_and_exit_code(outcomes, case_id, expected):
    proc, folder = outcomes[case_id]
    _assert_bad_input(proc, folder, expected)
    if case_id not in ITEM_SOURCE_CASES:  # those are test_item_errors_create_no_ledger
        assert not (folder / ".corral" / "ledger.db").exists()
        assert not (folder / ".corral" / "runs").exists()


@pytest.mark.parametrize("case_id", sorted(ITEM_SOURCE_CASES))
def test_item_errors_create_no_ledger(outcomes, case_id):
    proc, folder = outcomes[case_id]
    assert proc.returncode == 2
    assert not (folder / ".corral" / "ledger.db").exists()


@pytest.mark.parametrize("case_id,expected", [
    ("typo-replaces-stages", ["stagse", "did you mean: stages"]),
])
def test_misspelt_required_key_is_suggested(outcomes, case_id, expected):
    proc, folder = outcomes[case_id]
    _assert_bad_input(proc, folder, expected)


@pytest.mark.parametrize("case_id", ["retires-check", "retires-tick", "retires-status",
                                     "retires-export"])
def test_every_command_reports_spec_errors_the_same_way(outcomes, case_id):
    proc, folder = outcomes[case_id]
    _assert_bad_input(proc, folder, ["{file}", "stages.a.retires", "did you mean: retries"])
    assert not (folder / ".corral" / "ledger.db").exists()


def test_command_template_with_unknown_field_is_caught_by_check(outcomes):
    proc, folder = outcomes["template"]
    _assert_bad_input(proc, folder, ["stages.a.run", "template", "KeyError('y')", "x"])


def test_unknown_error_class_in_retries_on_is_suggested(outcomes):
    proc, folder = outcomes["retries-on"]
    _assert_bad_input(proc, folder, ["stages.a.retries.on", "timout", "did you mean: timeout"])


def test_union_field_error_names_the_plain_key(outcomes):
    proc, folder = outcomes["gpus"]
    _assert_bad_input(proc, folder, ["backends.local.gpus:", "some"])
    assert "literal[" not in proc.stderr


def test_a_call_whose_module_does_not_exist_is_bad_input(tmp_path):
    import subprocess
    import sys

    (tmp_path / "corral.yaml").write_text(
        "name: m\nitems:\n  list: [{a: 1}]\nstages:\n  s:\n    call: taskz:f\n")
    for command in (["check"], ["run", "-q"]):
        proc = subprocess.run([sys.executable, "-m", "corral", *command], cwd=tmp_path, capture_output=True,
                              text=True)
        assert proc.returncode == 2, proc.stderr
        assert "stages.s.call" in proc.stderr and "taskz" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".corral" / "ledger.db").exists()
