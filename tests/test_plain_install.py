"""What a plain ``pip install corral`` (no extras) can do: every module imports, the quickstart runs
through every command, and a campaign that needs an extra is refused at ``corral check`` with the
install command. The dev install has every extra, so these tests hide them
(tests/support/without_extras.py) rather than trusting that nothing imports them."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import corral
from conftest import cli_env, write_campaign, write_module
from corral.extras import OPTIONAL_MODULES

HIDE = Path(__file__).parent / "support" / "without_extras.py"
EXAMPLES = Path(__file__).parents[1] / "examples"


def plain(cwd: Path, *args: str, check: int | None = None, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """``corral ARGS`` with every optional module hidden."""
    proc = subprocess.run([sys.executable, str(HIDE), "-m", "corral", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=cli_env(env))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    if check is not None:
        assert proc.returncode == check, (f"corral {' '.join(args)} exited {proc.returncode}, wanted {check}\n"
                                          f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def test_the_hiding_works():
    code = ("from corral.extras import installed\nfor m in %r:\n    assert not installed(m), m\n"
            "try:\n    import jinja2\nexcept ModuleNotFoundError:\n    print('hidden')\n" % (OPTIONAL_MODULES,))
    proc = subprocess.run([sys.executable, str(HIDE), "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "hidden", proc.stderr


def test_every_module_imports_without_extras():
    """No module of corral imports an optional dependency at module level: each is imported only on
    the path that needs it, after that path has checked for it."""
    modules = [m.name for m in pkgutil.walk_packages(corral.__path__, "corral.") if not m.name.endswith("__main__")]
    code = ("import importlib, json\nbad = {}\nfor name in %r:\n    try:\n        importlib.import_module(name)\n"
            "    except ModuleNotFoundError as exc:\n        bad[name] = exc.name\nprint(json.dumps(bad))" % modules)
    proc = subprocess.run([sys.executable, str(HIDE), "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {}, "modules that import an optional dependency when imported"
    assert len(modules) > 50


@pytest.mark.slow
def test_quickstart_through_every_command_without_extras(tmp_path):
    folder = tmp_path / "quickstart"
    shutil.copytree(EXAMPLES / "quickstart", folder, ignore=shutil.ignore_patterns(".corral", "archive"))
    checked = plain(folder, "check", check=0)
    assert "episode" in checked.stdout and "would start a new run" in checked.stdout
    plain(folder, "check", "--json", check=0)
    plain(folder, "run", "-q", check=0)
    status = json.loads(plain(folder, "status", "--json", check=0).stdout)
    assert status["run"]["status"] == "finished"
    assert status["totals"]["done"] == status["totals"]["total"] == 1201
    plain(folder, "status", "--submissions", check=0)
    csv = plain(folder, "export", "--stage", "episode", "--format", "csv", check=0).stdout.splitlines()
    assert csv[0].startswith("run_id,stage,item_key") and len(csv) == 601
    plain(folder, "export", "--format", "json", "-o", "all.json", check=0)
    assert len(json.loads((folder / "all.json").read_text())) == 1201
    report = json.loads(plain(folder, "report", "--by", "policy", "--metric", "success", "-f", "json",
                              check=0).stdout)
    assert report["total"]["done"] == 1201 or report["total"]
    for fmt in ("table", "md", "csv", "latex", "html"):
        plain(folder, "report", "--by", "policy", "-f", fmt, check=0)
    plot = plain(folder, "report", "--by", "policy", "--plot", "out.png", check=2)
    assert "pip install" in plot.stderr and "matplotlib" in plot.stderr
    parquet = plain(folder, "export", "-f", "parquet", "-o", "r.parquet", check=2)
    assert "pip install 'corral[parquet]'" in parquet.stderr
    runs = json.loads(plain(folder, "runs", "--json", check=0).stdout)
    assert len(runs) == 1 and runs[0]["status"] == "finished"
    plain(folder, "runs", "show", runs[0]["id"], check=0)
    plain(folder, "logs", "random/clean/pick/0", "--stage", "episode", check=0)
    tick = json.loads(plain(folder, "tick", "--json", check=0).stdout)
    assert tick["status"] == "finished"
    plain(folder, "retry", check=0)
    plain(folder, "cancel", check=0)
    plain(folder, "init", "starter", check=0)
    plain(folder / "starter", "check", check=0)


def test_a_campaign_that_needs_the_llm_extra_is_refused_at_check(tmp_path):
    folder = tmp_path / "llm-batch"
    shutil.copytree(EXAMPLES / "llm-batch", folder, ignore=shutil.ignore_patterns(".corral"))
    for command in ("check", "run"):
        proc = plain(folder, command, check=2, env={"OPENAI_API_KEY": "sk-test"})
        assert str(folder / "corral.yaml") in proc.stderr and "stages.label" in proc.stderr
        assert "pip install 'corral[llm]'" in proc.stderr and "jinja2" in proc.stderr
    assert not (folder / ".corral" / "ledger.db").exists()


def test_a_postgresql_ledger_without_its_driver_is_refused(tmp_path):
    write_module(tmp_path, "m", "def f(item, ctx):\n    return {}\n")
    url = "postgresql://corral@127.0.0.1:1/nowhere"
    config = {"name": "pg", "items": {"list": [{"x": 1}]}, "stages": {"s": {"call": "m:f"}},
              "backends": {"local": {"workers": 1, "gpus": "none"}}}
    write_campaign(tmp_path, config)
    for args, env, where in ((["--ledger", url], None, "--ledger"), ([], {"CORRAL_LEDGER": url}, "CORRAL_LEDGER")):
        for command in ("check", "run", "status"):
            proc = plain(tmp_path, command, *args, env=env, check=2)
            assert where in proc.stderr and "'psycopg'" in proc.stderr, proc.stderr
            assert "pip install 'corral[postgres]'" in proc.stderr
    write_campaign(tmp_path, {**config, "ledger": url})
    proc = plain(tmp_path, "check", check=2)
    assert f"{tmp_path / 'corral.yaml'}: ledger:" in proc.stderr and "pip install 'corral[postgres]'" in proc.stderr
    assert not (tmp_path / ".corral").exists()
