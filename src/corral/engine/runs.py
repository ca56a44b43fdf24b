"""Creating and finding runs: one resolved campaign with its snapshot and its items and tasks."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from corral.errors import CorralError, NotFound, SpecError
from corral.ledger import Ledger, dumps, loads, registry_queries
from corral.spec import ItemSource, LoadedCampaign
from corral.spec.identity import identity_hash, membership_fingerprint
from corral.states import RunStatus


@dataclass(frozen=True)
class Selection:
    """Which of the campaign's items a run takes."""

    limit: int | None = None
    shard: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "shard": list(self.shard) if self.shard else None}

    @staticmethod
    def parse_shard(text: str | None) -> tuple[int, int] | None:
        if not text:
            return None
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise SpecError(f"--shard {text!r} is not I/N", expected="I/N with 0 <= I < N, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise SpecError(f"--shard {text!r} is out of range", expected="I/N with 0 <= I < N, e.g. 0/4")
        return index, count


def snapshot_hash(campaign: LoadedCampaign, selection: Selection, param_names: list[str] | None = None) -> str:
    """The identity of the run this campaign and selection make (``corral.spec.identity``)."""
    if param_names is None:
        param_names = ItemSource(campaign.spec.items, campaign.root, campaign.path).param_names()
    return identity_hash(campaign.config, selection.as_dict(), param_names)


def run_identity(run: dict[str, Any]) -> str | None:
    """A stored run's identity, computed again from its snapshot: runs made by an earlier release
    hashed their whole config. None for a merged run, which is never continued."""
    if str(run.get("config_hash") or "").startswith("merge:"):
        return None
    selection = loads(run["selection"]) or {}
    if selection.get("merged_from"):
        return None
    return identity_hash(run_config(run), selection, selection.get("param_order") or [])


def find_resumable(ledger: Ledger, campaign: LoadedCampaign, selection: Selection,
                   param_names: list[str] | None = None) -> dict[str, Any] | None:
    """The newest run of this campaign, not cancelled, whose defining configuration, selection and
    item parameters are the campaign's: its steering settings and its items may differ."""
    wanted = snapshot_hash(campaign, selection, param_names)
    for run in ledger.find_runs(name=campaign.spec.name):
        if run["status"] != RunStatus.CANCELLED and run_identity(run) == wanted:
            return run
    return None


def resolve_run(ledger: Ledger, campaign: LoadedCampaign, run_id: str) -> dict[str, Any]:
    run = ledger.get_run(run_id)
    if run is None:
        matches = ledger.find_runs(prefix=run_id)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFound(f"run id {run_id!r} is ambiguous: " + ", ".join(m["id"] for m in matches[:5]))
        raise NotFound(f"no run {run_id!r} in the ledger {ledger.display_url}")
    return run


def latest_run(ledger: Ledger, campaign: LoadedCampaign) -> dict[str, Any]:
    runs = ledger.find_runs(name=campaign.spec.name)
    if not runs:
        raise NotFound(f"campaign {campaign.spec.name!r} has no runs yet in {ledger.display_url}; "
                       "start one with `corral run`")
    return runs[0]


def create_run(ledger: Ledger, campaign: LoadedCampaign, selection: Selection, now: float,
               run_id: str | None = None, reuse: bool = False) -> tuple[dict[str, Any], bool]:
    """Create a run (items and tasks in one transaction). With ``reuse``, a run with the same
    config and selection that appeared meanwhile (another controller started at the same moment)
    is returned instead. Returns (run row, created)."""
    spec = campaign.spec
    source = ItemSource(spec.items, campaign.root, campaign.path, blame=campaign.blame)
    items = source.items(limit=selection.limit, shard=selection.shard)
    stages = [(name, spec.stages[name].per, bool(spec.stages[name].needs), spec.stages[name].backend)
              for name in campaign.stage_order()]
    wanted_id = run_id or _run_id(campaign, now)
    identity = snapshot_hash(campaign, selection, source.param_names())
    with ledger.write() as conn:
        registry_queries.lock_run_creation(conn, spec.name)
        if reuse:
            existing = registry_queries.newest_run_with_config(conn, spec.name, identity)
            if existing is not None:
                return existing, False
        final_id = wanted_id
        suffix = 2
        while ledger.run_id_exists(conn, final_id):
            if run_id:
                raise CorralError(f"a run named {run_id!r} already exists")
            final_id = f"{wanted_id}_{suffix}"
            suffix += 1
        row = {
            "id": final_id, "name": spec.name, "campaign": str(campaign.path), "created_at": now,
            "updated_at": now, "status": RunStatus.ACTIVE.value, "config": dumps(campaign.config),
            "config_hash": identity, "selection": dumps(
                {**selection.as_dict(), "overrides": campaign.overrides, "param_order": source.param_names(),
                 "members": membership_fingerprint(campaign.config, campaign.root)}),
            "code_revision": code_revision(campaign.root), "host": socket.gethostname(),
            "versions": dumps(package_versions()), "tags": dumps([]), "notes": None, "item_count": 0,
        }
        ledger.insert_run(conn, row)
        count = ledger.insert_items_and_tasks(conn, final_id, items, stages, now)
        check_selection(campaign, selection, count, source)
        registry_queries.update_run(conn, final_id, item_count=count)
        ledger.add_events(conn, [{"at": now, "run_id": final_id, "kind": "run", "to_state": RunStatus.ACTIVE.value,
                                  "count": count, "message": f"created with {count} items"}])
        row["item_count"] = count
    return row, True


def check_selection(campaign: LoadedCampaign, selection: Selection, count: int, source: ItemSource) -> None:
    """A run of no items is refused: a `per: all` stage would wait forever on it."""
    if count == 0:
        raise SpecError(f"the selection {selection.as_dict()} holds none of the campaign's "
                        f"{source.count():,} items", file=str(campaign.path), key="items",
                        expected="a selection that holds at least one item (fewer shards)")
    run_id = _run_id(campaign, 0.0)  # a run_id template that cannot be filled is found before any run
    if len(run_id) > 200:
        raise SpecError(f"the run id {run_id[:40]!r}... is {len(run_id)} characters long; it names the run's folder",
                        file=str(campaign.path), key="run_id", expected="a template giving at most 200 characters")


def _run_id(campaign: LoadedCampaign, now: float) -> str:
    stamp = dt.datetime.fromtimestamp(now).strftime("%Y%m%dT%H%M%S")
    fields = {k: v for k, v in campaign.spec.params.items() if isinstance(v, (str, int, float, bool))}
    fields.update(name=campaign.spec.name, timestamp=stamp)
    try:
        text = campaign.spec.run_id.format_map(fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(f"cannot fill the run id template: {exc!r}", file=str(campaign.path), key="run_id",
                        expected="fields among " + ", ".join(sorted(fields))) from None
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)


def code_revision(root: Path) -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("corral", "sqlalchemy", "pydantic", "hydra-core", "omegaconf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_config(run: dict[str, Any]) -> dict[str, Any]:
    return loads(run["config"]) or {}
