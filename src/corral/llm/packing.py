"""Packing rendered requests into one batch under the provider's limits.

Sizes are measured on what is sent: the serialized JSONL line (bytes) and the estimated input
tokens of its body. A request that could never fit any batch is reported alone, so it fails by
itself with a clear message instead of failing its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Entry:
    task_id: int
    line: bytes          # the serialized request, newline included
    tokens: int          # estimated input tokens (calibrated)
    custom_id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Packed:
    taken: list[Entry] = field(default_factory=list)
    deferred: list[Entry] = field(default_factory=list)   # fit a later batch: back to pending
    oversized: list[tuple[Entry, str]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(len(e.line) for e in self.taken)

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.taken)


def pack(entries: list[Entry], *, max_requests: int, max_bytes: int, max_tokens: float | None,
         token_room: float | None, fits_alone_tokens: float | None) -> Packed:
    """Take entries in order while the batch stays within ``max_requests``, ``max_bytes`` and
    ``token_room`` (what the enqueued-token limit has free now); ``fits_alone_tokens`` is the most
    one request may need to be sendable at all (the whole limit)."""
    packed = Packed()
    used_bytes = used_tokens = 0
    full = False
    for entry in entries:
        if len(entry.line) > max_bytes:
            packed.oversized.append((entry, f"the request is {len(entry.line):,} bytes serialized, more than the "
                                           f"{max_bytes:,} bytes a batch file may hold"))
            continue
        if fits_alone_tokens is not None and entry.tokens > fits_alone_tokens:
            packed.oversized.append((entry, f"the request needs about {entry.tokens:,} input tokens, more than "
                                           f"the {int(fits_alone_tokens):,} that the enqueued-token limit allows "
                                           "in flight at once"))
            continue
        if full:
            packed.deferred.append(entry)
            continue
        room = min(x for x in (max_tokens, token_room) if x is not None) if (
            max_tokens is not None or token_room is not None) else None
        over = (len(packed.taken) + 1 > max_requests or used_bytes + len(entry.line) > max_bytes or
                (room is not None and used_tokens + entry.tokens > room and packed.taken))
        if over:
            full = True
            packed.deferred.append(entry)
            continue
        packed.taken.append(entry)
        used_bytes += len(entry.line)
        used_tokens += entry.tokens
    return packed
