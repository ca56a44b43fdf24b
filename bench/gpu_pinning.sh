#!/usr/bin/env bash
# Check GPU pinning of the local backend with real CUDA (run on a machine with GPUs and PyTorch).
#
#   bench/gpu_pinning.sh [OUT_DIR]
#
# Runs a campaign with `gpus: auto` and `workers_per_gpu: 2`: each task of the GPU stage allocates
# a tensor on its GPU with PyTorch and reports what CUDA shows it; each task of the CPU stage checks
# that CUDA shows no GPU. Prints a JSON verdict and exits non-zero on any violation.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
work="$(mktemp -d)"
cat > "$work/probe.py" <<'PY'
import os, time

def on_gpu(item, ctx):
    import torch
    start = time.time()
    x = torch.ones(1024, 1024, device="cuda")
    y = (x @ x).sum().item()
    torch.cuda.synchronize()
    time.sleep(0.2)
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "ctx_gpus": ctx.gpus,
            "device_count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
            "ok": y == 1024.0 * 1024 * 1024, "pid": os.getpid(), "start": start, "end": time.time()}

def on_cpu(item, ctx):
    import torch
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "cuda_available": torch.cuda.is_available()}
PY
cat > "$work/corral.yaml" <<'YAML'
name: gpu-pinning
items:
  grid:
    i: {range: 16}
stages:
  gpu:
    call: probe:on_gpu
    resources: {gpus: 1}
    timeout: 5m
  cpu:
    call: probe:on_cpu
backends:
  local:
    gpus: auto
    workers_per_gpu: 2
    workers: 2
    tasks_per_worker: 2
YAML
cd "$work"
nvidia-smi -L | tee "$out/nvidia-smi.txt"
python3 -m corral run -q corral.yaml 2>"$out/run.log" || { cat "$out/run.log"; exit 1; }
python3 -m corral export corral.yaml --format jsonl -o "$out/results.jsonl" 2>/dev/null
python3 - "$out/results.jsonl" <<'PY' | tee "$out/verdict.json"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
gpu = [r for r in rows if r["stage"] == "gpu"]
cpu = [r for r in rows if r["stage"] == "cpu"]
problems = []
for r in gpu:
    if r["state"] != "done" or not r.get("ok"):
        problems.append(f"gpu task {r['item_key']} not ok: {r.get('error_message')}")
    elif r["device_count"] != 1 or r["visible"] is None or r["ctx_gpus"] != [int(r["visible"])]:
        problems.append(f"gpu task {r['item_key']} saw {r['device_count']} devices, CUDA_VISIBLE_DEVICES={r['visible']}")
for r in cpu:
    if r["state"] != "done" or r.get("cuda_available"):
        problems.append(f"cpu task {r['item_key']} saw CUDA: {r.get('visible')!r}")
max_conc = 0
for device in {r["visible"] for r in gpu}:
    spans = [(r["start"], r["end"], r["pid"]) for r in gpu if r["visible"] == device]
    for s0, _, _ in spans:
        max_conc = max(max_conc, len({p for s, e, p in spans if s <= s0 < e}))
if max_conc > 2:
    problems.append(f"{max_conc} workers on one GPU at once (workers_per_gpu is 2)")
print(json.dumps({"gpu_tasks": len(gpu), "cpu_tasks": len(cpu), "devices": sorted({r["visible"] for r in gpu}),
                  "device_name": gpu[0]["name"] if gpu else None, "max_workers_on_one_gpu": max_conc,
                  "problems": problems}, indent=2))
sys.exit(1 if problems else 0)
PY
