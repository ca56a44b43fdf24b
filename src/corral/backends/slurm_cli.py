"""SLURM's command-line tools (sbatch, sacct, squeue, scancel, scontrol) and what their answers mean.

Every call goes through :class:`SlurmCommands`, which counts them (the benchmark reports the
counts) and turns failures into :class:`SlurmError`, :class:`corral.backends.base.CapacityError`
(too many jobs: submit fewer) or :class:`corral.backends.base.TransientError` (the controller did
not answer: try again later).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from corral.backends.base import CapacityError, TransientError
from corral.states import ErrorClass


class SlurmError(Exception):
    """A SLURM command failed for a reason that retrying the same call will not fix."""


class SlurmState(str, Enum):
    """A job's state as corral reads it: SLURM's own word (sacct and squeue print the same ones),
    or UNKNOWN for a word corral does not know (a newer SLURM, a site plugin)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESIZING = "RESIZING"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    POWER_UP_NODE = "POWER_UP_NODE"
    UPDATE_DB = "UPDATE_DB"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CANCELLED = "CANCELLED"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    PREEMPTED = "PREEMPTED"
    REVOKED = "REVOKED"
    LAUNCH_FAILED = "LAUNCH_FAILED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> SlurmState:
        """The state of a ``State`` (sacct) or ``%T``/``%t`` (squeue) field; UNKNOWN for a word not
        in SCHEDULER_STATES."""
        words = text.split()
        if not words:
            return cls.UNKNOWN
        # "CANCELLED by 1000"; a state with flags appended ("RUNNING+", "COMPLETING+" on some versions)
        return SCHEDULER_STATES.get(words[0].rstrip("+*"), cls.UNKNOWN)


#: every word sacct and squeue print for a job's state, long (``%T``, sacct) and compact (``%t``)
SCHEDULER_STATES: dict[str, SlurmState] = {
    **{state.value: state for state in SlurmState if state is not SlurmState.UNKNOWN},
    "PD": SlurmState.PENDING, "CF": SlurmState.CONFIGURING, "R": SlurmState.RUNNING,
    "CG": SlurmState.COMPLETING, "S": SlurmState.SUSPENDED, "RQ": SlurmState.REQUEUED,
    "RH": SlurmState.REQUEUE_HOLD, "RF": SlurmState.REQUEUE_FED, "RS": SlurmState.RESIZING,
    "SI": SlurmState.SIGNALING, "SO": SlurmState.STAGE_OUT, "ST": SlurmState.STOPPED,
    "SE": SlurmState.SPECIAL_EXIT, "RD": SlurmState.RESV_DEL_HOLD, "PU": SlurmState.POWER_UP_NODE,
    "CD": SlurmState.COMPLETED, "F": SlurmState.FAILED, "TO": SlurmState.TIMEOUT,
    "OOM": SlurmState.OUT_OF_MEMORY, "CA": SlurmState.CANCELLED, "NF": SlurmState.NODE_FAIL,
    "BF": SlurmState.BOOT_FAIL, "DL": SlurmState.DEADLINE, "PR": SlurmState.PREEMPTED,
    "RV": SlurmState.REVOKED, "LF": SlurmState.LAUNCH_FAILED,
}


#: states in which the job may still run (or run again)
LIVE = frozenset({SlurmState.PENDING, SlurmState.CONFIGURING, SlurmState.RUNNING, SlurmState.COMPLETING,
                  SlurmState.SUSPENDED, SlurmState.REQUEUED, SlurmState.REQUEUE_HOLD, SlurmState.REQUEUE_FED,
                  SlurmState.RESIZING, SlurmState.SIGNALING, SlurmState.STAGE_OUT, SlurmState.STOPPED,
                  SlurmState.SPECIAL_EXIT, SlurmState.RESV_DEL_HOLD, SlurmState.POWER_UP_NODE,
                  SlurmState.UPDATE_DB})
#: states in which the job's worker runs (its tasks may have started)
STARTED = frozenset({SlurmState.RUNNING, SlurmState.COMPLETING, SlurmState.SIGNALING, SlurmState.STAGE_OUT})


class Verdict(str, Enum):
    """What an ended job means for its tasks that left no result."""

    FAILED = "failed"            # the task's fault: uses an attempt
    REQUEUE = "requeue"          # not the task's fault: runs again, attempt kept


#: ended state -> (verdict, error class recorded on the tasks it took down)
ENDED: dict[SlurmState, tuple[Verdict, str]] = {
    SlurmState.COMPLETED: (Verdict.FAILED, "worker_lost"),   # exited 0 without reporting a task
    SlurmState.FAILED: (Verdict.FAILED, ErrorClass.EXIT_CODE),
    SlurmState.TIMEOUT: (Verdict.FAILED, ErrorClass.TIMEOUT),
    SlurmState.DEADLINE: (Verdict.FAILED, ErrorClass.TIMEOUT),
    SlurmState.OUT_OF_MEMORY: (Verdict.FAILED, ErrorClass.OOM),
    SlurmState.CANCELLED: (Verdict.FAILED, ErrorClass.CANCELLED),
    SlurmState.NODE_FAIL: (Verdict.REQUEUE, ErrorClass.NODE_FAIL),
    SlurmState.BOOT_FAIL: (Verdict.REQUEUE, ErrorClass.NODE_FAIL),
    SlurmState.PREEMPTED: (Verdict.REQUEUE, ErrorClass.PREEMPTED),
    SlurmState.REVOKED: (Verdict.REQUEUE, ErrorClass.PREEMPTED),
    SlurmState.LAUNCH_FAILED: (Verdict.REQUEUE, ErrorClass.NODE_FAIL),
}
# Every state is live, ended or UNKNOWN (neither: asked about again at the next poll).
assert LIVE.isdisjoint(ENDED) and LIVE | set(ENDED) | {SlurmState.UNKNOWN} == set(SlurmState)

SACCT_FIELDS = ("JobID", "State", "ExitCode", "Elapsed", "MaxRSS", "AllocCPUS", "NodeList", "Submit", "Start",
                "End", "Reason", "Comment")
_JOB_ID = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\]))?(?:\.(.+))?$")
#: refusals because this user or account has too many jobs: submit fewer
_LIMIT = re.compile(r"MaxSubmitJobs|AssocMaxSubmitJobLimit|QOSMaxSubmitJob|MaxJobCount|"
                    r"Job violates accounting/QOS policy", re.IGNORECASE)
#: the controller did not answer (busy, restarting, unreachable): the call may be tried again
_TRANSIENT = re.compile(r"temporarily|Socket timed out|Unable to contact slurm controller|"
                        r"slurm_load_jobs error: (?!Invalid)|Connection (refused|timed out|reset)|"
                        r"Zero Bytes were transmitted|Communication connection failure|"
                        r"Slurm backup controller in standby|slurmctld is (busy|not responding)",
                        re.IGNORECASE)


@dataclass
class JobRow:
    """One line of sacct/squeue: an array element, a pending range of elements, or a plain job."""

    job_id: str                       # the array's (or job's) id
    index: int | None                 # array element, None for a plain job or a pending range
    pending_range: str | None         # "[5-999%4]": elements not started yet
    state: SlurmState
    #: the scheduler's word for the state, as printed (kept for an UNKNOWN state)
    raw_state: str = ""
    exit_code: int = 0
    signal: int = 0
    reason: str = ""
    elapsed: float | None = None
    max_rss: int | None = None
    alloc_cpus: int | None = None
    node: str | None = None
    submit: float | None = None
    start: float | None = None
    end: float | None = None
    comment: str = ""

    @property
    def key(self) -> str:
        return self.job_id if self.index is None else f"{self.job_id}_{self.index}"


def parse_elapsed(text: str) -> float | None:
    text = text.strip()
    if not text or text in ("INVALID", "UNLIMITED", "Partition_Limit"):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [float(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    hours, minutes, seconds = parts[-3:]
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def parse_rss(text: str) -> int | None:
    match = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", text.strip())
    if not match:
        return None
    return int(float(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[match.group(2)])


def parse_time(text: str) -> float | None:
    text = text.strip()
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def format_time_limit(seconds: float) -> str:
    """sbatch ``--time`` from seconds, rounded up to whole minutes: ``D-HH:MM:SS``."""
    minutes = max(1, int(-(-seconds // 60)))
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00" if days else f"{hours:02d}:{minutes:02d}:00"


def format_mem(size: int) -> str:
    """sbatch ``--mem`` in whole megabytes."""
    return f"{max(1, -(-size // 1024**2))}M"


def parse_sacct(output: str) -> list[JobRow]:
    """Rows of ``sacct --parsable2 --noheader --format=<SACCT_FIELDS>``: job and array-element lines
    carry the state, their ``.batch`` step lines the memory high-water mark."""
    jobs: dict[str, JobRow] = {}
    steps: dict[str, int] = {}
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) < len(SACCT_FIELDS):
            continue
        record = dict(zip(SACCT_FIELDS, fields))
        match = _JOB_ID.match(record["JobID"])
        if not match:
            continue
        job_id, element, step = match.groups()
        if step is not None:
            rss = parse_rss(record["MaxRSS"])
            if rss is not None:
                key = job_id if element is None else f"{job_id}_{element}"
                steps[key] = max(rss, steps.get(key, 0))
            continue
        row = _row(job_id, element, record["State"])
        code, _, sig = record["ExitCode"].partition(":")
        row.exit_code = int(code) if code.isdigit() else 0
        row.signal = int(sig) if sig.isdigit() else 0
        row.reason = record["Reason"]
        row.elapsed = parse_elapsed(record["Elapsed"])
        row.alloc_cpus = int(record["AllocCPUS"]) if record["AllocCPUS"].isdigit() else None
        row.node = record["NodeList"] if record["NodeList"] not in ("", "None assigned") else None
        row.submit, row.start, row.end = (parse_time(record[k]) for k in ("Submit", "Start", "End"))
        row.comment = record["Comment"]
        jobs[row.key if row.pending_range is None else f"{job_id}_{row.pending_range}"] = row
    for key, rss in steps.items():
        if key in jobs:
            jobs[key].max_rss = rss
    return list(jobs.values())


def parse_squeue(output: str) -> list[JobRow]:
    """Rows of ``squeue -h -o '%i|%T|%r|%k|%N'``."""
    rows = []
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) < 5:
            continue
        match = _JOB_ID.match(fields[0].strip())
        if not match:
            continue
        row = _row(match.group(1), match.group(2), fields[1])
        row.reason, row.comment = fields[2], fields[3]
        row.node = fields[4] or None
        rows.append(row)
    return rows


def _row(job_id: str, element: str | None, state: str) -> JobRow:
    if element is not None and element.startswith("["):
        return JobRow(job_id=job_id, index=None, pending_range=element, state=SlurmState.parse(state),
                      raw_state=state.strip())
    return JobRow(job_id=job_id, index=int(element) if element is not None else None, pending_range=None,
                  state=SlurmState.parse(state), raw_state=state.strip())


def failure(command: str, returncode: int, message: str) -> Exception:
    """The exception for a SLURM command that exited ``returncode`` saying ``message``: too many jobs
    (CapacityError with ``limit``), the controller did not answer (TransientError), or SlurmError."""
    if _LIMIT.search(message):
        error = CapacityError(f"{command}: {message}", retry_after=60.0)
        error.limit = True
        return error
    if _TRANSIENT.search(message):
        return TransientError(f"{command}: {message}", retry_after=60.0)
    return SlurmError(f"{command} failed ({returncode}): {message}")


class SlurmCommands:
    """Runs SLURM's tools; ``calls`` counts each by name."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.calls: Counter[str] = Counter()
        self._config: dict[str, str] | None = None

    def _run(self, args: list[str], *, input_text: str | None = None, env: dict[str, str] | None = None) -> str:
        self.calls[args[0]] += 1
        try:
            proc = subprocess.run(args, check=False, input=input_text, capture_output=True, text=True, timeout=self.timeout,
                                  env=env)
        except FileNotFoundError:
            raise SlurmError(f"{args[0]} is not installed or not on PATH: this machine is not a SLURM "
                             "submission host") from None
        except subprocess.TimeoutExpired:
            raise TransientError(f"{args[0]} did not answer within {self.timeout:g}s", retry_after=30.0) from None
        if proc.returncode != 0:
            raise failure(args[0], proc.returncode, (proc.stderr or proc.stdout).strip())
        return proc.stdout

    def sbatch(self, script: str, extra: list[str] | None = None, env: dict[str, str] | None = None) -> str:
        out = self._run(["sbatch", "--parsable", *(extra or [])], input_text=script, env=env)
        return out.strip().split(";")[0]

    def sacct(self, name: str, since: float) -> list[JobRow]:
        start = datetime.fromtimestamp(since - 60).strftime("%Y-%m-%dT%H:%M:%S")
        out = self._run(["sacct", "--name", name, "--parsable2", "--noheader", "--starttime", start,
                         "--endtime", "now", "--format", ",".join(SACCT_FIELDS)])
        return parse_sacct(out)

    def squeue(self, name: str, all_states: bool = False) -> list[JobRow]:
        """Jobs the controller holds; ``all_states`` adds those ended in the last MinJobAge seconds."""
        states = ["--states", "all"] if all_states else []
        out = self._run(["squeue", "--name", name, "--noheader", "--array", *states, "--format", "%i|%T|%r|%k|%N"])
        return parse_squeue(out)

    def scancel(self, job_ids: list[str]) -> None:
        if job_ids:
            self._run(["scancel", *job_ids])

    def config(self) -> dict[str, str]:
        if self._config is None:
            out = self._run(["scontrol", "show", "config"])
            self._config = {}
            for line in out.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    self._config[key.strip()] = value.strip()
        return self._config

    def max_array_size(self) -> int:
        """The cluster's MaxArraySize (array indexes must stay below it); 1001, SLURM's default,
        where the cluster cannot be asked (a dry run on a laptop)."""
        try:
            return max(1, int(self.config().get("MaxArraySize", "1001")))
        except (SlurmError, CapacityError, TransientError, ValueError):
            return 1001

    def partition_nodes(self, partition: str | None) -> list[str]:
        args = ["sinfo", "--noheader", "--format", "%n"] + (["--partition", partition] if partition else [])
        return sorted({line.strip() for line in self._run(args).splitlines() if line.strip()})

