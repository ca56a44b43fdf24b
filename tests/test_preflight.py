"""What must hold on this machine is checked before a run is created: secrets, API keys, GPUs,
function names; `corral check` shows slots, GPUs and secrets (by name only); `.env` beside the
campaign supplies secrets; a secret written into `env:` by value is warned about.

The GPUs "this machine has" are set as the local backend finds them, through CUDA_VISIBLE_DEVICES:
empty (no GPU) unless a test gives ids, so the tests mean the same on a machine with GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_no_ledger, campaign_dict, corral_cli, query_ledger, write_campaign, write_module

pytestmark = pytest.mark.usefixtures("campaign_ledger")

COMMANDS = [("check",), ("run", "--quiet"), ("tick",)]


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    """No GPU and none of the secrets these campaigns name, whatever the developer's shell has."""
    for name in ("HF_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _assert_refused_everywhere(folder: Path, words: list[str], env: dict[str, str] | None = None) -> None:
    for command in COMMANDS:
        proc = corral_cli(folder, *command, check=2, env=env)
        assert "Traceback" not in proc.stderr
        for word in words:
            assert word in proc.stderr, (command, word, proc.stderr)
        assert_no_ledger(folder)
        assert not (folder / ".corral" / "runs").exists()


def _echo_campaign(folder: Path, **stage) -> Path:
    return write_campaign(folder, campaign_dict({"work": {"run": ["true"], **stage}}))


# -- 1. refused before a run is created ---------------------------------------------------------------

def test_a_missing_secret_is_refused_before_a_run_is_created(tmp_path):
    _echo_campaign(tmp_path, secrets=["HF_TOKEN"])
    _assert_refused_everywhere(tmp_path, ["corral.yaml", "stages.work.secrets", "'HF_TOKEN' is not set", ".env"])
    # Once set, the same campaign runs.
    corral_cli(tmp_path, "run", "--quiet", check=0, env={"HF_TOKEN": "hf_present"})


def test_a_missing_api_key_is_refused_before_a_run_is_created(tmp_path):
    write_campaign(tmp_path, {
        "name": "labels", "items": {"grid": {"x": [1, 2]}},
        "stages": {"label": {"backend": "openai", "request": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say {{ item.x }}"}]}}},
        "backends": {"openai": {"type": "openai_batch", "base_url": "http://127.0.0.1:9/v1"}},
    })
    _assert_refused_everywhere(tmp_path, ["corral.yaml", "backends.openai.api_key_env", "OPENAI_API_KEY",
                                          "not set"])


def test_too_few_gpus_are_refused_before_a_run_is_created(tmp_path):
    config = campaign_dict({"train": {"run": ["true"], "resources": {"gpus": 2}}})
    config["backends"] = {"local": {"workers": 2, "gpus": "auto"}}
    write_campaign(tmp_path, config)
    # No GPU at all, then one GPU where two per task are asked for.
    _assert_refused_everywhere(tmp_path, ["stages.train.resources.gpus", "asks for 2 GPU(s) per task", "no GPU"])
    _assert_refused_everywhere(tmp_path, ["stages.train.resources.gpus", "has GPUs [0]", "at most 1"],
                               env={"CUDA_VISIBLE_DEVICES": "0"})
    proc = corral_cli(tmp_path, "check", "--json", check=0, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert json.loads(proc.stdout)["stages"]["train"]["slots"]["slots"] == 1


def test_a_gpu_list_naming_gpus_the_machine_lacks_is_refused(tmp_path):
    config = campaign_dict({"train": {"run": ["true"], "resources": {"gpus": 1}}})
    config["backends"] = {"local": {"workers": 2, "gpus": [0, 1, 2, 3]}}
    write_campaign(tmp_path, config)
    _assert_refused_everywhere(tmp_path, ["backends.local.gpus", "[2, 3]", "lacks", "CUDA_VISIBLE_DEVICES"],
                               env={"CUDA_VISIBLE_DEVICES": "0,1"})
    corral_cli(tmp_path, "check", check=0, env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})


def test_gpus_on_a_cluster_are_the_clusters_business(tmp_path):
    write_module(tmp_path, "train", "def train(item, ctx):\n    return {}\n")
    config = campaign_dict({"train": {"call": "train:train", "backend": "cluster", "resources": {"gpus": 8}}})
    config["backends"]["cluster"] = {"type": "slurm", "partition": "gpu"}
    write_campaign(tmp_path, config)
    proc = corral_cli(tmp_path, "check", "--json", check=0)
    plan = json.loads(proc.stdout)
    assert plan["gpus"]["cluster"] == {"gpus": None, "source": "cluster"}
    assert plan["stages"]["train"]["slots"]["gpus_per_task"] == 8
    text = corral_cli(tmp_path, "check", check=0).stdout
    assert "GPUs of cluster: the cluster's" in text and "8 GPU each" in text
    assert_no_ledger(tmp_path)


# -- 2. what check shows --------------------------------------------------------------------------------

def test_check_shows_slots_gpus_and_secrets_by_name_only(tmp_path):
    write_module(tmp_path, "tasks", "def prepare(item, ctx):\n    return {}\n")
    config = campaign_dict({
        "prepare": {"call": "tasks:prepare", "resources": {"gpus": 0}},
        "train": {"run": ["true"], "needs": ["prepare"], "secrets": ["HF_TOKEN", "WANDB_API_KEY"]},
    })
    config["backends"] = {"local": {"workers": 3, "gpus": "auto", "workers_per_gpu": 2}}
    write_campaign(tmp_path, config)
    (tmp_path / ".env").write_text("WANDB_API_KEY=wandb-value-from-dotenv\n")
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "HF_TOKEN": "hf_value_from_environment"}
    proc = corral_cli(tmp_path, "check", check=0, env=env)
    lines = proc.stdout
    assert "3 workers" in lines                       # the CPU stage: backends.local.workers
    assert "4 workers, 1 GPU each" in lines           # 2 GPUs x workers_per_gpu 2
    assert "GPUs of local: 0, 1 (CUDA_VISIBLE_DEVICES)" in lines
    assert "secrets: HF_TOKEN set, WANDB_API_KEY set (.env)" in lines
    as_json = corral_cli(tmp_path, "check", "--json", check=0, env=env).stdout
    plan = json.loads(as_json)
    assert plan["secrets"] == {"HF_TOKEN": "set", "WANDB_API_KEY": "set (.env)"}
    assert plan["gpus"]["local"] == {"gpus": [0, 1], "source": "CUDA_VISIBLE_DEVICES"}
    assert plan["stages"]["prepare"]["slots"] == {"backend": "local", "slots": 3, "unit": "workers",
                                                  "gpus_per_task": 0}
    missing = corral_cli(tmp_path, "check", check=2, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert "'HF_TOKEN' is not set" in missing.stderr and "WANDB_API_KEY" not in missing.stderr
    for text in (proc.stdout, proc.stderr, as_json, missing.stdout, missing.stderr):
        assert "hf_value_from_environment" not in text and "wandb-value-from-dotenv" not in text


# -- 3. .env beside the campaign ------------------------------------------------------------------------

SECRET_PROBE = """
    import hashlib
    import os

    def probe(item, ctx):
        token = os.environ.get("HF_TOKEN", "")
        return {"token": token[:3], "same": hashlib.sha256(token.encode()).hexdigest() == item["want"]}
    """


def _digest(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


def _all_ledger_text(folder: Path) -> str:
    tables = [r[0] for r in query_ledger(folder, "SELECT name FROM sqlite_master WHERE type = 'table'")] \
        if not _on_postgres() else \
        [r[0] for r in query_ledger(folder, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return "\n".join(repr(row) for table in tables for row in query_ledger(folder, f'SELECT * FROM "{table}"'))


def _on_postgres() -> bool:
    import os

    return (os.environ.get("CORRAL_LEDGER") or "").startswith("postgresql")


def _files_text(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in (folder / ".corral").rglob("*") if p.is_file())


def test_a_secret_only_in_dotenv_reaches_the_task_and_never_the_ledger(tmp_path):
    write_module(tmp_path, "probe", SECRET_PROBE)
    write_campaign(tmp_path, campaign_dict({"probe": {"call": "probe:probe", "secrets": ["HF_TOKEN"]},
                                            "shell": {"run": ["sh", "-c", 'test "$(printf %s "$HF_TOKEN" | wc -c)" -eq 20'],
                                                      "secrets": "HF_TOKEN"}},
                                           items={"list": [{"want": _digest("hf_dotenv_only_value")}]}))
    (tmp_path / ".env").write_text('# tokens\nHF_TOKEN="hf_dotenv_only_value"\n')
    corral_cli(tmp_path, "run", "--quiet", check=0)
    done = query_ledger(tmp_path, "SELECT stage, state, result FROM tasks ORDER BY stage")
    assert [(stage, state) for stage, state, _ in done] == [("probe", "done"), ("shell", "done")]
    assert json.loads(done[0][2]) == {"token": "hf_", "same": True}
    assert "hf_dotenv_only_value" not in _all_ledger_text(tmp_path)
    assert b"hf_dotenv_only_value" not in _files_text(tmp_path)


def test_the_environment_wins_over_dotenv(tmp_path):
    write_module(tmp_path, "probe", SECRET_PROBE)
    write_campaign(tmp_path, campaign_dict({"probe": {"call": "probe:probe", "secrets": ["HF_TOKEN"]}},
                                           items={"list": [{"want": _digest("hf_from_the_environment")}]}))
    (tmp_path / ".env").write_text("HF_TOKEN=hf_from_the_dotenv_file\n")
    plan = json.loads(corral_cli(tmp_path, "check", "--json", check=0,
                                 env={"HF_TOKEN": "hf_from_the_environment"}).stdout)
    assert plan["secrets"] == {"HF_TOKEN": "set"}
    corral_cli(tmp_path, "run", "--quiet", check=0, env={"HF_TOKEN": "hf_from_the_environment"})
    (result,) = query_ledger(tmp_path, "SELECT result FROM tasks")
    assert json.loads(result[0])["same"] is True


def test_an_empty_value_in_the_environment_does_not_hide_the_one_in_dotenv(tmp_path):
    write_module(tmp_path, "probe", SECRET_PROBE)
    write_campaign(tmp_path, campaign_dict({"probe": {"call": "probe:probe", "secrets": ["HF_TOKEN"]}},
                                           items={"list": [{"want": _digest("hf_from_the_dotenv_file")}]}))
    proc = corral_cli(tmp_path, "check", check=2, env={"HF_TOKEN": ""})
    assert "the secret 'HF_TOKEN' is set but empty" in proc.stderr, proc.stderr
    (tmp_path / ".env").write_text("HF_TOKEN=hf_from_the_dotenv_file\n")
    corral_cli(tmp_path, "run", "--quiet", check=0, env={"HF_TOKEN": ""})
    (result,) = query_ledger(tmp_path, "SELECT result FROM tasks")
    assert json.loads(result[0])["same"] is True


# -- 4. a secret given by value ---------------------------------------------------------------------

def test_a_secret_given_by_value_in_env_is_warned_about(tmp_path):
    write_campaign(tmp_path, campaign_dict({
        "upload": {"run": ["true"], "env": {"HF_TOKEN": "hf_written_in_the_file"}},
        "log": {"run": ["true"], "env": {"WANDB_MODE": "offline", "TRACKER": "s3cr3t-in-dotenv"}},
    }))
    (tmp_path / ".env").write_text("WANDB_API_KEY=s3cr3t-in-dotenv\n")
    for command in COMMANDS[:2]:
        proc = corral_cli(tmp_path, *command, check=0)
        assert "warning:" in proc.stderr
        assert "stages.upload.env.HF_TOKEN is named like a secret" in proc.stderr
        assert "stages.log.env.TRACKER has the value of a secret" in proc.stderr
        assert "stages.upload.secrets" in proc.stderr
        assert "WANDB_MODE" not in proc.stderr
        assert "hf_written_in_the_file" not in proc.stderr and "s3cr3t-in-dotenv" not in proc.stderr
    quiet = tmp_path / "quiet"
    write_campaign(quiet, campaign_dict({"upload": {"run": ["true"], "env": {"WANDB_MODE": "offline"}}}))
    assert "warning" not in corral_cli(quiet, "check", check=0).stderr


# -- 5. function names looked up in the module's source -----------------------------------------------

POLICY = """
    import pathlib

    pathlib.Path(__file__).with_name("IMPORTED").touch()   # shows whether checking imported the module

    def evaluate(item, ctx):
        return {"ok": True}

    def rollout(item, ctx):
        return {"ok": True}
    """


def test_a_function_missing_from_its_module_is_refused_with_a_suggestion(tmp_path):
    write_module(tmp_path, "policy", POLICY)
    write_campaign(tmp_path, campaign_dict({"evaluate": {"call": "policy:evalute"}}))
    _assert_refused_everywhere(tmp_path, ["corral.yaml", "stages.evaluate.call", "has no function 'evalute'",
                                          "evaluate, rollout", "did you mean: policy:evaluate"])
    assert not (tmp_path / "IMPORTED").exists()
    # A module in a package: the same, for the module's file inside it.
    write_module(tmp_path / "lab", "__init__", "")
    write_module(tmp_path / "lab", "policies", POLICY)
    write_campaign(tmp_path, campaign_dict({"evaluate": {"call": "lab.policies:no_such_function"}}))
    proc = corral_cli(tmp_path, "check", check=2)
    assert "stages.evaluate.call" in proc.stderr and "no function 'no_such_function'" in proc.stderr
    assert str(tmp_path / "lab" / "policies.py") in proc.stderr
    write_campaign(tmp_path, campaign_dict({"evaluate": {"call": "lab.missing:evaluate"}}))
    assert "cannot find the module 'lab.missing'" in corral_cli(tmp_path, "check", check=2).stderr
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "lab" / "IMPORTED").exists()
    assert_no_ledger(tmp_path)


def test_a_parse_function_missing_from_its_module_is_refused(tmp_path):
    write_module(tmp_path, "labels", "import json\n\ndef parse(response, item):\n    return json.loads(response)\n")
    write_campaign(tmp_path, {
        "name": "labels", "items": {"grid": {"x": [1, 2]}},
        "stages": {"label": {"backend": "openai", "parse": "labels:parse_labels", "request": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say {{ item.x }}"}]}}},
        "backends": {"openai": {"type": "openai_batch", "base_url": "http://127.0.0.1:9/v1"}},
    })
    _assert_refused_everywhere(tmp_path, ["stages.label.parse", "has no function 'parse_labels'",
                                          "did you mean: labels:parse"], env={"OPENAI_API_KEY": "sk-test"})


MADE_IN_OTHER_WAYS = """
    import functools
    from json import dumps as imported_function

    def _double(item, ctx, factor):
        return {"value": item["x"] * factor}

    assigned = functools.partial(_double, factor=2)
    annotated: object = functools.partial(_double, factor=3)

    def _cached(function):
        return functools.wraps(function)(functools.lru_cache(maxsize=None)(function))

    @functools.wraps(_double)
    def decorated(item, ctx):
        return _double(item, ctx, 4)

    class Policy:
        def __call__(self, item, ctx):
            return {"value": item["x"]}

    policy = Policy()
    first, (second, third) = policy, (policy, policy)

    try:
        from a_package_that_is_not_installed import fast as accelerated
    except ImportError:
        def accelerated(item, ctx):
            return {"value": -item["x"]}

    if True:
        made_by_lambda = lambda item, ctx: {"value": 0}

    for made_in_a_loop in [policy]:
        pass

    with open(__file__) as made_by_with:
        pass

    def _register():
        global registered
        registered = policy
        only_inside_a_function = policy

    _register()
    """


def test_functions_made_in_other_ways_are_found(tmp_path):
    write_module(tmp_path, "made", MADE_IN_OTHER_WAYS)
    write_module(tmp_path, "starred", "from os import *\n")
    names = ["assigned", "annotated", "imported_function", "decorated", "Policy", "policy", "first", "third",
             "accelerated", "made_by_lambda", "made_in_a_loop", "made_by_with", "registered"]
    stages = {name: {"call": f"made:{name}"} for name in names}
    stages["star"] = {"call": "starred:getcwd"}            # ``import *``: the source cannot tell, so allowed
    stages["compiled"] = {"call": "math:sqrt"}             # no Python source to read
    stages["attribute_module"] = {"call": "os.path:join"}  # a module's attribute that is a module
    write_campaign(tmp_path, campaign_dict(stages, items={"list": [{"x": 5}]}))
    corral_cli(tmp_path, "check", check=0)
    # A name bound only inside a function or a class is not the module's.
    for name in ("only_inside_a_function", "__call__"):
        write_campaign(tmp_path, campaign_dict({"s": {"call": f"made:{name}"}}, items={"list": [{"x": 5}]}))
        assert f"has no function {name!r}" in corral_cli(tmp_path, "check", check=2).stderr
    # They run too: what the check accepted is what the worker finds.
    runnable = ["assigned", "annotated", "decorated", "policy", "third", "accelerated", "made_by_lambda",
                "registered"]
    write_campaign(tmp_path, campaign_dict({name: {"call": f"made:{name}"} for name in runnable},
                                           items={"list": [{"x": 5}]}))
    corral_cli(tmp_path, "run", "--quiet", check=0)
    values = dict(query_ledger(tmp_path, "SELECT stage, result FROM tasks"))
    assert {stage: json.loads(result)["value"] for stage, result in values.items()} == {
        "assigned": 10, "annotated": 15, "decorated": 20, "policy": 5, "third": 5, "accelerated": -5,
        "made_by_lambda": 0, "registered": 5}
