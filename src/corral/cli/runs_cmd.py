"""``corral runs``: the run registry (list, show, diff, tag, note, merge, latest) and ``corral ingest``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from corral.cli.formats import FORMAT, OUTPUT, chosen_format, emit, write_text
from corral.errors import CorralError
from corral.states import ACTIVE, TERMINAL

ACTIONS = ("show", "diff", "tag", "note", "merge", "latest")
LIST_COLUMNS = ["id", "status", "created", "items", "done", "failed", "progress", "tags", "code_revision", "host"]


def _split(args: list[str] | None) -> tuple[list[str], str | None, list[str]]:
    """(campaign args, action, action args): the action is the first argument that names one."""
    args = list(args or [])
    for index, arg in enumerate(args[:2]):
        if arg in ACTIONS:
            return args[:index], arg, args[index + 1:]
    return args, None, []


def runs(args: Optional[List[str]] = typer.Argument(
             None, help="[CAMPAIGN.yaml] [show ID | diff A B | tag ID k=v... | note ID TEXT | merge A B... | latest]",
             show_default=False),
         ledger: Optional[str] = typer.Option(None, "--ledger", help="Ledger URL or SQLite path."),
         where: Optional[List[str]] = typer.Option(
             None, "--where", "-w", help="Only runs where KEY=VALUE (or KEY!=VALUE, VALUE a|b): a config path "
                                         "(model, params.seed, backends.local.workers), a tag, status, host, id."),
         all_campaigns: bool = typer.Option(False, "--all", help="Runs of every campaign in this ledger."),
         into: Optional[str] = typer.Option(None, "--into", help="merge: the id of the merged run."),
         prefer: Optional[str] = typer.Option(
             None, "--prefer", help="merge: whose result wins for an item done in several runs: a run id or "
                                    "'newest' (default)."),
         dedupe_by: Optional[str] = typer.Option(
             None, "--dedupe-by", help="merge: keep one item per value of KEY (an item parameter, a result "
                                       "field, or STAGE.FIELD such as collect.action_hash)."),
         remove: Optional[List[str]] = typer.Option(None, "--remove", help="tag: remove this tag."),
         force: bool = typer.Option(False, "--force", help="merge: merge runs whose configurations differ (the "
                                                           "merged run lists the keys in config_differs)."),
         fmt: Optional[str] = FORMAT, out_file: Optional[Path] = OUTPUT,
         as_json: bool = typer.Option(False, "--json", help="Same as --format json.")) -> None:
    """The runs in the ledger (the registry): list and filter, show, diff, tag, note, merge, latest.

    corral runs [--where KEY=VALUE]... | runs show ID | runs diff A B | runs tag ID KEY=VALUE... |
    runs note ID TEXT | runs merge A B... --into NAME [--prefer RUN] [--force] [--dedupe-by KEY] | runs latest [--where KEY=VALUE]...
    """
    from corral.cli.main import _campaign
    from corral.cli.output import err, out, when

    campaign_args, action, rest = _split(args)
    fmt = chosen_format(fmt, as_json, out_file)
    campaign, _ = _campaign(campaign_args, ledger)
    registry = campaign.registry()
    try:
        if action is None:
            rows = registry.list(where=where or [], all_campaigns=all_campaigns)
            shown = []
            for row in rows:
                row["created"] = when(row["created_at"])
                # A percentage to read; CSV and JSON keep the fraction.
                shown.append({**row, "progress": row["progress"] if fmt in ("csv", "json") else
                              f"{row['progress']:.1%}"})
            columns = LIST_COLUMNS
            if any(row.get("budget") for row in rows):   # tasks the budget stopped: their own column
                at = LIST_COLUMNS.index("failed") + 1
                columns = LIST_COLUMNS[:at] + ["budget"] + LIST_COLUMNS[at:]
            emit(shown, columns, fmt, out_file, data=rows)
        elif action == "show":
            _need(rest, 1, "corral runs show ID")
            _show(registry.show(rest[0]), fmt, out_file)
        elif action == "latest":
            _show(registry.latest(where=where or [], all_campaigns=all_campaigns), fmt, out_file)
        elif action == "diff":
            _need(rest, 2, "corral runs diff A B")
            diff = registry.diff(rest[0], rest[1])
            if fmt == "json":
                write_text(_json(diff), out_file)
            elif fmt == "table" and out_file is None:
                if not diff["changes"]:
                    out.print(f"{diff['a']} and {diff['b']} have the same configuration", highlight=False)
                else:
                    out.print(diff["diff"], highlight=False, markup=False)
            else:
                rows = [{"key": c["key"], diff["a"]: c["a"] if c["in_a"] else "(absent)",
                         diff["b"]: c["b"] if c["in_b"] else "(absent)"} for c in diff["changes"]]
                emit(rows, ["key", diff["a"], diff["b"]], fmt, out_file, title=f"{diff['a']} vs {diff['b']}")
        elif action == "tag":
            _need(rest, 1, "corral runs tag ID key=value [key=value...] [--remove KEY]")
            tags = registry.tag(rest[0], rest[1:], remove=remove or [])
            err.print(f"tags: {', '.join(f'{k}={v}' for k, v in tags.items()) or '(none)'}", highlight=False)
        elif action == "note":
            _need(rest, 2, "corral runs note ID TEXT")
            notes = registry.note(rest[0], " ".join(rest[1:]))
            err.print(f"{len(notes)} notes on run {registry.resolve(rest[0])['id']}", highlight=False)
        elif action == "merge":
            outcome = registry.merge(rest, into, prefer, force=force, dedupe_by=dedupe_by)
            data = outcome.as_dict()
            if fmt == "json":
                write_text(_json(data), out_file)
            else:
                verb = "created" if outcome.created else "updated"
                err.print(f"{verb} run {into}: {outcome.items_added} items and {outcome.tasks_added} tasks added, "
                          f"{outcome.tasks_updated} tasks replaced, {outcome.unchanged} unchanged; chosen from "
                          + (", ".join(f"{k}: {v}" for k, v in outcome.chosen.items()) or "-"), highlight=False)
                if outcome.dedupe_by:
                    err.print(f"{len(outcome.duplicates)} items left out as duplicates by {outcome.dedupe_by}, "
                              f"{outcome.without_key} items without {outcome.dedupe_by} kept", highlight=False)
                if outcome.config_differs:
                    err.print(f"the merged runs' configurations differ in {', '.join(outcome.config_differs)}; "
                              f"run {into} keeps the keys they share", highlight=False)
    finally:
        campaign.close()


def _need(rest: list[str], count: int, usage: str) -> None:
    if len(rest) < count:
        raise CorralError(f"usage: {usage}")


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"


def _show(record: dict, fmt: str, out_file: Path | None) -> None:
    from corral.cli.output import when

    if fmt == "json":
        write_text(_json(record), out_file)
        return
    import yaml

    fields = [("id", record["id"]), ("campaign", f"{record['name']} ({record['campaign']})"),
              ("status", record["status"]), ("created", when(record["created_at"])),
              ("finished", when(record["finished_at"])), ("config hash", record["config_hash"]),
              ("code revision", record["code_revision"] or "-"), ("host", record["host"] or "-"),
              ("versions", ", ".join(f"{k} {v}" for k, v in record["versions"].items()) or "-"),
              ("tags", ", ".join(f"{k}={v}" for k, v in record["tags"].items()) or "-"),
              ("selection", ", ".join(f"{k}={v}" for k, v in record["selection"].items() if v not in (None, [], {}))
               or "-"), ("items", record["items"])]
    for state in (*TERMINAL, *reversed(ACTIVE)):
        fields.append((str(state), record["totals"].get(state, 0)))
    for note in record["notes"]:
        fields.append(("note", f"{when(note.get('at'))} {note['text']}"))
    if fmt == "table" and out_file is None:
        from corral.cli.output import out

        width = max(len(k) for k, _ in fields)
        for key, value in fields:
            out.print(f"{key:<{width}}  {value}", highlight=False, markup=False)
        out.print("config:", highlight=False)
        out.print(yaml.safe_dump(record["config"], sort_keys=False).rstrip(), highlight=False, markup=False)
        return
    rows = [{"field": k, "value": v} for k, v in fields]
    rows.append({"field": "config", "value": yaml.safe_dump(record["config"], sort_keys=False)})
    emit(rows, ["field", "value"], fmt, out_file, title=f"run {record['id']}")


def ingest(paths: List[Path] = typer.Argument(..., help="Ledger files (SQLite) or results folders to import."),
           campaign_file: Optional[Path] = typer.Option(None, "--campaign", "-c",
                                                        help="The campaign file (default ./corral.yaml)."),
           ledger: Optional[str] = typer.Option(None, "--ledger", help="Ledger URL or SQLite path."),
           as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON.")) -> None:
    """Import runs from another machine's ledger file or a results folder into this ledger.

    Ingesting the same source twice adds nothing. Two different finished results for one item are
    listed as conflicts and left as they are here; then the exit status is 1.
    """
    from corral.cli.main import _campaign
    from corral.cli.output import err, print_json

    campaign, _ = _campaign([str(campaign_file)] if campaign_file else [], ledger)
    try:
        outcomes = campaign.ingest([str(p) for p in paths])
    finally:
        campaign.close()
    conflicts = [c for o in outcomes for c in o.conflicts]
    if as_json:
        print_json([o.as_dict() for o in outcomes])
    else:
        for o in outcomes:
            verb = "new run" if o.created else "run"
            err.print(f"{verb} {o.target}: {o.items_added} items and {o.tasks_added} tasks added, {o.tasks_updated} "
                      f"tasks updated, {o.unchanged} already here, {len(o.conflicts)} conflicts; {o.runnable_items} items "
                      "still to run (`corral run` runs them)", highlight=False)
        for c in conflicts[:50]:
            err.print(f"conflict: {c['stage']} {c['item_key']} ({c['item_id']}): here {c['here']!r}, in "
                      f"{c['from']} {c['there']!r}", highlight=False, markup=False)
        if len(conflicts) > 50:
            err.print(f"... and {len(conflicts) - 50} more conflicts (--json lists them all)")
    if conflicts:
        raise typer.Exit(1)
