"""Ledger scale: a 1,000,000-item grid on SQLite.

Reports the time to create the run (items + tasks written), ``corral status`` (in-process API call
and the whole CLI command), a tick with nothing to do, ``corral export`` to JSONL, and the peak
memory (max RSS) of each step. Targets: create <= 20 s, status <= 0.5 s, idle tick <= 0.5 s,
peak RSS <= 1 GB.

    python bench/ledger_scale.py [--items 1000000]

The idle tick is measured on the run after every task has been marked done directly in the
database (running a million tasks is not what this measures).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

STEP = textwrap.dedent("""\
    import json, resource, sys, time
    import corral
    step, path = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    campaign = corral.open(path)
    if step == "create":
        run, created = campaign.start()
        assert created
        out = {"items": run.row["item_count"]}
    elif step == "status":
        run = campaign.run()
        t0 = time.perf_counter()
        status = run.status()
        out = {"done": status["totals"]["done"]}
    elif step == "finish":
        from sqlalchemy import text
        run = campaign.run()
        with run.ledger.write() as conn:
            conn.execute(text("UPDATE tasks SET state='done', attempts=1, result=:res WHERE run_id=:r"),
                         {"r": run.id, "res": json.dumps({"ok": True})})
        out = {}
    elif step == "tick":
        run = campaign.run()
        run.tick()  # first tick after the bulk update records the run as finished
        t0 = time.perf_counter()
        report = run.tick()
        out = {"status": report.status}
    out["seconds"] = time.perf_counter() - t0
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
""")


def python_step(step: str, campaign: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, step, str(campaign)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and max RSS (MB) of one corral command."""
    wrapper = ("import resource, runpy, sys, time; t=time.perf_counter(); sys.argv=['corral']+sys.argv[1:];\n"
               "try:\n    runpy.run_module('corral', run_name='__main__')\nexcept SystemExit:\n    pass\n"
               "sys.stderr.write('\\nBENCH %f %f\\n' % (time.perf_counter()-t, "
               "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *args], cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    line = [l for l in out.stderr.splitlines() if l.startswith("BENCH ")][-1]
    return wall, float(line.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    side = round(args.items ** 0.25)
    axes = [side, side, side, math.ceil(args.items / side**3)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tasks.py").write_text("def noop(item, ctx):\n    return {}\n")
        campaign = folder / "corral.yaml"
        campaign.write_text(textwrap.dedent(f"""\
            name: scale
            items:
              grid:
                a: {{range: {axes[0]}}}
                b: {{range: {axes[1]}}}
                c: {{range: {axes[2]}}}
                d: {{range: {axes[3]}}}
            stages:
              work:
                call: tasks:noop
            """))
        results: dict[str, float] = {}
        create = python_step("create", campaign)
        results.update(items=create["items"], create_s=create["seconds"], create_rss_mb=create["max_rss_mb"])
        status = python_step("status", campaign)
        results.update(status_api_s=status["seconds"], status_rss_mb=status["max_rss_mb"])
        results["status_cli_s"], results["status_cli_rss_mb"] = cli(["status", "--json", "corral.yaml"], folder)
        python_step("finish", campaign)
        tick = python_step("tick", campaign)
        results.update(idle_tick_s=tick["seconds"], tick_rss_mb=tick["max_rss_mb"])
        results["idle_tick_cli_s"], _ = cli(["tick", "corral.yaml"], folder)
        results["export_jsonl_s"], results["export_rss_mb"] = cli(
            ["export", "corral.yaml", "--format", "jsonl", "-o", str(folder / "out.jsonl")], folder)
        lines = sum(1 for _ in open(folder / "out.jsonl"))
        assert lines == create["items"], (lines, create["items"])
        results["ledger_mb"] = (folder / ".corral" / "ledger.db").stat().st_size / 2**20
    results["peak_rss_mb"] = max(v for k, v in results.items() if k.endswith("rss_mb"))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=2))
    print(f"create {results['create_s']:.1f} s (<= 20), status {results['status_api_s']:.3f} s in-process / "
          f"{results['status_cli_s']:.2f} s CLI (<= 0.5), idle tick {results['idle_tick_s']:.3f} s (<= 0.5), "
          f"export {results['export_jsonl_s']:.1f} s, peak RSS {results['peak_rss_mb']:.0f} MB (<= 1024)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
