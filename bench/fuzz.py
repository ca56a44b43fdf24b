"""The fuzz suite's long mode: many cases in process, counts per category and exit code, and the distinct
failure signatures (exception type + the innermost corral frame of .corral/crash.log).

    python bench/fuzz.py --cases 20000 --seed 1
    python bench/fuzz.py --cases 200 --processes     # real `python -m corral` processes (slower)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fuzz_runner import Sandboxes, run_as_process, run_in_process, summary  # noqa: E402
from support.fuzzing import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    parser.add_argument("--processes", action="store_true", help="run each case as a real process")
    parser.add_argument("--category", action="append", help="only these categories (repeatable)")
    parser.add_argument("--show", type=int, default=10, help="failing cases to print in full")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes of failing cases")
    options = parser.parse_args()
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    cases = [c for c in generate(seed, options.cases) if not options.category or c.category in options.category]
    runner = run_as_process if options.processes else run_in_process
    root = Path(tempfile.mkdtemp(prefix="corral-fuzz-"))
    started = time.monotonic()
    sandboxes = Sandboxes(root)
    outcomes = []
    for index, case in enumerate(cases, 1):
        outcomes.append(runner(case, sandboxes))
        if index % 500 == 0:
            print(f"{index} cases, {time.monotonic() - started:.0f}s", file=sys.stderr)
    print(f"seed {seed}: {len(cases)} cases in {time.monotonic() - started:.1f}s "
          f"({'processes' if options.processes else 'in process'}); sandboxes under {root}")
    print(summary(outcomes, first=options.show))
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
