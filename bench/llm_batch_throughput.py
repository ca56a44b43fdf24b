"""LLM batch throughput: the frame-pair labelling workload under an enqueued-token limit, in virtual time.

80,614 requests of 2,617 input tokens (a prompt, two 1024x768 frames and a JSON schema, sized so the
simulator's token model bills exactly 2,617) and 1,199 billed output tokens each, against the
OpenAI Batch API simulator (corral.sim) with an enqueued limit of 40M input tokens, one of the
simulator's documented turnaround models (`default`: in progress median 20 min, sigma 1, a tail of
hours; `heavy`: the same median, sigma 1.5) and 24 h expiry.
Every policy gets its own simulated account with the same settings and the same seed, so the k-th
batch created draws the same turnaround in each, and starts at 00:04 UTC:

1. corral: a campaign with an `openai_batch` backend, run by the real engine (SQLite ledger) on a
   VirtualClock shared with the simulator; time to finish = when the run has recorded every result;
2. cron: their script, a daily tick at 00:04 that submits 33 batches of 300 (failed or expired
   requests go back to the queue at the next tick); time to finish = the last batch's completion;
3. submit-all: every batch of 300 created at once, batches that fail with token_limit_exceeded
   (or are refused at creation) created again at the next poll, every 10 minutes;
4. the Little's-law bound: total input tokens / limit x mean turnaround of a batch (at corral's
   mean batch size; at 300 requests for reference).

For corral it also reports the share of the limit in use hour by hour and over the main phase
(from the first batch after the pilot to the last full-size batch created), and the tail: the
time from the last full-size batch created to the end.

Policies 1-3 talk to the simulator over HTTP, 1 through corral's backend, 2 and 3 through the
official openai SDK. Cost is priced with corral's shipped table (gpt-4o-mini, batch rate).

    python bench/llm_batch_throughput.py [--requests 80614] [--seed 0] [--policies corral,cron,submit-all]
                                         [--turnaround default|heavy|both] [--hedge-after 1.5]

Policies: corral (its defaults), corral-backup / corral-flex / corral-off (hedge.mode set), cron,
submit-all. The simulator takes flex requests for the benchmark's model (OpenAI does not list
gpt-4o-mini for flex; the lane's policy is what is measured).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import struct
import sys
import tempfile
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any

from openai import OpenAI

from corral.llm.pricing import price_for
from corral.sim import TURNAROUND_MODELS, ManualClock, SimConfig, SimServer
from corral.sim.tokens import openai_request_tokens

T0 = 1_700_006_640.0          # 2023-11-15 00:04:00 UTC: the cron tick
DAY = 86_400.0
IN_TOKENS, OUT_TOKENS = 2_617, 1_199
LIMIT = 40_000_000
MODEL = "gpt-4o-mini"
BATCH = 300                   # their batch size (cron and submit-all)
CRON_BATCHES = 33
RESUBMIT_EVERY = 600.0
#: corral's policies: its defaults, and its hedge modes set explicitly
CORRAL_POLICIES: dict[str, dict[str, Any] | None] = {
    "corral": None, "corral-backup": {"mode": "backup"}, "corral-flex": {"mode": "flex"}, "corral-off": {"mode": "off"}}
TERMINAL = ("completed", "failed", "expired", "cancelled")
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["instructions", "descriptions"],
          "properties": {"instructions": {"type": "array", "items": {"type": "string"}, "minItems": 5,
                                          "maxItems": 5},
                         "descriptions": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                                          "maxItems": 2}}}
PROMPT_SEED = ("You see two frames of a robot trajectory, frame k and frame k+1. Write five short imperative "
               "instructions that would take the robot from the first frame to the second, then one description "
               "of each frame. Be concrete about objects, colours and directions. ")


# -- the workload --------------------------------------------------------------------------------------

def png(width: int, height: int, level: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes([level]) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))


def body_for(prompt: str, url_k: str, url_k1: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1400,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "frame_pair_labels", "strict": True, "schema": SCHEMA}},
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": url_k}},
                {"type": "image_url", "image_url": {"url": url_k1}}]}]}


def make_workload(folder: Path, requests: int) -> dict[str, Any]:
    """Frames, frame_pairs.json and prompt.txt; the prompt is sized so a request bills IN_TOKENS."""
    frames = folder / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    urls = []
    for k in range(8):
        data = png(1024, 768, 40 + 20 * k)
        (frames / f"f{k}.png").write_bytes(data)
        urls.append("data:image/png;base64," + __import__("base64").b64encode(data).decode())
    fixed = openai_request_tokens(body_for("", urls[0], urls[1]))
    text = (PROMPT_SEED * 40)[: 4 * (IN_TOKENS - fixed)]
    (folder / "prompt.txt").write_text(text)
    assert openai_request_tokens(body_for(text, urls[0], urls[1])) == IN_TOKENS
    pairs = [{"pair_index": i, "trajectory_id": f"traj_{i // 40:05d}", "frame_k": i % 40, "frame_k1": i % 40 + 1,
              "delta": 1, "frame_k_path": f"frames/f{i % 8}.png", "frame_k1_path": f"frames/f{(i + 1) % 8}.png"}
             for i in range(requests)]
    (folder / "frame_pairs.json").write_text(json.dumps(pairs))
    return {"prompt": text, "urls": urls, "requests": requests}


def jsonl_lines(work: dict[str, Any]) -> list[bytes]:
    """The same requests as corral renders them, as batch input lines (for the baseline policies)."""
    text, urls = work["prompt"], work["urls"]
    return [json.dumps({"custom_id": f"pair-{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": body_for(text, urls[i % 8], urls[(i + 1) % 8])}, separators=(",", ":")).encode()
            for i in range(work["requests"])]


def sim_config(seed: int, turnaround: str) -> SimConfig:
    # gpt-4o-mini is not among the models OpenAI takes flex requests for; the simulator takes them
    # here so that the flex lane is measured on the same workload (billed at the Batch price).
    return SimConfig(seed=seed, turnaround=turnaround, enqueued_token_limit=LIMIT, output_tokens=OUT_TOKENS,
                     keep_input_content=False, retry_after_s=0.01, flex_models=(MODEL,))


def billed(sim: SimServer) -> dict[str, Any]:
    """What the provider charges: tokens of every request it finished, in every batch."""
    tokens_in = tokens_out = 0
    for batch in sim.state.batches.values():
        if batch.failed_at is None:
            counts = batch.counts(batch.end_time)
            tokens_in += counts["input_tokens"]
            tokens_out += counts["output_tokens"]
    flex = sim.summary()["flex"]
    price = price_for(MODEL)
    usd = price.cost(tokens_in, tokens_out) + price.cost(flex["input_tokens"], flex["output_tokens"])
    return {"tokens_in": tokens_in + flex["input_tokens"], "tokens_out": tokens_out + flex["output_tokens"],
            "usd": round(usd, 2), "flex_answers": flex["answered"],
            "flex_usd": round(price.cost(flex["input_tokens"], flex["output_tokens"]), 2)}


def submissions(sim: SimServer) -> dict[str, int]:
    state = sim.state
    return {"batches_created": state.batches_created["openai"],
            "failed_submissions": state.token_limit_failures + state.rejections["token_limit_exceeded"]
            + state.rejections["batch_creation_rate"],
            "failed_token_limit_exceeded": state.token_limit_failures,
            "refused_at_creation": state.rejections["token_limit_exceeded"] + state.rejections["batch_creation_rate"]}


def timeline(sim: SimServer, seconds: float) -> dict[str, Any]:
    """Where the time went: how full the enqueued limit was kept, when the last batch was created,
    how long batches took, how many were cancelled or expired."""
    batches = list(sim.state.batches.values())
    admitted = [b for b in batches if b.admitted and b.failed_at is None]
    end = T0 + seconds
    busy = sum(b.tokens * max(0.0, min(b.end_time, end) - b.valid_at) for b in admitted)
    turnaround = sorted(b.end_time - b.created_at for b in admitted)
    phases = [b.phase(b.end_time) for b in batches]
    hours = max(1, math.ceil(seconds / 3600))
    by_hour = []
    for h in range(hours):
        lo, hi = T0 + h * 3600, min(end, T0 + (h + 1) * 3600)
        held = sum(b.tokens * max(0.0, min(b.end_time, hi) - max(b.valid_at, lo)) for b in admitted)
        by_hour.append(round(held / (LIMIT * (hi - lo)), 2))
    trace = [[round(b.created_at - T0), round(b.valid_at - T0) if b.admitted else None, round(b.end_time - T0),
              b.n, b.tokens, phase] for b, phase in zip(batches, phases)]
    return {"enqueued_share_by_hour": by_hour, "trace": trace,"mean_enqueued_share": round(busy / (LIMIT * seconds), 3),
            "first_admitted_h": round((min(b.valid_at for b in admitted) - T0) / 3600, 2),
            "last_created_h": round((max(b.created_at for b in batches) - T0) / 3600, 2),
            "turnaround_median_min": round(turnaround[len(turnaround) // 2] / 60, 1),
            "turnaround_max_h": round(turnaround[-1] / 3600, 2),
            "cancelled": phases.count("cancelled"), "expired": phases.count("expired")}


def main_phase(sim: SimServer, seconds: float, pilot: int) -> dict[str, Any]:
    """The share of the limit held between the first batch after the pilot and the last full-size
    batch created (at least 90% of the median size of the batches after the pilot), and the tail:
    from that last full-size creation to the end."""
    batches = sorted(sim.state.batches.values(), key=lambda b: b.created_at)
    main = batches[1:] if pilot and len(batches) > 1 else batches
    sizes = sorted(b.n for b in main)
    full = [b for b in main if b.n >= 0.9 * sizes[len(sizes) // 2]]
    lo, hi = main[0].created_at, full[-1].created_at
    admitted = [b for b in batches if b.admitted and b.failed_at is None]
    held = sum(b.tokens * max(0.0, min(b.end_time, hi) - max(b.valid_at, lo)) for b in admitted)
    # What the scheduler counts as in flight: batches from their creation, validation included.
    sent = sum(b.tokens * max(0.0, min(b.end_time, hi) - max(b.created_at, lo)) for b in admitted)
    span = LIMIT * (hi - lo)
    return {"main_phase_h": [round((lo - T0) / 3600, 2), round((hi - T0) / 3600, 2)],
            "main_phase_share": round(held / span, 3) if hi > lo else None,
            "main_phase_share_with_validating": round(sent / span, 3) if hi > lo else None,
            "tail_h": round((T0 + seconds - hi) / 3600, 2), "full_size_requests": sizes[len(sizes) // 2]}


def last_end(sim: SimServer) -> float:
    return max(b.end_time for b in sim.state.batches.values() if b.phase(b.end_time) == "completed")


# -- policy 1: corral ------------------------------------------------------------------------------------

def run_corral(folder: Path, seed: int, requests: int, pilot: int | None, turnaround: str,
               hedge: dict[str, Any] | None = None, policy: str = "corral",
               straggler_after: float | None = None) -> dict[str, Any]:
    from corral.api import Campaign
    from corral.sim.clock import SteppedClock

    from corral.backends.llm_flex import FlexPool

    # Flex requests and answers travel between threads in real time: each step of the clock waits
    # until every flex request out is waiting at the simulator (none on its way there or back).
    clock = SteppedClock(start=T0)
    sim = SimServer(sim_config(seed, turnaround), clock=clock)
    clock.settle = lambda: FlexPool.sending() <= sim.openai.sync.waiting
    url = sim.start()
    os.environ["OPENAI_API_KEY"] = "sim"
    backend: dict[str, Any] = {"type": "openai_batch", "base_url": url + "/v1", "enqueued_token_limit": LIMIT,
                               "expected_output_tokens": OUT_TOKENS, "model": MODEL}
    if pilot is not None:
        backend["pilot"] = pilot
    if hedge:
        backend["hedge"] = hedge
    if straggler_after is not None:
        backend["straggler_after"] = straggler_after
    spec = {"name": "frame-labels", "items": {"from": "frame_pairs.json"},
            "stages": {"label": {"backend": "openai", "retries": {"max": 3},
                                 "request": _template()}},
            "backends": {"openai": backend}}
    import yaml

    (folder / "corral.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.perf_counter()
    campaign = Campaign.load(folder / "corral.yaml")
    plan = campaign.check()
    projection = _projection(plan)
    run, _ = campaign.start(clock=clock)
    deadline = T0 + 30 * DAY
    report = run.run(clock=clock, max_interval=60.0, should_stop=lambda: clock.now() > deadline)
    finished_at = clock.now()
    status = run.status()
    wall = time.perf_counter() - started
    sizes = [b.n for b in sim.state.batches.values()]
    result = {"policy": policy, "hedge": status["llm"].get("label", {}) and {
                  k: v for k, v in status["llm"]["label"].items() if k.startswith(("backup", "flex"))},
              "seconds": finished_at - T0, "last_batch_end": last_end(sim) - T0,
              "timeline": timeline(sim, finished_at - T0),
              "main_phase": main_phase(sim, finished_at - T0, 20 if pilot is None else pilot),
              "finished": bool(report.finished), "done": status["totals"].get("done"),
              "failed": status["totals"].get("failed"), **submissions(sim),
              "mean_batch_requests": sum(sizes) / len(sizes), "projected_usd": projection.get("cost_usd"),
              "projected_tokens_in": projection.get("tokens_in"), "projected_seconds": projection.get("seconds_to_finish"),
              "billed": billed(sim), "recorded": _recorded(status), "wall_s": round(wall, 1),
              "transport": "HTTP, corral's openai_batch backend (official SDK)"}
    sim.stop()
    return result


def _template() -> dict[str, Any]:
    body = body_for("{{ file_text('prompt.txt') }}", "{{ image_data_url(item.frame_k_path) }}",
                    "{{ image_data_url(item.frame_k1_path) }}")
    body.pop("model")
    return body


def _projection(plan: dict[str, Any]) -> dict[str, Any]:
    for stage in (plan.get("stages") or {}).values():
        for key in ("llm", "projection"):
            if isinstance(stage.get(key), dict):
                return stage[key]
    return {}


def _recorded(status: dict[str, Any]) -> dict[str, Any]:
    """Tokens and cost the run recorded in its ledger (from billed usage)."""
    usage = (status.get("usage") or {}).get("label") or {}
    return {"tokens_in": usage.get("tokens_in"), "tokens_out": usage.get("tokens_out"),
            "usd": round(usage["cost"], 2) if usage.get("cost") is not None else None}


# -- policy 2: their cron script -----------------------------------------------------------------------

def run_cron(lines: list[bytes], seed: int, turnaround: str) -> dict[str, Any]:
    clock = ManualClock(T0)
    sim = SimServer(sim_config(seed, turnaround), clock=clock)
    client = OpenAI(base_url=sim.start() + "/v1", api_key="sim", max_retries=5)
    queue: deque[int] = deque(range(len(lines)))
    active: dict[str, list[int]] = {}
    ticks = 0
    while queue or active:
        tick = T0 + ticks * DAY
        clock.advance(tick - clock.now())
        for batch_id, members in list(active.items()):
            batch = client.batches.retrieve(batch_id)
            if batch.status in TERMINAL:
                del active[batch_id]
                queue.extendleft(reversed(_unfinished(client, batch, members)))
        for _ in range(CRON_BATCHES):
            if not queue:
                break
            members = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
            batch = _create(client, lines, members)
            if batch is None:
                queue.extendleft(reversed(members))
                break
            active[batch.id] = members
        ticks += 1
        if ticks > 60:
            raise RuntimeError("cron policy did not finish in 60 days")
    result = {"policy": "cron (33 x 300 at 00:04 daily)", "seconds": last_end(sim) - T0, "ticks": ticks,
              "timeline": timeline(sim, last_end(sim) - T0),
              **submissions(sim), "billed": billed(sim), "transport": "HTTP, official openai SDK"}
    sim.stop()
    return result


# -- policy 3: submit everything at once ------------------------------------------------------------------

def run_submit_all(lines: list[bytes], seed: int, turnaround: str) -> dict[str, Any]:
    clock = ManualClock(T0)
    sim = SimServer(sim_config(seed, turnaround), clock=clock)
    client = OpenAI(base_url=sim.start() + "/v1", api_key="sim", max_retries=5)
    groups = [list(range(i, min(i + BATCH, len(lines)))) for i in range(0, len(lines), BATCH)]
    files = [_upload(client, lines, members) for members in groups]
    waiting = list(range(len(groups)))            # groups with no live batch
    active: dict[str, int] = {}
    polls = 0
    while waiting or active:
        still = []
        for group in waiting:
            batch = _create_from(client, files[group])
            if batch is None:
                still.append(group)
            else:
                active[batch.id] = group
        waiting = still
        clock.advance(RESUBMIT_EVERY)
        polls += 1
        for batch_id, group in list(active.items()):
            batch = client.batches.retrieve(batch_id)
            if batch.status not in TERMINAL:
                continue
            del active[batch_id]
            if batch.status != "completed":
                rest = _unfinished(client, batch, groups[group])
                if rest and rest != groups[group]:
                    groups.append(rest)
                    files.append(_upload(client, lines, rest))
                    waiting.append(len(groups) - 1)
                elif rest:
                    waiting.append(group)
        if polls > 30 * 144:
            raise RuntimeError("submit-all policy did not finish in 30 days")
    result = {"policy": "submit-all, resubmit on token_limit_exceeded every 10 min", "seconds": last_end(sim) - T0,
              "polls": polls, "timeline": timeline(sim, last_end(sim) - T0), **submissions(sim), "billed": billed(sim), "transport": "HTTP, official openai SDK"}
    sim.stop()
    return result


def _upload(client: OpenAI, lines: list[bytes], members: list[int]) -> str:
    data = b"\n".join(lines[i] for i in members) + b"\n"
    return client.files.create(file=("batch.jsonl", data), purpose="batch").id


def _create_from(client: OpenAI, file_id: str):
    import openai

    try:
        return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    except (openai.BadRequestError, openai.RateLimitError):
        return None


def _create(client: OpenAI, lines: list[bytes], members: list[int]):
    return _create_from(client, _upload(client, lines, members))


def _unfinished(client: OpenAI, batch: Any, members: list[int]) -> list[int]:
    """Requests of an ended batch that did not succeed."""
    if batch.status == "completed" and not batch.request_counts.failed:
        return []
    if batch.status == "failed" or not batch.output_file_id:
        return list(members)
    done = {json.loads(line)["custom_id"] for line in client.files.content(batch.output_file_id).text.splitlines()
            if line.strip()}
    return [i for i in members if f"pair-{i}" not in done]


# -- report ----------------------------------------------------------------------------------------------

def fmt_time(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds / DAY:.2f} d)"


#: time to finish over the bound that corral should stay under, per turnaround model
CORRAL_TARGET = {"default": 1.25, "heavy": 1.4}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80_614)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default="corral,cron,submit-all")
    parser.add_argument("--turnaround", choices=[*TURNAROUND_MODELS, "both"], default="default",
                        help="the simulator's turnaround model (both: one run of every policy per model)")
    parser.add_argument("--pilot", type=int, default=None, help="corral's pilot batch size (default: its default)")
    parser.add_argument("--straggler-after", type=float, default=None,
                        help="straggler_after for corral's policies (default: corral's)")
    parser.add_argument("--flex-concurrency", type=int, default=None,
                        help="hedge.flex_concurrency for the corral-flex policy (default: corral's)")
    parser.add_argument("--hedge-after", type=float, default=None,
                        help="hedge.after for the corral-backup and corral-flex policies (default: corral's)")
    parser.add_argument("--max-extra-cost", type=float, default=None,
                        help="hedge.max_extra_cost for the corral-backup and corral-flex policies (default: corral's)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results here, with a row per batch (created, admitted, ended, "
                             "requests, tokens, final status; seconds from the start)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (the runs' ledgers and logs) instead of a temporary one")
    args = parser.parse_args()
    policies = args.policies.split(",")
    models = list(TURNAROUND_MODELS) if args.turnaround == "both" else [args.turnaround]
    out: dict[str, Any] = {"requests": args.requests, "seed": args.seed, "limit": LIMIT, "model": MODEL,
                           "tokens_per_request": [IN_TOKENS, OUT_TOKENS], "turnaround": {}}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else
          tempfile.TemporaryDirectory(prefix="corral-llm-bench-")) as tmp:
        started = time.perf_counter()
        work = make_workload(Path(tmp), args.requests)
        lines = jsonl_lines(work) if set(policies) - set(CORRAL_POLICIES) else []
        print(f"workload: {args.requests:,} requests ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        for model in models:
            out["turnaround"][model] = run_model(Path(tmp), model, policies, lines, args)
    for model, part in out["turnaround"].items():
        print_table(model, part, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    brief = json.loads(json.dumps(out))
    for part in brief["turnaround"].values():
        for result in part["results"]:
            result["timeline"].pop("trace", None)     # per-batch rows: only in --json
    print(json.dumps(brief, indent=2))
    return 0


def run_model(folder: Path, model: str, policies: list[str], lines: list[bytes], args: Any) -> dict[str, Any]:
    results = []
    for policy in policies:
        started = time.perf_counter()
        if policy in CORRAL_POLICIES:
            run_dir = folder / f"{policy}-{model}"
            run_dir.mkdir(exist_ok=True)
            for name in ("frames", "prompt.txt", "frame_pairs.json"):
                if not (run_dir / name).exists():
                    (run_dir / name).symlink_to(folder / name)
            hedge = dict(CORRAL_POLICIES[policy] or {})
            if hedge and args.hedge_after is not None:
                hedge["after"] = args.hedge_after
            if hedge and args.max_extra_cost is not None:
                hedge["max_extra_cost"] = args.max_extra_cost
            if hedge.get("mode") == "flex" and args.flex_concurrency is not None:
                hedge["flex_concurrency"] = args.flex_concurrency
            result = run_corral(run_dir, args.seed, args.requests, args.pilot, model, hedge or None, policy,
                                args.straggler_after)
        elif policy == "cron":
            result = run_cron(lines, args.seed, model)
        elif policy == "submit-all":
            result = run_submit_all(lines, args.seed, model)
        else:
            raise SystemExit(f"unknown policy {policy!r}")
        result["key"] = policy
        result.setdefault("wall_s", round(time.perf_counter() - started, 1))
        print(f"[{model}] {result['policy']}: {fmt_time(result['seconds'])}, {result['batches_created']} batches, "
              f"{result['failed_submissions']} failed submissions ({result['wall_s']} s)", file=sys.stderr)
        results.append(result)
    total_in = args.requests * IN_TOKENS
    config = sim_config(args.seed, model)
    by = {r["key"]: r for r in results}
    first = next((by[name] for name in CORRAL_POLICIES if name in by), None)
    size = first["mean_batch_requests"] if first else BATCH
    bound = {"mean_batch_requests": round(size, 1), "mean_turnaround_s": round(config.turnaround.mean(round(size))),
             "seconds": total_in / LIMIT * config.turnaround.mean(round(size)),
             "seconds_at_300": total_in / LIMIT * config.turnaround.mean(BATCH)}
    ratios = {}
    for name in CORRAL_POLICIES:
        if name in by and name != "corral":
            ratios[f"{name} / bound"] = by[name]["seconds"] / bound["seconds"]
    if "corral" in by:
        ratios["corral / bound"] = by["corral"]["seconds"] / bound["seconds"]
        if "cron" in by:
            ratios["cron / corral"] = by["cron"]["seconds"] / by["corral"]["seconds"]
        if "submit-all" in by:
            ratios["submit-all / corral"] = by["submit-all"]["seconds"] / by["corral"]["seconds"]
    price = price_for(MODEL)
    return {"results": results, "bound": bound, "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "corral_target": CORRAL_TARGET.get(model),
            "hand_table_usd": round(price.cost(total_in, args.requests * OUT_TOKENS), 2)}


def print_table(model: str, part: dict[str, Any], out: dict[str, Any]) -> None:
    print(f"\nturnaround model: {model}", file=sys.stderr)
    rows = [("policy", "time to finish", "batches", "failed submissions", "billed USD", "projected USD")]
    for r in part["results"]:
        rows.append((r["policy"], fmt_time(r["seconds"]), str(r["batches_created"]), str(r["failed_submissions"]),
                     f"{r['billed']['usd']:.2f}",
                     f"{r['projected_usd']:.2f}" if r.get("projected_usd") is not None
                     else f"{part['hand_table_usd']:.2f} (hand table)"))
    b = part["bound"]
    label = (f"Little's law bound (batches of {b['mean_batch_requests']:.0f}, mean turnaround "
             f"{b['mean_turnaround_s'] / 60:.1f} min)")
    rows.append((label, fmt_time(b["seconds"]), "-", "-", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), file=sys.stderr)
    for name, value in part["ratios"].items():
        target = f" (target <= {part['corral_target']:g})" if name == "corral / bound" and part["corral_target"] else ""
        print(f"{name}: {value:.2f}{target}", file=sys.stderr)
    for corral in (r for r in part["results"] if r["key"] in CORRAL_POLICIES):
        phase = corral["main_phase"]
        hedged = corral.get("hedge") or {}
        print(f"{corral['key']}: share of the limit in use by hour {corral['timeline']['enqueued_share_by_hour']}; "
              f"main phase {phase['main_phase_h'][0]}-{phase['main_phase_h'][1]} h at {phase['main_phase_share']} "
              f"({phase['main_phase_share_with_validating']} counting validating batches); "
              f"tail {phase['tail_h']} h; hedges {hedged}; billed {corral['billed']}", file=sys.stderr)

if __name__ == "__main__":
    sys.exit(main())
