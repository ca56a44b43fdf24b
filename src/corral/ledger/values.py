"""How values are stored in the ledger's JSON columns (no SQLAlchemy needed: readers use it too)."""

from __future__ import annotations

import json
from typing import Any

from corral.errors import LedgerError


def dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def loads(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise LedgerError(f"the ledger is damaged: a stored value is not valid JSON ({exc}: {value[:60]!r}); "
                          "restore the ledger from a backup, or start a new one with --ledger") from None
