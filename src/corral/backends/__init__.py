"""Backends: one execution engine per file, behind the interface in ``base``."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

from corral.backends.base import Backend, LearnedState
from corral.clock import Clock
from corral.spec.backend_types import BACKEND_TYPES


def backend_class(kind: str) -> type[Backend]:
    """The class of a backend type (``spec.backend_types.BACKEND_TYPES``), imported on first use."""
    entry = BACKEND_TYPES.get(kind)
    if entry is None:
        raise ValueError(f"no backend of type {kind!r}")
    module, _, name = entry.implementation.partition(":")
    return getattr(import_module(module), name)


def make_backend(name: str, settings: Any, *, clock: Clock | None = None, log: Callable[[str], None] | None = None,
                 wake: Callable[[], None] | None = None, memory: LearnedState | None = None) -> Backend:
    """The backend ``name`` with its validated ``settings``; ``clock`` is the engine's (wall time if None),
    ``memory`` what it learned earlier in the run."""
    return backend_class(getattr(settings, "type", name))(name, settings, clock=clock, log=log, wake=wake,
                                                          memory=memory)


__all__ = ["Backend", "backend_class", "make_backend"]
