"""examples/llm-batch as its README runs it: frames made with Pillow, the simulator started with
`corral sim serve`, `corral check`, `corral run` and `corral status` on the smoke preset. What it
wrote is checked against the pairs file and against what the simulator saw and billed."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import corral_cli
from support.readme import copy_example, run_readme_block

pytest.importorskip("PIL", reason="the example draws its frames with Pillow (pip install 'corral[llm]')")
pytest.importorskip("openai", reason="the example needs the llm extra (pip install 'corral[llm]')")
pytest.importorskip("jinja2", reason="the example needs the llm extra (pip install 'corral[llm]')")

pytestmark = pytest.mark.usefixtures("campaign_ledger")

# gpt-5-mini at the batch price, USD per million tokens, as the researchers' notes give it
INPUT_RATE, OUTPUT_RATE = 0.125, 1.00
FIELDS = ("instructions", "what_changed", "frame1_description", "frame2_description")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(port: int, path: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": "Bearer sim"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def provider_batches(port: int) -> list[dict]:
    """Every batch the simulator holds, with the custom_ids its output file answered."""
    batches = json.loads(api(port, "/v1/batches?limit=100"))["data"]
    for batch in batches:
        lines = api(port, f"/v1/files/{batch['output_file_id']}/content").decode().splitlines()
        batch["answers"] = {line["custom_id"]: line["response"]["body"] for line in map(json.loads, lines)}
    return batches


def stop(folder: Path) -> None:
    pid_file = folder / "sim.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, ledger_kind, module_ledger):
    """The README's smoke block, run once per ledger; the simulator's batches read before it stops."""
    env = {"OPENAI_API_KEY": "sim", "SIM_PORT": str(free_port())}
    folder = copy_example("llm-batch", tmp_path_factory.mktemp(f"llm-{ledger_kind}"))
    try:
        results = run_readme_block(folder, folder / "README.md", "smoke", env=env, timeout=240)
        batches = provider_batches(int(env["SIM_PORT"]))
        run_readme_block(folder, folder / "README.md", "stop", env=env)
    finally:
        stop(folder)
    check = json.loads(corral_cli(folder, "check", "+preset=smoke", "--json", env=env, check=0).stdout)
    status = json.loads(corral_cli(folder, "status", "+preset=smoke", "--json", env=env, check=0).stdout)
    labels = json.loads(corral_cli(folder, "export", "+preset=smoke", "--stage", "label", "-f", "json",
                                   env=env, check=0).stdout)
    return {"folder": folder, "results": results, "batches": batches, "check": check, "status": status,
            "labels": labels}


def test_every_pair_is_in_all_instructions_with_its_metadata_and_the_four_fields(smoke_run):
    folder = smoke_run["folder"]
    pairs = json.loads((folder / "sampled_pairs_smoke" / "frame_pairs.json").read_text())
    merged = json.loads((folder / "batch_run_smoke" / "final" / "all_instructions.json").read_text())
    assert len(pairs) == 48
    assert [entry["pair_index"] for entry in merged] == [pair["pair_index"] for pair in pairs]
    # the labels are the simulator's answers to each pair's request, matched through custom_id
    answers = {custom_id: json.loads(body["choices"][0]["message"]["content"])
               for batch in smoke_run["batches"] for custom_id, body in batch["answers"].items()}
    task_of_pair = {int(record["item_key"]): record["task_id"] for record in smoke_run["labels"]}
    answer_of_task = {custom_id.rsplit("-", 1)[1]: answer for custom_id, answer in answers.items()}
    for pair, entry in zip(pairs, merged):
        assert {key: entry[key] for key in pair} == pair
        assert set(entry) == set(pair) | set(FIELDS)
        assert len(entry["instructions"]) == 5 and all(isinstance(t, str) and t for t in entry["instructions"])
        assert all(isinstance(entry[name], str) and entry[name] for name in FIELDS[1:])
        answer = answer_of_task[task_of_pair[pair["pair_index"]]]
        assert entry["instructions"] == [text.strip() for text in answer["instructions"]]
        assert entry["what_changed"] == answer["what_changed"].strip()
    assert "48 pairs merged" in smoke_run["results"][-1].stdout


def test_the_frames_are_jpegs_of_a_cameras_size(smoke_run):
    from PIL import Image

    frames = sorted((smoke_run["folder"] / "sampled_pairs_smoke").glob("traj_*/frames/*.jpg"))
    assert len(frames) >= 48
    for frame in frames:
        assert 150_000 <= frame.stat().st_size <= 600_000, (frame, frame.stat().st_size)
        with Image.open(frame) as image:
            assert image.format == "JPEG" and image.size == (1280, 720)


def test_every_batch_file_stays_under_the_smoke_limits_and_several_are_packed(smoke_run):
    folder = smoke_run["folder"]
    preset = yaml.safe_load((folder / "preset" / "smoke.yaml").read_text())["backends"]["openai"]
    sim_limits = yaml.safe_load((folder / "sim.yaml").read_text())["limits"]
    max_bytes, max_requests = preset["max_bytes_per_batch"], preset["max_requests_per_batch"]
    # the simulator fails a file over these in validation, as OpenAI does over 200 MB / 50,000
    assert (sim_limits["openai_max_file_bytes"], sim_limits["openai_max_requests"]) == (max_bytes, max_requests)
    batches = smoke_run["batches"]
    assert all(batch["status"] == "completed" for batch in batches), [b["status"] for b in batches]
    assert sum(batch["request_counts"]["total"] for batch in batches) == 48
    assert len(batches) >= 48 // max_requests + 1
    pairs = {pair["pair_index"]: pair for pair in
             json.loads((folder / "sampled_pairs_smoke" / "frame_pairs.json").read_text())}
    pair_of_task = {record["task_id"]: int(record["item_key"]) for record in smoke_run["labels"]}
    base = folder / "sampled_pairs_smoke"
    largest = (0, 0)
    for batch in batches:
        assert batch["request_counts"]["total"] <= max_requests
        # a request line holds at least its two frames in base64
        images = sum(len(base64.b64encode((base / pairs[pair_of_task[cid.rsplit("-", 1)[1]]][path]).read_bytes()))
                     for cid in batch["answers"] for path in ("frame_k_path", "frame_k_d_path"))
        assert images <= max_bytes
        largest = max(largest, (images, batch["request_counts"]["total"]))
    # the byte limit decides some batches: fewer requests than allowed, though more were waiting
    # (besides the pilot and the last one); the request limit decides others
    counts = [b["request_counts"]["total"] for b in batches]
    assert counts.count(max_requests) >= 1 and sum(1 for n in counts if n < max_requests) >= 3, counts
    print(f"largest batch: {largest[1]} requests, at least {largest[0]:,} bytes of frames")


def test_the_check_projection_matches_the_simulators_bill(smoke_run):
    check_output = next(r.stdout for r in smoke_run["results"] if r.command.startswith("corral check"))
    assert re.search(r"input\s+\$0\.125/1M\s+~[\d.,]+K\s+~\$0\.0\d+", check_output), check_output
    assert re.search(r"output\s+\$1\.00/1M\s+~[\d.,]+K\s+~\$0\.0\d+", check_output), check_output
    projection = smoke_run["check"]["stages"]["label"]["llm"]
    table = {row["type"]: row for row in projection["cost_by_type"]}
    assert table["input"]["cost_usd"] == pytest.approx(table["input"]["tokens"] * INPUT_RATE / 1e6, abs=1e-4)
    assert table["output"]["cost_usd"] == pytest.approx(table["output"]["tokens"] * OUTPUT_RATE / 1e6, abs=1e-4)
    billed_in = sum(batch["usage"]["input_tokens"] for batch in smoke_run["batches"])
    billed_out = sum(batch["usage"]["output_tokens"] for batch in smoke_run["batches"])
    bill = billed_in * INPUT_RATE / 1e6 + billed_out * OUTPUT_RATE / 1e6
    spent = smoke_run["status"]["usage"]["label"]["cost"]
    assert spent == pytest.approx(bill, rel=1e-3)
    ratio = table["total"]["cost_usd"] / bill
    assert 0.9 <= ratio <= 1.1, (table, billed_in, billed_out)
    print(f"projected ${table['total']['cost_usd']:.4f} ({table['input']['tokens']:,} in, "
          f"{table['output']['tokens']:,} out) vs billed ${bill:.4f} ({billed_in:,} in, {billed_out:,} out): "
          f"ratio {ratio:.3f}")


def test_the_raw_answers_of_every_batch_are_kept_in_the_run_folder(smoke_run):
    raw = list((smoke_run["folder"] / ".corral" / "runs").glob("*/llm/raw/label/*.jsonl.gz"))
    kept = [json.loads(line) for path in raw for line in gzip.decompress(path.read_bytes()).splitlines()]
    assert len(raw) == len(smoke_run["batches"]) and len(kept) == 48
