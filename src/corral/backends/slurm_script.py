"""The sbatch script of one job array: resources from the stage, the worker on one element's slice.

The script holds no secret: environment variables are passed by name with ``--export``. Every
value in it is quoted or refused: a campaign folder named ``x\n#SBATCH ...`` or ``$(...)`` must not
add a line or a command. sbatch reads an ``#SBATCH`` line as one shell-like word: quotes group,
a backslash escapes the next character and an unquoted ``#`` starts a comment.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from corral.backends.slurm_cli import format_mem, format_time_limit
from corral.errors import CorralError
from corral.spec.models import Stage
from corral.spec.slurm import SlurmBackend, SlurmTarget


#: characters after which sbatch would read a value differently than written
NEEDS_QUOTES = re.compile(r"[\s\"'\\#]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeScriptValue(CorralError):
    """A value that cannot be written into a job script as it is (a newline would start a new line)."""


def sbatch_line(option: str) -> str:
    """``#SBATCH --name=value``, the value in double quotes where it holds whitespace, a quote, a
    backslash or ``#``; a control character is refused."""
    name, has_value, value = (option if option.startswith("-") else f"--{option}").partition("=")
    if CONTROL.search(option):
        raise UnsafeScriptValue(f"the sbatch option {option!r} holds a control character (a newline?); "
                                "a job script line cannot hold it")
    if NEEDS_QUOTES.search(name):
        raise UnsafeScriptValue(f"the sbatch option name {name!r} holds a space, a quote, a backslash or '#'")
    if has_value and NEEDS_QUOTES.search(value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"#SBATCH {name}{'=' if has_value else ''}{value}"


def script_folder(path: Path, what: str) -> str:
    """A folder named in the script: no control character, no backslash (slurmd drops it and then
    expands no ``%`` pattern in ``--output``)."""
    text = str(path)
    if CONTROL.search(text):
        raise UnsafeScriptValue(f"the {what} {text!r} holds a control character (a newline?): SLURM jobs cannot "
                                "run there; move the campaign to a folder without one")
    if "\\" in text:
        raise UnsafeScriptValue(f"the {what} {text!r} holds a backslash, which SLURM drops from job file names: "
                                "move the campaign to a folder without one")
    return text


@dataclass(frozen=True)
class JobResources:
    """What one array asks of the cluster (tasks with equal needs share an array)."""

    mem: int | None = None
    time: float | None = None


@dataclass
class ArrayJob:
    """One sbatch call: elements ``offset .. offset+count-1`` of a submission."""

    part: int
    offset: int
    count: int
    resources: JobResources
    target: SlurmTarget | None = None
    job_id: str | None = None
    options: list[str] = field(default_factory=list)


def base_resources(stage: Stage, settings: SlurmBackend, tasks_in_element: int) -> JobResources:
    res = stage.resources
    time = res.time or settings.time
    if time is None and stage.timeout:
        time = stage.timeout * tasks_in_element + 120
    return JobResources(mem=res.mem or settings.mem, time=time)


def scaled(base: JobResources, stage: Stage, attempt: int, last_error: str | None) -> JobResources:
    """Resources for a retry: ``retries: {mem: x2}`` after an out-of-memory failure, ``time`` after a timeout."""
    retries = stage.retries
    mem, time = base.mem, base.time
    steps = max(0, attempt - 1)
    if last_error == "oom" and retries.mem and mem:
        mem = int(mem * retries.mem ** steps)
    if last_error == "timeout" and retries.time and time:
        time = time * retries.time ** steps
    return JobResources(mem=mem, time=time)


def sbatch_options(stage: Stage, settings: SlurmBackend, job: ArrayJob, *, job_name: str, comment: str,
                   output: Path, root: Path, max_array: int, max_running: int | None,
                   exclude: list[str], after: list[str]) -> list[str]:
    """The ``#SBATCH`` options, in a fixed order (scripts are compared with golden files)."""
    res, target = stage.resources, job.target
    last = job.count - 1
    array = f"0-{last}" if last else "0"
    if max_running:
        array += f"%{max_running}"
    # In --output a % starts a pattern (%A, %a): the folder's own are doubled.
    output_folder = script_folder(output.parent, "run folder").replace("%", "%%")
    options = [f"--job-name={job_name}", f"--comment={comment}", f"--array={array}",
               f"--output={output_folder}/{output.name}", f"--chdir={script_folder(root, 'campaign folder')}"]

    def pick(name: str) -> str | None:
        if target is not None and getattr(target, name, None):
            return getattr(target, name)
        return getattr(res, name, None) or getattr(settings, name, None)

    for name in ("partition", "account", "qos"):
        value = pick(name)
        if value:
            options.append(f"--{name}={value}")
    options.append(f"--cpus-per-task={res.cpus}")
    if job.resources.mem:
        options.append(f"--mem={format_mem(job.resources.mem)}")
    if job.resources.time:
        options.append(f"--time={format_time_limit(job.resources.time)}")
    gres = pick("gres")
    if gres:
        options.append(f"--gres={gres}")
    elif res.gpus:
        options.append(f"--gpus-per-task={res.gpus}")
    for name in ("constraint", "nodes"):
        value = pick(name)
        if value:
            options.append(f"--{name}={value}")
    excluded = [x for x in [res.exclude or settings.exclude, *exclude] if x]
    if excluded:
        options.append(f"--exclude={','.join(excluded)}")
    if settings.signal:
        options.append(f"--signal={settings.signal}")
    names = sorted({*settings.env, *stage.secrets})
    options.append("--export=" + ",".join(["ALL", *names]))
    if after:
        options.append("--dependency=afterok:" + ":".join(after))
        options.append("--kill-on-invalid-dep=no")
    options.extend(settings.sbatch)
    options.extend(res.sbatch)
    return options


def render_script(options: list[str], *, setup: list[str], launcher: list[str], python: str | None,
                  folder: Path, root: Path, offset: int, race: bool = False) -> str:
    lines = ["#!/bin/bash"]
    lines += [sbatch_line(option) for option in options]
    lines += ["", "set -e"]
    lines += setup
    lines += [
        f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"element=$(( ${{SLURM_ARRAY_TASK_ID:-0}} + {offset} ))",
        *(["export CORRAL_RACE=1"] if race else []),
        # exec: the worker receives --signal itself and its exit status is the job's.
        "exec " + " ".join([*(shlex.quote(p) for p in launcher), shlex.quote(python or sys.executable), "-m",
                            "corral.worker", shlex.quote(str(folder)), "--element", '"$element"']),
        "",
    ]
    return "\n".join(lines)
