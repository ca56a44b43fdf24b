"""The submitit side of ``bench/slurm_submit.py``; runs with an interpreter that has submitit.

Submits N no-op calls with ``SlurmExecutor.map_array``, in arrays of at most ``--chunk`` calls:
submitit sends one map_array as one array ``0-(n-1)``, and sbatch refuses indexes at or above the
cluster's MaxArraySize. With ``--wait`` it then waits for every result with ``job.result()``
(submitit's own polling: a shared sacct watcher). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import submitit


def noop(i: int) -> int:
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--partition", default="debug")
    parser.add_argument("--job-name", default="bench-submitit")
    parser.add_argument("--parallelism", type=int, default=256)
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()

    executor = submitit.SlurmExecutor(folder=args.folder)
    executor.update_parameters(partition=args.partition, time=10, job_name=args.job_name,
                               array_parallelism=args.parallelism)
    started = time.perf_counter()
    jobs = []
    arrays = []
    for start in range(0, args.tasks, args.chunk):
        batch = executor.map_array(noop, range(start, min(args.tasks, start + args.chunk)))
        jobs.extend(batch)
        arrays.append(batch[0].job_id.split("_")[0])
    submit_s = time.perf_counter() - started
    out = {"submitit_version": submitit.__version__, "tasks": args.tasks, "chunk": args.chunk,
           "map_array_calls": len(arrays), "arrays": arrays, "submit_s": round(submit_s, 3),
           "submitted_at": time.time()}
    if args.wait:
        results = [job.result() for job in jobs]
        if results != list(range(args.tasks)):
            raise SystemExit("submitit returned wrong results")
        out["finish_s"] = round(time.perf_counter() - started, 3)
        out["watcher_sacct_calls"] = submitit.SlurmJob.watcher.num_calls
    print(json.dumps(out))


if __name__ == "__main__":
    main()
