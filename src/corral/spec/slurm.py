"""Settings of the ``slurm`` backend (``backends: {cluster: {type: slurm, ...}}``)."""

from __future__ import annotations

import re
import shlex
from typing import Any, Literal

from pydantic import Field, field_validator

from corral.spec.models import Strict, _duration

SIGNAL_RE = re.compile(r"^(B:)?(R:)?(SIG)?[A-Z0-9]+(@\d+)?$")


class SlurmTarget(Strict):
    """One queue of a ``race:``: the same work is sent to each; the first to start wins."""

    partition: str
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    constraint: str | None = None


class SlurmBackend(Strict):
    """Jobs arrays on a SLURM cluster, each array element running the worker on a slice of tasks."""

    type: Literal["slurm"] = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: float | None = None
    mem: int | str | None = None
    gres: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    nodes: str | None = None
    #: extra ``#SBATCH`` lines, e.g. ``--mail-type=FAIL``
    sbatch: list[str] = Field(default_factory=list)
    #: shell lines run before the worker starts (module loads, environment activation)
    setup: list[str] = Field(default_factory=list)
    #: prefix of the worker command inside the job, e.g. ``apptainer exec image.sif`` or ``srun``
    launcher: list[str] = Field(default_factory=list)
    #: the Python that runs the worker on the nodes (default: the controller's)
    python: str | None = None
    #: tasks run one after another by each array element (default: sized from the backlog)
    tasks_per_job: int | None = Field(default=None, ge=1)
    #: without tasks_per_job, first send this many tasks (one per element) to learn how long a
    #: task takes, then pack the rest; 0 to size from the backlog alone
    pilot: int = Field(default=10, ge=0)
    #: how long the rest waits for the pilot's first results before going out anyway
    pilot_wait: float = 300.0
    #: at most this many elements of one array run at once (``--array=...%N``)
    max_running: int | None = Field(default=None, ge=1)
    #: at most this many array elements queued or running for the whole backend
    max_jobs: int = Field(default=5000, ge=1)
    #: tasks per submission (one sbatch call; split into several arrays past MaxArraySize)
    max_tasks_per_submission: int = Field(default=100_000, ge=1)
    #: signal sent before the time limit so the worker stops cleanly (``B:USR1@90``)
    signal: str = "B:USR1@90"
    #: environment variables passed by name (``--export``); values are never written anywhere
    env: list[str] = Field(default_factory=list)
    #: whole-stage dependencies submitted ahead as ``afterok`` so the cluster runs a pipeline alone
    dependencies: bool = True
    #: after a NODE_FAIL, keep the node out of this backend's submissions (when others remain)
    exclude_failed_nodes: bool = True
    race: list[SlurmTarget] = Field(default_factory=list)
    poll_interval: float = Field(default=5.0, gt=0)
    max_poll_interval: float = Field(default=60.0, gt=0)
    #: jobs not seen by sacct or squeue this long after submission are taken as gone
    missing_grace: float = 120.0

    _check_durations = field_validator("time", "poll_interval", "max_poll_interval", "missing_grace",
                                       "pilot_wait", mode="before")(_duration)

    @field_validator("launcher", mode="before")
    @classmethod
    def _split_launcher(cls, value: Any) -> Any:
        if isinstance(value, str):
            return shlex.split(value)
        return value

    @field_validator("sbatch", "setup", "env", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        if value and not SIGNAL_RE.match(value):
            raise ValueError(f"{value!r} is not an sbatch --signal value like 'B:USR1@90'")
        return value

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, value: Any) -> Any:
        from corral.spec.durations import parse_size

        return None if value is None else parse_size(value)
