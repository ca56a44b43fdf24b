"""Local backend throughput, in one run on one machine.

(a) N tasks of a ``call:`` function that burns about 5 ms of CPU, through ``corral run`` (a
    subprocess, start-up and ledger included) vs ``multiprocessing.Pool.map`` of the same function
    with the same number of workers. Reported as a wall-time ratio (target <= 1.3).
(b) N no-op tasks through ``corral run``: tasks per second with every result durably recorded.

    python bench/local_throughput.py [--tasks 10000] [--workers 2] [--ledger URL]

``--ledger`` records into that ledger (an empty PostgreSQL database, say) instead of the SQLite file
beside each campaign.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from burn import burn, BURN_SECONDS  # noqa: E402


def campaign(folder: Path, tasks: int, workers: int, function: str) -> Path:
    (folder / "burn.py").write_text((HERE / "burn.py").read_text())
    path = folder / "corral.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: throughput
        items:
          grid:
            i: {{range: [0, {tasks}]}}
        stages:
          work:
            call: burn:{function}
        backends:
          local:
            workers: {workers}
        """))
    return path


def corral_run(folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "corral", "run", "-q", "corral.yaml"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def verify(folder: Path, tasks: int) -> None:
    out = subprocess.run([sys.executable, "-m", "corral", "status", "--json", "corral.yaml"], cwd=folder,
                         check=True, capture_output=True, text=True).stdout
    done = json.loads(out)["stages"]["work"]["done"]
    if done != tasks:
        raise SystemExit(f"only {done} of {tasks} tasks done")


def pool_map(tasks: int, workers: int) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(burn, range(tasks))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ledger", help="ledger URL for every corral command (default: SQLite beside the campaign)")
    args = parser.parse_args()
    if args.ledger:
        os.environ["CORRAL_LEDGER"] = args.ledger
    results = {"tasks": args.tasks, "workers": args.workers, "burn_ms": BURN_SECONDS * 1000,
               "cpus": os.cpu_count(), "ledger": "postgresql" if args.ledger else "sqlite"}
    with tempfile.TemporaryDirectory() as tmp:
        a = Path(tmp) / "burn"
        a.mkdir()
        campaign(a, args.tasks, args.workers, "burn")
        pool_s = pool_map(args.tasks, args.workers)
        corral_s = corral_run(a)
        verify(a, args.tasks)
        b = Path(tmp) / "noop"
        b.mkdir()
        campaign(b, args.tasks, args.workers, "noop")
        noop_s = corral_run(b)
        verify(b, args.tasks)
    results.update(pool_map_s=round(pool_s, 2), corral_s=round(corral_s, 2),
                   ratio=round(corral_s / pool_s, 3), noop_s=round(noop_s, 2),
                   noop_tasks_per_s=round(args.tasks / noop_s, 1))
    print(json.dumps(results, indent=2))
    print(f"(a) {args.tasks} x {BURN_SECONDS * 1000:.0f} ms CPU, {args.workers} workers: corral {corral_s:.2f} s, "
          f"Pool.map {pool_s:.2f} s, ratio {corral_s / pool_s:.2f} (target <= 1.3)", file=sys.stderr)
    print(f"(b) {args.tasks} no-op tasks: {noop_s:.2f} s, {args.tasks / noop_s:.0f} tasks/s recorded",
          file=sys.stderr)


if __name__ == "__main__":
    main()
