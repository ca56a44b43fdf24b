"""The run registry from Python (``corral runs``): list and filter runs, show, diff, tag, note, merge,
latest, and ``corral ingest``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from corral.engine import registry
from corral.engine.combine import Outcome, merge_runs
from corral.engine.ingest import ingest_sources, read_sources
from corral.engine.runs import resolve_run
from corral.errors import CorralError
from corral.states import TERMINAL, TaskState

#: what a run id may be: it names a folder under the workdir
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class Registry:
    """The runs of one ledger, reached through a campaign (``Campaign.registry()``)."""

    def __init__(self, campaign):
        self.campaign = campaign

    @property
    def ledger(self):
        return self.campaign.ledger(create=False)

    def resolve(self, ref: str) -> dict[str, Any]:
        return resolve_run(self.ledger, self.campaign.loaded, ref)

    def list(self, where: Sequence[str] = (), all_campaigns: bool = False) -> list[dict[str, Any]]:
        """One summary per run, newest first; ``where`` conditions as in ``corral runs --where``."""
        ledger = self.ledger
        rows = ledger.find_runs(name=None if all_campaigns or where else self.campaign.spec.name)
        if not all_campaigns and where and not any(w.split("=", 1)[0].rstrip("!") == "name" for w in where):
            rows = [r for r in rows if r["name"] == self.campaign.spec.name]
        rows = registry.filter_runs(rows, where)
        out = []
        for row in rows:
            totals: dict[str, int] = {}
            for states in ledger.counts(row["id"]).values():
                for state, n in states.items():
                    totals[state] = totals.get(state, 0) + n
            tasks = sum(totals.values())
            finished = sum(totals.get(s, 0) for s in TERMINAL)
            out.append({"id": row["id"], "name": row["name"], "status": row["status"],
                        "created_at": row["created_at"], "items": row["item_count"], "tasks": tasks,
                        "done": totals.get(TaskState.DONE, 0), "failed": totals.get(TaskState.FAILED, 0),
                        "budget": totals.get(TaskState.BUDGET, 0),
                        "progress": (finished / tasks) if tasks else 1.0, "host": row["host"],
                        "code_revision": row["code_revision"], "config_hash": row["config_hash"],
                        "tags": registry.run_tags(row), "notes": len(registry.run_notes(row))})
        return out

    def show(self, ref: str) -> dict[str, Any]:
        """``corral runs show ID``: the run's record, config, tags, notes and totals."""
        return registry.run_record(self.ledger, self.resolve(ref))

    def latest(self, where: Sequence[str] = (), all_campaigns: bool = False) -> dict[str, Any]:
        """``corral runs latest [--where ...]``: the record of the newest run that matches."""
        found = self.list(where=where, all_campaigns=all_campaigns)
        if not found:
            raise CorralError(f"no run matches {' and '.join(where)}" if where else
                              f"campaign {self.campaign.spec.name!r} has no runs yet in {self.ledger.display_url}")
        return self.show(found[0]["id"])

    def diff(self, a: str, b: str) -> dict[str, Any]:
        ra, rb = self.resolve(a), self.resolve(b)
        ca, cb = registry.loads(ra["config"]) or {}, registry.loads(rb["config"]) or {}
        return {"a": ra["id"], "b": rb["id"], "same_hash": ra["config_hash"] == rb["config_hash"],
                "changes": registry.config_changes(ca, cb),
                "diff": registry.config_diff(ca, cb, ra["id"], rb["id"])}

    def tag(self, ref: str, tags: Mapping[str, str] | Sequence[str] = (), remove: Sequence[str] = ()) -> dict[str, str]:
        """Add tags (a dict, or ``key=value`` texts) and remove others; returns the run's tags."""
        if not isinstance(tags, Mapping):
            tags = registry.parse_tags(tags, what="tag")
        if not tags and not remove:
            raise CorralError("usage: corral runs tag ID key=value [key=value...] [--remove KEY]")
        run_id = self.resolve(ref)["id"]  # before the ledger is opened for writing: an unknown run creates nothing
        return registry.add_tags(self.campaign.ledger(), run_id, dict(tags), time.time(), remove)

    def note(self, ref: str, text: str) -> list[dict[str, Any]]:
        run_id = self.resolve(ref)["id"]
        return registry.add_note(self.campaign.ledger(), run_id, text, time.time())

    def merge(self, refs: Sequence[str], into: str | None, prefer: str | None = None, force: bool = False,
              dedupe_by: str | None = None) -> Outcome:
        """``corral runs merge A B... --into NAME [--prefer RUN|newest] [--force] [--dedupe-by KEY]``. Runs
        whose configurations differ are refused (``ConfigsDiffer``, naming the keys) unless ``force``.
        ``dedupe_by`` (an item parameter, a result field, or ``STAGE.FIELD``) keeps one item per value."""
        if not refs or not into:
            raise CorralError("usage: corral runs merge RUN [RUN...] --into NAME [--prefer RUN|newest] [--force]")
        if not RUN_ID.fullmatch(into):
            raise CorralError(f"--into {into!r}: a run id is made of letters, digits, '.', '_' and '-', starts "
                              f"with a letter or a digit and is at most 200 characters (e.g. --into merged-1)")
        ids = [self.resolve(r)["id"] for r in refs]
        if prefer and prefer != "newest":
            prefer = self.resolve(prefer)["id"]
        if dedupe_by is not None and not dedupe_by.strip():
            raise CorralError("--dedupe-by needs a key: an item parameter, a result field or STAGE.FIELD "
                              "(e.g. --dedupe-by collect.action_hash)")
        return merge_runs(self.campaign.ledger(), ids, into, prefer, time.time(), force=force, dedupe_by=dedupe_by)

    def ingest(self, paths: Sequence[str | Path]) -> list[Outcome]:
        """``corral ingest PATH...``: runs from another ledger file or a results folder, into this ledger."""
        sources = [source for path in paths for source in read_sources(Path(path))]
        ledger = self.campaign.ledger()
        return ingest_sources(ledger, sources, time.time(), campaign=self.campaign.loaded)
