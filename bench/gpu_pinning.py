"""Show how the local backend pins workers to GPUs, on a machine with real GPUs.

    python bench/gpu_pinning.py [--workers-per-gpu 2] [--tasks-per-slot 3] [--seconds 0.5] [--keep DIR]

Runs a tiny campaign (`gpus: auto`, one GPU per task) in a temporary folder. Each task records
what it was given (CUDA_VISIBLE_DEVICES, ctx.gpus) and what it sees: with PyTorch, the number of
devices CUDA shows, the device's name and UUID, and, from `nvidia-smi --query-compute-apps`, the
physical GPU its own process holds memory on; without PyTorch, the line of `nvidia-smi -L` for the
id it was given. Prints one row per task and exits 1 if a task saw more or less than one GPU, if
one id led to two physical GPUs, or if more than workers_per_gpu tasks ran on one GPU at once.
On a machine without GPUs it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

PROBE = '''\
import os, subprocess, time


def _nvidia_smi(*args):
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def probe(item, ctx, seconds={seconds}):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    record = {{"visible": visible, "ctx_gpus": ctx.gpus, "pid": os.getpid(), "start": time.time()}}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        x = torch.ones(2048, 2048, device="cuda")
        deadline = time.time() + seconds
        while time.time() < deadline:
            x = (x @ x) / 2048.0
        torch.cuda.synchronize()
        props = torch.cuda.get_device_properties(0)
        record.update(view="torch", device_count=torch.cuda.device_count(), name=props.name,
                      uuid="GPU-" + str(props.uuid) if getattr(props, "uuid", None) else None)
        apps = _nvidia_smi("--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader")
        held = [line.split(",")[1].strip() for line in apps.splitlines()
                if line.split(",")[0].strip() == str(os.getpid())]
        record["held_on"] = held
        del x
    else:
        time.sleep(seconds)
        lines = _nvidia_smi("-L").splitlines()
        ids = [v for v in (visible or "").split(",") if v.strip()]
        record.update(view="nvidia-smi -L", device_count=len(ids),
                      name="; ".join(l for l in lines if any(l.startswith(f"GPU {{i}}:") for i in ids)) or None,
                      uuid=None, held_on=[])
    record["end"] = time.time()
    return record
'''

CAMPAIGN = '''\
name: gpu-pinning
items:
  grid:
    i: {{range: {tasks}}}
  key: "task-{{i}}"
stages:
  probe:
    call: probe:probe
    resources: {{gpus: 1}}
    timeout: 10m
backends:
  local:
    gpus: auto
    workers_per_gpu: {workers_per_gpu}
    tasks_per_worker: 1
'''


def machine_gpus() -> list[str]:
    """GPU ids as the local backend's `gpus: auto` finds them (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for part in visible.split(","):
            if part.strip() == "-1":
                break
            if part.strip():
                ids.append(part.strip())
        return ids
    if shutil.which("nvidia-smi") is None:
        return []
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [str(n) for n, line in enumerate(proc.stdout.splitlines()) if line.startswith("GPU ")] if proc.returncode == 0 else []


def max_at_once(spans: list[tuple[float, float]]) -> int:
    return max((sum(1 for s, e in spans if s <= start < e) for start, _ in spans), default=0)


def problems_of(rows: list[dict], workers_per_gpu: int) -> list[str]:
    problems = []
    physical = defaultdict(set)
    for row in rows:
        if row.get("state") != "done":
            problems.append(f"task {row['item_key']} ended {row.get('state')}: {row.get('error_message')}")
            continue
        ids = [v for v in (row["visible"] or "").split(",") if v]
        if len(ids) != 1 or row["device_count"] != 1 or [str(g) for g in row["ctx_gpus"]] != ids:
            problems.append(f"task {row['item_key']}: CUDA_VISIBLE_DEVICES={row['visible']!r}, "
                            f"ctx.gpus={row['ctx_gpus']}, {row['device_count']} device(s) visible")
        for uuid in [row.get("uuid")] + list(row.get("held_on") or []):
            if uuid:
                physical[row["visible"]].add(uuid)
    for visible, uuids in physical.items():
        if len(uuids) > 1:
            problems.append(f"CUDA_VISIBLE_DEVICES={visible} led to several GPUs: {sorted(uuids)}")
    for visible in {row["visible"] for row in rows if row.get("state") == "done"}:
        spans = [(row["start"], row["end"]) for row in rows if row.get("visible") == visible]
        if max_at_once(spans) > workers_per_gpu:
            problems.append(f"{max_at_once(spans)} tasks at once on GPU {visible} (workers_per_gpu is {workers_per_gpu})")
    return problems


def print_table(rows: list[dict]) -> None:
    t0 = min((row["start"] for row in rows if row.get("start")), default=0.0)
    header = ["task", "CUDA_VISIBLE_DEVICES", "ctx.gpus", "devices", "view", "GPU", "memory held on", "start", "end"]
    lines = [header]
    for row in sorted(rows, key=lambda r: (str(r.get("visible")), r.get("start") or 0)):
        lines.append([row["item_key"], str(row.get("visible")), str(row.get("ctx_gpus")), str(row.get("device_count")),
                      str(row.get("view")), f"{row.get('name')} {row.get('uuid') or ''}".strip(),
                      ",".join(row.get("held_on") or []) or "-",
                      f"{(row.get('start') or t0) - t0:.2f}", f"{(row.get('end') or t0) - t0:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers-per-gpu", type=int, default=2)
    parser.add_argument("--tasks-per-slot", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="how long each task keeps its GPU busy")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    gpus = machine_gpus()
    if not gpus:
        print("no GPU on this machine (CUDA_VISIBLE_DEVICES unset or empty, nvidia-smi finds none): nothing to check")
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gpu-pinning-"))
    folder.mkdir(parents=True, exist_ok=True)
    tasks = len(gpus) * args.workers_per_gpu * args.tasks_per_slot
    (folder / "probe.py").write_text(PROBE.format(seconds=args.seconds))
    (folder / "corral.yaml").write_text(CAMPAIGN.format(tasks=tasks, workers_per_gpu=args.workers_per_gpu))
    env = dict(os.environ, CORRAL_LEDGER=f"sqlite:///{folder / 'ledger.db'}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                      env.get("PYTHONPATH")]))
    corral = [sys.executable, "-m", "corral"]
    print(f"GPUs: {', '.join(gpus)}; workers_per_gpu={args.workers_per_gpu}; {tasks} tasks of {args.seconds}s")
    ran = subprocess.run([*corral, "run", "-q", "--new"], cwd=folder, env=env, capture_output=True, text=True)
    exported = subprocess.run([*corral, "export", "--stage", "probe", "-f", "json"], cwd=folder, env=env,
                              capture_output=True, text=True)
    if exported.returncode != 0:
        print(ran.stderr + exported.stderr, file=sys.stderr)
        return 1
    rows = json.loads(exported.stdout)
    print_table(rows)
    problems = problems_of(rows, args.workers_per_gpu)
    done = [row for row in rows if row.get("state") == "done"]
    per_gpu = {v: max_at_once([(r["start"], r["end"]) for r in done if r["visible"] == v])
               for v in sorted({r["visible"] for r in done})}
    print(f"most tasks at once per GPU: {per_gpu}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("pinning ok" if not problems else f"{len(problems)} problem(s)")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
