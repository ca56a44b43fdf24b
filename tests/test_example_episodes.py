"""examples/episodes: the per-episode GPU pipeline, run as its README says, with two made-up GPUs.

No GPU exists on the test machine: the README's smoke block names two through
CUDA_VISIBLE_DEVICES, and the stand-in episode records which one it was given. What is checked
here, from the files the example wrote and not from corral's numbers: every episode's output
passes the pipeline's own verify script, each try saw exactly one GPU and no GPU ran more than
workers_per_gpu episodes at once, the hub folder holds every episode exactly once over several
upload batches, the retry re-ran only the failed episodes and a new run processed nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import cli_env, corral_cli
from support.readme import EXAMPLES, copy_example, run_readme_block

pytestmark = pytest.mark.usefixtures("campaign_ledger")

README = EXAMPLES / "episodes" / "README.md"
SMOKE_EPISODES = 12
FAIL_ONCE = {2, 5, 9}
WORKERS_PER_GPU = 2
FAKE_GPUS = {"0", "1"}


def _index(folder: Path) -> list[dict]:
    lines = (folder / "episodes.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:SMOKE_EPISODES]]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, module_ledger) -> tuple[Path, list]:
    folder = copy_example("episodes", tmp_path_factory.mktemp("episodes"))
    results = run_readme_block(folder, README, "smoke", expect_ok=False, timeout=300)
    return folder, results


def test_the_readme_smoke_block_runs_with_the_exit_codes_it_describes(smoke):
    _, results = smoke
    codes = [result.returncode for result in results]
    # check, run (3 episodes fail), retry, run, run --new, status
    assert codes == [0, 1, 0, 0, 0, 0], [(r.command, r.returncode, r.stderr[-2000:]) for r in results]
    assert "finished_with_failures" in results[1].stderr + results[1].stdout
    assert "3 tasks of run" in results[2].stderr


def test_every_episode_output_passes_the_pipelines_own_verify_script(smoke):
    folder, _ = smoke
    for episode in _index(folder):
        out = folder / "staging" / episode["path"]
        proc = subprocess.run(["bash", str(folder / "verify_pipeline_outputs.sh"), str(out)],
                              capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"({episode['frames']} frames)" in proc.stdout
        import numpy as np

        with np.load(out / "tracks.npz") as tracks:
            assert tracks["tracks_3d"].shape == (episode["frames"], 3, 3)


def _tries(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((folder / ".stand-in" / "timings").iterdir())]


def test_each_try_saw_one_gpu_and_no_gpu_ran_more_than_workers_per_gpu_episodes_at_once(smoke):
    folder, _ = smoke
    tries = _tries(folder)
    assert tries and all(t["gpu"] in FAKE_GPUS for t in tries), {t["gpu"] for t in tries}
    for gpu in FAKE_GPUS:
        spans = [(t["start"], t["end"]) for t in tries if t["gpu"] == gpu]
        for start, _ in spans:
            at_once = sum(1 for s, e in spans if s <= start < e)
            assert at_once <= WORKERS_PER_GPU, (gpu, start, at_once)
    assert {t["gpu"] for t in tries} == FAKE_GPUS


def test_the_retry_reran_only_the_failures_and_the_new_run_processed_nothing(smoke):
    folder, _ = smoke
    tries = _tries(folder)
    per_episode = Counter(t["index"] for t in tries)
    assert per_episode == Counter({i: 2 if i in FAIL_ONCE else 1 for i in range(SMOKE_EPISODES)})
    for index in FAIL_ONCE:
        statuses = [t["status"] for t in sorted(tries, key=lambda t: t["start"]) if t["index"] == index]
        assert statuses == ["failed", "done"]
    newest = json.loads(corral_cli(folder, "export", "+preset=smoke", "--stage", "episode", "-f", "json",
                                   check=0).stdout)
    assert len(newest) == SMOKE_EPISODES
    assert all(row["state"] == "done" and row["skipped"] is True for row in newest)


def test_the_hub_holds_every_episode_exactly_once_over_several_upload_batches(smoke):
    folder, _ = smoke
    hub = folder / "local_hub"
    batches = [json.loads(path.read_text())["episodes"] for path in sorted((hub / "batches").glob("*.json"))]
    uploaded = Counter(episode for batch in batches for episode in batch)
    index = _index(folder)
    assert uploaded == Counter(episode["path"] for episode in index)
    assert len(batches) >= 3, batches            # >= 2 in the first run, then the retried episodes
    retried = {episode["path"] for episode in index if episode["index"] in FAIL_ONCE}
    assert retried in [set(batch) for batch in batches]
    for episode in index:
        for name in ("tracks.npz", "intrinsics.json", "extrinsics.json", "robot_state.npz"):
            assert (hub / episode["path"] / name).read_bytes() == (folder / "staging" / episode["path"] / name).read_bytes()


@pytest.mark.sqlite_only
def test_without_a_gpu_the_episode_stage_is_refused_before_anything_runs(tmp_path):
    folder = copy_example("episodes", tmp_path)
    proc = corral_cli(folder, "run", "+preset=smoke", "backends.local.gpus=none", check=2)
    assert "stages.episode.resources.gpus" in proc.stderr and "no GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (folder / ".corral" / "ledger.db").exists() and not (folder / "staging").exists()


@pytest.mark.sqlite_only
def test_the_hugging_face_target_takes_hf_token_by_name_from_dotenv(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = copy_example("episodes", tmp_path)
    target = ["hub=huggingface", "params.hf_repo=me/droid_metadata_only", "+preset=smoke"]
    environment = {"CUDA_VISIBLE_DEVICES": "0,1"}
    missing = corral_cli(folder, "check", *target, check=2, env=environment)
    assert "stages.upload.secrets" in missing.stderr and "HF_TOKEN" in missing.stderr and ".env" in missing.stderr
    (folder / ".env").write_text('HF_TOKEN="hf_from_dotenv_file"\n')
    found = corral_cli(folder, "check", *target, check=0, env=environment)
    assert "HF_TOKEN set (.env)" in found.stdout + found.stderr
    assert "hf_from_dotenv_file" not in found.stdout + found.stderr


@pytest.mark.sqlite_only
def test_an_upload_to_the_hub_without_huggingface_hub_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        import huggingface_hub  # noqa: F401
        pytest.skip("huggingface_hub is installed here")
    except ImportError:
        pass
    folder = copy_example("episodes", tmp_path)
    (folder / ".env").write_text("HF_TOKEN=hf_from_dotenv_file\n")
    args = ["hub=huggingface", "params.hf_repo=me/droid_metadata_only", "+preset=smoke",
            "params.num_episodes=2", "stages.upload.retries.max=0"]
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    corral_cli(folder, "run", "-q", *args, check=1, env=env, timeout=120)
    rows = json.loads(corral_cli(folder, "export", *args, "--stage", "upload", "-f", "json", check=0, env=env).stdout)
    assert [row["state"] for row in rows] == ["failed", "failed"]
    assert all("pip install 'huggingface_hub" in row["error_message"] for row in rows), rows
    assert "hf_from_dotenv_file" not in (folder / ".corral" / "corral.log").read_text()


BENCH = EXAMPLES.parent / "bench" / "gpu_pinning.py"


@pytest.mark.sqlite_only
def test_the_gpu_pinning_bench_says_there_is_no_gpu_and_exits_0(tmp_path):
    env = {k: v for k, v in cli_env().items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = "/usr/bin:/bin"                 # no nvidia-smi
    proc = subprocess.run([sys.executable, str(BENCH)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "no GPU on this machine" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.sqlite_only
def test_the_gpu_pinning_bench_checks_each_task_on_made_up_gpus(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--seconds", "0.2", "--tasks-per-slot", "2"], cwd=tmp_path,
                          env=cli_env({"CUDA_VISIBLE_DEVICES": "0,1"}), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("task-")]
    assert len(rows) == 8 and {row.split()[1] for row in rows} == {"0", "1"}
    assert "pinning ok" in proc.stdout


@pytest.mark.sqlite_only
def test_the_gpu_pinning_bench_reports_a_gpu_shared_beyond_workers_per_gpu_or_a_task_seeing_two():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_pinning", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(key, visible, start, end, **extra):
        return {"item_key": key, "state": "done", "visible": visible, "ctx_gpus": [int(v) for v in visible.split(",")],
                "device_count": len(visible.split(",")), "start": start, "end": end, **extra}

    fine = [row("a", "0", 0, 1), row("b", "0", 0.5, 1.5), row("c", "1", 0, 1)]
    assert bench.problems_of(fine, workers_per_gpu=2) == []
    crowded = fine + [row("d", "0", 0.6, 0.9)]
    assert any("3 tasks at once on GPU 0" in p for p in bench.problems_of(crowded, workers_per_gpu=2))
    two = fine + [row("e", "0,1", 2, 3)]
    assert any("task e" in p for p in bench.problems_of(two, workers_per_gpu=2))
    moved = fine + [row("f", "1", 2, 3, uuid="GPU-x"), row("g", "1", 3, 4, uuid="GPU-y")]
    assert any("several GPUs" in p for p in bench.problems_of(moved, workers_per_gpu=2))


STAND_IN_HUB = '''\
"""A stand-in for huggingface_hub's HfApi (the real Hub cannot be reached from a test): a dataset
repo is a folder under $STAND_IN_HUB_ROOT, each upload_folder call one commit logged in commits.jsonl."""
import json, os, shutil
from pathlib import Path

ROOT = Path(os.environ["STAND_IN_HUB_ROOT"])


class HfApi:
    def __init__(self, token=None):
        self.token = token

    def _repo(self, repo_id, repo_type):
        assert repo_type == "dataset", repo_type
        return ROOT / repo_id

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        self._repo(repo_id, repo_type).mkdir(parents=True, exist_ok=exist_ok)

    def list_repo_files(self, repo_id, repo_type=None):
        repo = self._repo(repo_id, repo_type)
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        repo = self._repo(repo_id, repo_type)
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        shutil.copytree(folder_path, repo, dirs_exist_ok=True)
        with open(ROOT / "commits.jsonl", "a") as log:
            log.write(json.dumps({"repo": repo_id, "token": self.token, "message": commit_message, "files": files}) + "\\n")
'''


@pytest.mark.sqlite_only
def test_the_hugging_face_target_uploads_each_batch_as_one_commit_with_the_token_from_dotenv(tmp_path, monkeypatch):
    # The Hub cannot be reached from a test: a stand-in huggingface_hub module takes its place.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    stand_in = tmp_path / "stand-in" / "huggingface_hub"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(STAND_IN_HUB)
    remote = tmp_path / "remote"
    folder = copy_example("episodes", tmp_path)
    (folder / ".env").write_text('HF_TOKEN="hf_from_dotenv_file"\n')
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "STAND_IN_HUB_ROOT": str(remote),
           "PYTHONPATH": os.pathsep.join([str(stand_in.parent), os.environ.get("PYTHONPATH", "")])}
    args = ["hub=huggingface", "params.hf_repo=me/droid_metadata_only", "+preset=smoke", "params.num_episodes=6",
            "params.fail_once=''"]
    corral_cli(folder, "run", "-q", *args, check=0, env=env, timeout=120)
    corral_cli(folder, "run", "-q", "--new", *args, check=0, env=env, timeout=120)
    commits = [json.loads(line) for line in (remote / "commits.jsonl").read_text().splitlines()]
    assert commits and all(c["token"] == "hf_from_dotenv_file" and c["repo"] == "me/droid_metadata_only"
                           for c in commits)
    uploaded = Counter(f[: -len("/tracks.npz")] for c in commits for f in c["files"] if f.endswith("/tracks.npz"))
    assert uploaded == Counter(episode["path"] for episode in _index(folder)[:6])
    for commit in commits:                    # each commit lists its own batch
        listed = [f for f in commit["files"] if f.startswith("batches/")]
        assert len(listed) == 1
    assert not (folder / "local_hub").exists()
    assert b"hf_from_dotenv_file" not in (folder / ".corral" / "ledger.db").read_bytes()
    assert "hf_from_dotenv_file" not in (folder / ".corral" / "corral.log").read_text()
