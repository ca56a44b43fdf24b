"""GPU slots of the local backend.

No GPU exists on the test machine, so GPU ids are given explicitly (`gpus: [0, 1]`), and the
controller is shown four GPUs through CUDA_VISIBLE_DEVICES (a list naming GPUs the machine lacks
is refused): what is checked is corral's own part, that every worker gets its own CUDA_VISIBLE_DEVICES, that no GPU gets
more than workers_per_gpu workers at once, and that CPU stages see no GPU. A real CUDA check of the
same campaign runs on a GPU machine (bench/gpu_pinning.sh).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import corral


@pytest.fixture(autouse=True)
def _four_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")


def _campaign(folder: Path, gpus: str, per_task: int, workers_per_gpu: int) -> Path:
    (folder / "probe.py").write_text(textwrap.dedent("""\
        import os, time

        def probe(item, ctx):
            start = time.time()
            time.sleep(0.05)
            return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpus": ctx.gpus,
                    "pid": os.getpid(), "start": start, "end": time.time()}
        """))
    path = folder / "corral.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: gpus
        items:
          grid:
            i: {{range: 24}}
        stages:
          on_gpu:
            call: probe:probe
            resources: {{gpus: {per_task}}}
          on_cpu:
            call: probe:probe
            resources: {{gpus: 0}}
          on_default:
            call: probe:probe
        backends:
          local:
            workers: 2
            gpus: {gpus}
            workers_per_gpu: {workers_per_gpu}
            tasks_per_worker: 3
        """))
    return path


def _results(path: Path, stage: str) -> list[dict]:
    campaign = corral.open(str(path))
    return [r for r in campaign.run().records(stage=stage)]


def test_each_worker_gets_its_own_gpu_and_cpu_stages_see_none(tmp_path):
    path = _campaign(tmp_path, "[0, 1]", per_task=1, workers_per_gpu=2)
    campaign = corral.open(str(path))
    run, _ = campaign.start()
    assert run.run().status == "finished"
    gpu = _results(path, "on_gpu")
    assert len(gpu) == 24 and all(r["state"] == "done" for r in gpu)
    for record in gpu:
        assert record["visible"] in ("0", "1")
        assert record["gpus"] == [int(record["visible"])]
    # No GPU ever has more than workers_per_gpu (2) workers at the same time.
    for device in ("0", "1"):
        spans = [(r["start"], r["end"], r["pid"]) for r in gpu if r["visible"] == device]
        for start, _, _ in spans:
            concurrent = {pid for s, e, pid in spans if s <= start < e}
            assert len(concurrent) <= 2, (device, concurrent)
    cpu = _results(path, "on_cpu")
    assert all(r["visible"] == "" and r["gpus"] == [] for r in cpu)
    # A stage that does not say gets one GPU per worker on a machine with GPUs.
    default = _results(path, "on_default")
    assert all(r["visible"] in ("0", "1") and len(r["gpus"]) == 1 for r in default)


def test_tasks_needing_two_gpus_get_pairs(tmp_path):
    path = _campaign(tmp_path, "[0, 1, 2, 3]", per_task=2, workers_per_gpu=1)
    run, _ = corral.open(str(path)).start()
    run.run()
    gpu = _results(path, "on_gpu")
    assert {r["visible"] for r in gpu} <= {"0,1", "2,3"}
    assert all(len(r["gpus"]) == 2 for r in gpu)


def test_without_gpus_a_stage_that_does_not_say_runs_on_cpu_workers(tmp_path):
    path = _campaign(tmp_path, "none", per_task=0, workers_per_gpu=1)
    run, _ = corral.open(str(path)).start()
    assert run.run().status == "finished"
    default = _results(path, "on_default")
    assert all(r["gpus"] == [] for r in default)


def test_a_stage_asking_for_more_gpus_than_exist_is_a_clear_error(tmp_path):
    path = _campaign(tmp_path, "none", per_task=1, workers_per_gpu=1)
    with pytest.raises(corral.CorralError, match="stages.on_gpu.resources.gpus: asks for 1 GPU"):
        corral.open(str(path)).start()
    assert not (tmp_path / ".corral" / "ledger.db").exists()
