"""Backends: one execution engine per file, behind the interface in ``base``."""

from __future__ import annotations

from typing import Any, Callable

from corral.backends.base import Backend


def make_backend(name: str, settings: Any, log: Callable[[str], None] | None = None,
                 wake: Callable[[], None] | None = None) -> Backend:
    kind = getattr(settings, "type", name)
    if kind == "local":
        from corral.backends.local import LocalBackendImpl

        return LocalBackendImpl(name, settings, log=log, wake=wake)
    raise ValueError(f"no backend of type {kind!r}")


__all__ = ["Backend", "make_backend"]
