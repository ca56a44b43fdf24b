"""Short column labels for runs compared side by side: what tells them apart (a config value, the
shard, a limit), each said once; the distinct tail of the run ids only when nothing else does."""

from __future__ import annotations

import json
import re
from typing import Any

#: More differing config values than this make a label too wide to read: the run ids' tails instead.
MAX_PARTS = 3
_SEPARATORS = re.compile(r"[-_.:/]")


def _text(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:  # a grid axis of one value names that value
        value = value[0]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _selection(row: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row.get("selection") or "{}") or {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _selection_parts(row: dict[str, Any]) -> dict[str, str]:
    selection = _selection(row)
    parts = {}
    shard = selection.get("shard")
    if shard:
        parts["shard"] = f"shard={shard[0]}/{shard[1]}" if isinstance(shard, list) and len(shard) == 2 \
            else f"shard={_text(shard)}"
    if selection.get("limit") is not None:
        parts["limit"] = f"limit={selection['limit']}"
    if selection.get("merged_from"):
        parts["merged"] = f"merged({len(selection['merged_from'])})"
    return parts


def _short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                out[key] = tail
                break
        else:
            out[key] = key
    return out


def _id_tails(ids: list[str]) -> dict[str, str]:
    """Each id without the separator-bounded words all ids start with (the whole id if none)."""
    words = [_SEPARATORS.split(i) for i in ids]
    common = 0
    while all(len(w) > common + 1 for w in words) and len({w[common] for w in words}) == 1:
        common += 1
    out = {}
    for run_id, parts in zip(ids, words):
        skip = sum(len(p) + 1 for p in parts[:common])
        out[run_id] = run_id[skip:] or run_id
    return out


def run_labels(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A label per run (``configs``: each run's flattened config): the values that differ between
    the runs, each text once (``policy=lingbot``, not ``policy=lingbot,policy=lingbot`` when two keys
    hold it), then what differs in how the run chose its items (``shard=1/4``)."""
    ids = [r["id"] for r in rows]
    if len(rows) < 2:
        return {i: i for i in ids}
    keys = sorted({k for c in configs.values() for k in c} - {"name"})
    differing = [k for k in keys if len({_text(configs[i].get(k)) for i in ids}) > 1]
    short = _short_names(differing)
    selections = {r["id"]: _selection_parts(r) for r in rows}
    selection_keys = sorted({k for parts in selections.values() for k in parts})
    selection_keys = [k for k in selection_keys if len({selections[i].get(k) for i in ids}) > 1]
    labels: dict[str, str] = {}
    for run_id in ids:
        parts: list[str] = []
        for key in differing:
            value = configs[run_id].get(key)
            if value is None:
                continue
            # A value held under two keys (params.policy, items.grid.policy) is said once.
            last = key.split(".")[-1]
            name = last if sum(1 for k in differing if k.split(".")[-1] == last) > 1 else short[key]
            text = f"{name}={_text(value)}"
            if text not in parts:
                parts.append(text)
        parts += [selections[run_id][k] for k in selection_keys if k in selections[run_id]]
        labels[run_id] = ",".join(parts)
    tails = _id_tails(ids)
    parts_count = max(len(label.split(",")) for label in labels.values())
    if parts_count > MAX_PARTS or any(not label for label in labels.values()):
        return tails
    if len(set(labels.values())) != len(labels):
        return {i: f"{labels[i]} ({tails[i]})" if labels[i] else tails[i] for i in ids}
    return labels
