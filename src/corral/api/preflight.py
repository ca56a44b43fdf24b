"""What must hold on this machine before a run is created: the secrets the stages name and the API
keys of the LLM backends are set (in the environment, or in a ``.env`` file beside the campaign),
and the local backend has the GPUs the stages ask for. ``corral check``, ``run`` and ``tick`` refuse
a campaign that fails here before anything is written; ``corral check`` shows what was found.

Secrets are handled by name only: their values are never returned, printed or stored.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from corral.errors import CorralError, CorralWarning, SpecError
from corral.spec import LoadedCampaign
from corral.spec.llm import LLM_BACKEND_TYPES, LlmBatchSettings
from corral.spec.models import LocalBackend
from corral.spec.slurm import SlurmBackend

DOTENV = ".env"
#: ``env:`` keys that name a secret: HF_TOKEN, WANDB_API_KEY, DB_PASSWORD, AWS_SECRET_ACCESS_KEY, ...
SECRET_NAME_RE = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)


class SecretSource(str, Enum):
    ENVIRONMENT = "set"
    DOTENV = "set (.env)"
    MISSING = "missing"

    def __str__(self) -> str:
        return self.value


class GpuSource(str, Enum):
    CAMPAIGN = "campaign file"
    VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
    NVIDIA_SMI = "nvidia-smi"
    NOT_FOUND = "CUDA_VISIBLE_DEVICES unset, nvidia-smi finds none"
    NONE = "gpus: none"
    CLUSTER = "cluster"

    def __str__(self) -> str:
        return self.value


@dataclass
class Preflight:
    """What ``corral check`` shows of this machine: secrets by name, GPUs and slots."""

    #: secret or API key variable name -> where it was found
    secrets: dict[str, SecretSource] = field(default_factory=dict)
    #: backend name -> {"gpus": [...] or None on a cluster, "source": GpuSource}
    gpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: stage name -> {"backend", "slots" (None where the cluster or provider decides), "unit", "gpus_per_task"}
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"secrets": {name: str(source) for name, source in self.secrets.items()},
                "gpus": {name: {**info, "source": str(info["source"])} for name, info in self.gpus.items()},
                "slots": self.slots}


def preflight(loaded: LoadedCampaign, stages: list[str] | None = None) -> Preflight:
    """Check secrets, API keys and GPUs of ``stages`` (default all); raise a CorralError naming every
    problem, or return what was found. Secrets found only in ``.env`` are put in this process's
    environment, so that workers, job submissions and API clients started from it get them."""
    names = list(stages if stages is not None else loaded.stage_order())
    dotenv = read_dotenv(loaded.root)
    result = Preflight()
    problems: list[SpecError] = []
    for name, key in needed_secrets(loaded, names):
        source = _resolve_secret(name, dotenv)
        result.secrets.setdefault(name, source)
        if source is SecretSource.MISSING:
            problems.append(_missing_secret(loaded, name, key))
    _load_passed_names(loaded, names, dotenv)
    warn_secrets_in_env(loaded, names, dotenv)
    machine = _MachineGpus()
    for name in names:
        stage = loaded.spec.stages[name]
        settings = loaded.backends[stage.backend]
        if isinstance(settings, LocalBackend):
            problems += _check_local_stage(loaded, name, stage, settings, machine, result)
        elif isinstance(settings, SlurmBackend):
            result.gpus.setdefault(stage.backend, {"gpus": None, "source": GpuSource.CLUSTER})
            result.slots[name] = {"backend": stage.backend, "slots": None, "unit": "jobs",
                                  "limit": settings.max_running or settings.max_jobs,
                                  "gpus_per_task": stage.resources.gpus or 0}
        elif isinstance(settings, LlmBatchSettings):
            result.slots[name] = {"backend": stage.backend, "slots": settings.batches_in_flight,
                                  "unit": "batches", "gpus_per_task": 0}
    if problems:
        if len(problems) == 1:
            raise problems[0]
        raise CorralError(f"{len(problems)} problems to fix before a run can start:\n" +
                          "\n".join(f"- {problem}" for problem in problems))
    return result


# -- secrets ---------------------------------------------------------------------------------------

def read_dotenv(root: Path) -> dict[str, str]:
    """The variables of ``.env`` beside the campaign file (none if there is no such file)."""
    path = root / DOTENV
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot be read: {exc}", file=str(path),
                        expected="lines NAME=value, as python-dotenv reads them") from None
    return {name: value for name, value in values.items() if value is not None}


def needed_secrets(loaded: LoadedCampaign, stages: list[str]) -> list[tuple[str, str]]:
    """(variable name, the campaign key that names it) for every secret and API key ``stages`` need."""
    needed: list[tuple[str, str]] = []
    for name in stages:
        stage = loaded.spec.stages[name]
        needed += [(secret, f"stages.{name}.secrets") for secret in stage.secrets]
        settings = loaded.backends[stage.backend]
        if getattr(settings, "type", None) in LLM_BACKEND_TYPES and settings.api_key_env:
            needed.append((settings.api_key_env, f"backends.{stage.backend}.api_key_env"))
    return needed


def _resolve_secret(name: str, dotenv: dict[str, str]) -> SecretSource:
    if os.environ.get(name):
        return SecretSource.ENVIRONMENT
    if dotenv.get(name):  # an empty value in the environment does not hide the one in .env
        return SecretSource.DOTENV
    return SecretSource.MISSING


def _missing_secret(loaded: LoadedCampaign, name: str, key: str) -> SpecError:
    where = f"set it in the environment or as {name}=... in {loaded.root / DOTENV}"
    if key.endswith(".api_key_env"):
        backend = key.split(".")[1]
        return SpecError(f"backend {backend!r} needs an API key in {name}, which is not set", file=str(loaded.path),
                         key=key, expected=f"{where}, or name another variable in {key}")
    state = "is set but empty" if name in os.environ else "is not set"
    return SpecError(f"the secret {name!r} {state}", file=str(loaded.path), key=key, expected=where)


def load_dotenv(loaded: LoadedCampaign) -> None:
    """The secrets, API keys and cluster ``env:`` names of the campaign that are set only in its
    ``.env`` go into this process's environment (for a run ticked without ``preflight``)."""
    _load_passed_names(loaded, loaded.stage_order(), read_dotenv(loaded.root))


def _load_passed_names(loaded: LoadedCampaign, stages: list[str], dotenv: dict[str, str]) -> None:
    """Secrets, API keys and a cluster's ``env:`` names found only in ``.env`` go into the environment
    (the environment wins: a name already set to a value is left as it is)."""
    if not dotenv:
        return
    names = {name for name, _ in needed_secrets(loaded, stages)}
    for stage in (loaded.spec.stages[n] for n in stages):
        settings = loaded.backends[stage.backend]
        if isinstance(settings, SlurmBackend):
            names.update(settings.env)
    for name in sorted(names):
        if not os.environ.get(name) and dotenv.get(name):
            os.environ[name] = dotenv[name]


def warn_secrets_in_env(loaded: LoadedCampaign, stages: list[str], dotenv: dict[str, str]) -> None:
    """An ``env:`` entry that looks like a secret given by value is stored in clear with the run's
    config: say so, and point to ``secrets:``."""
    known = {value for value in dotenv.values() if value}
    known |= {os.environ[name] for name, _ in needed_secrets(loaded, stages) if os.environ.get(name)}
    for name in stages:
        for variable, value in loaded.spec.stages[name].env.items():
            by_name = SECRET_NAME_RE.search(variable) is not None
            if not by_name and value not in known:
                continue
            why = "is named like a secret" if by_name else "has the value of a secret"
            warnings.warn(CorralWarning(
                f"{loaded.path}: stages.{name}.env.{variable} {why}; a value given in env: is stored in clear "
                f"in the ledger with the run's configuration. Name it under stages.{name}.secrets instead and set "
                f"it in the environment or in {loaded.root / DOTENV}"), stacklevel=2)


# -- GPUs and slots --------------------------------------------------------------------------------

class _MachineGpus:
    """The GPUs this machine shows, found once: as the local backend finds them (``gpus: auto``)."""

    def __init__(self) -> None:
        self._found: list[int | str] | None = None

    @property
    def ids(self) -> list[int | str]:
        if self._found is None:
            from corral.backends.local import detect_gpus

            self._found = detect_gpus()
        return self._found

    @property
    def source(self) -> GpuSource:
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            return GpuSource.VISIBLE_DEVICES
        return GpuSource.NVIDIA_SMI if self.ids else GpuSource.NOT_FOUND

    def describe(self) -> str:
        if self.source is GpuSource.VISIBLE_DEVICES:
            return f"GPUs {self.ids} (CUDA_VISIBLE_DEVICES)" if self.ids else "no GPU (CUDA_VISIBLE_DEVICES is empty)"
        if self.ids:
            return f"GPUs {self.ids} (nvidia-smi)"
        return "no GPU (CUDA_VISIBLE_DEVICES is not set and nvidia-smi finds none)"


def _check_local_stage(loaded: LoadedCampaign, name: str, stage, settings: LocalBackend, machine: _MachineGpus,
                       result: Preflight) -> list[SpecError]:
    from corral.backends import make_backend

    problems: list[SpecError] = []
    backend_name = stage.backend
    if backend_name not in result.gpus:
        if isinstance(settings.gpus, list):
            lacking = _lacking(settings.gpus, machine.ids)
            if lacking:
                problems.append(SpecError(
                    f"names GPUs {lacking} that this machine lacks: it has {machine.describe()}",
                    file=str(loaded.path), key=f"backends.{backend_name}.gpus",
                    expected=f"ids among {machine.ids}, 'auto' or 'none'" if machine.ids else "'auto' or 'none'"))
            source = GpuSource.CAMPAIGN
        elif settings.gpus == "none":
            source = GpuSource.NONE
        else:
            source = machine.source
        result.gpus[backend_name] = {"gpus": None, "source": source}
    backend = make_backend(backend_name, settings)
    result.gpus[backend_name]["gpus"] = list(backend.gpus)
    wanted = stage.resources.gpus
    per_task = (1 if backend.gpus else 0) if wanted is None else wanted
    slots = backend.slots_for(per_task)
    result.slots[name] = {"backend": backend_name, "slots": len(slots), "unit": "workers", "gpus_per_task": per_task}
    if not slots and not problems:
        has = f"GPUs {list(backend.gpus)}" if backend.gpus else (
            "no GPU (gpus: none)" if settings.gpus == "none" else machine.describe())
        problems.append(SpecError(
            f"asks for {per_task} GPU(s) per task but backend {backend_name!r} has {has}",
            file=str(loaded.path), key=f"stages.{name}.resources.gpus",
            expected=f"at most {len(backend.gpus)} GPU(s) per task, 0 for a CPU stage, or more GPUs in "
                     f"backends.{backend_name}.gpus" if backend.gpus else
                     f"0 (a CPU stage), or a machine or backend with GPUs (backends.{backend_name}.gpus)"))
    return problems


def _lacking(listed: list[int], found: list[int | str]) -> list[int]:
    """GPUs of a ``gpus:`` list this machine does not show. GPUs known by UUID only are counted."""
    if all(isinstance(gpu, int) for gpu in found):
        return [gpu for gpu in listed if gpu not in found]
    return [gpu for gpu in listed if gpu >= len(found)]
