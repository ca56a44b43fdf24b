"""Backends: one execution engine per file, behind the interface in ``base``."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

from corral.backends.base import Backend, LearnedState

#: backend type (the ``type:`` of a ``backends:`` entry) -> "module:class", imported on first use
BACKEND_CLASSES: dict[str, str] = {
    "local": "corral.backends.local:LocalBackendImpl",
    "openai_batch": "corral.backends.openai_batch:OpenAIBatchBackend",
    "anthropic_batch": "corral.backends.anthropic_batch:AnthropicBatchBackend",
    "slurm": "corral.backends.slurm:SlurmBackendImpl",
}


def make_backend(name: str, settings: Any, log: Callable[[str], None] | None = None,
                 wake: Callable[[], None] | None = None, clock: Any | None = None,
                 memory: LearnedState | None = None) -> Backend:
    kind = getattr(settings, "type", name)
    target = BACKEND_CLASSES.get(kind)
    if target is None:
        raise ValueError(f"no backend of type {kind!r}")
    module, _, cls = target.partition(":")
    backend = getattr(import_module(module), cls)(name, settings, log=log, wake=wake, memory=memory)
    backend.clock = clock
    return backend


__all__ = ["Backend", "BACKEND_CLASSES", "make_backend"]
