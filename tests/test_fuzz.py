"""Fuzz: thousands of hostile campaign files, overrides, options and ledger URLs through the CLI.

Each case must exit 0, 1 or 2 (never 3, an internal error), print no traceback, create no ledger
when it exits 2, and write nothing outside its campaign folder but the paths its command line
names. Seeded: CORRAL_FUZZ_SEED (default 1, or `random`) replays a run (the seed is printed on failure), CORRAL_FUZZ_CASES
sets how many cases. The long mode is bench/fuzz.py.
"""

from __future__ import annotations

import os
import random

import pytest
from support.fuzz_runner import run_as_process, run_in_process, Sandboxes, summary
from support.fuzzing import generate

pytestmark = pytest.mark.slow  # `make test` runs it (only "slurm" is run apart)

CASES = int(os.environ.get("CORRAL_FUZZ_CASES", "1200"))
PROCESS_SAMPLE = int(os.environ.get("CORRAL_FUZZ_PROCESS_SAMPLE", "16"))
# A fixed seed keeps CI reproducible; bench/fuzz.py explores new seeds (CORRAL_FUZZ_SEED=random here too).
_SEED_GIVEN = os.environ.get("CORRAL_FUZZ_SEED", "1")
SEED = random.randrange(2**32) if _SEED_GIVEN == "random" else int(_SEED_GIVEN)

# Classes whose fixes are made on other branches (output files, ledger locations): a case whose label
# holds one of these is run and counted but not asserted on. Empty this once those branches are merged.
KNOWN_ELSEWHERE: set[str] = set()


# Internal errors the fuzz suite found that are not closed yet, by signature (exception type and innermost
# corral frame, see bench/fuzz.py): listed so that a new signature fails the suite. Remove a line with its fix.
NOT_YET_FIXED: set[str] = set()


def excused(outcome) -> bool:
    return (any(fragment in outcome.case.label for fragment in KNOWN_ELSEWHERE)
            or outcome.signature in NOT_YET_FIXED)


@pytest.fixture(scope="module")
def cases():
    return generate(SEED, CASES)


def _report(outcomes, what: str) -> str:
    failed = [o for o in outcomes if o.failed and not excused(o)]
    return (f"{len(failed)} of {len(outcomes)} {what} failed; replay with CORRAL_FUZZ_SEED={SEED} "
            f"CORRAL_FUZZ_CASES={CASES}\n" + summary(failed or outcomes))


def test_hostile_input_never_ends_in_an_internal_error(cases, tmp_path) -> None:
    sandboxes = Sandboxes(tmp_path)
    outcomes = [run_in_process(case, sandboxes) for case in cases]
    print(_report(outcomes, "cases"))
    assert not [o for o in outcomes if o.failed and not excused(o)], _report(outcomes, "cases")


def test_a_real_process_exits_as_the_in_process_command_does(cases, tmp_path) -> None:
    # A NUL cannot reach a real process's argv; those cases run in process only.
    eligible = [c for c in cases if c.category != "run" and not any("\x00" in a for a in c.argv)]
    sample = random.Random(SEED).sample(eligible, min(PROCESS_SAMPLE, len(eligible)))
    sandboxes = Sandboxes(tmp_path)
    pairs = [(run_in_process(case, sandboxes), run_as_process(case, sandboxes)) for case in sample]
    differ = [f"{inner.case.replay()}\n  in process: {inner.code}, as a process: {outer.code}\n"
              f"  {outer.output[-400:]!r}" for inner, outer in pairs if inner.code != outer.code]
    assert not differ, f"seed {SEED}:\n" + "\n".join(differ)
    outer_failed = [outer for _, outer in pairs if outer.failed and not excused(outer)]
    assert not outer_failed, _report([outer for _, outer in pairs], "processes")
