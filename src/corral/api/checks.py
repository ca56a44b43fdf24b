"""What ``corral check`` validates without running anything, and the options every command shares."""

from __future__ import annotations

import os
from typing import Any

from corral.api.preflight import preflight
from corral.errors import CorralError, SpecError
from corral.spec import LoadedCampaign
from corral.spec.models import VerifyCommand
from corral.templates import fill


def selection(limit: int | None = None, shard: str | tuple[int, int] | None = None, base=None):
    """The item selection of ``--limit`` and ``--shard I/N`` (a tuple ``(i, n)`` is taken as is)."""
    from corral.engine.runs import Selection

    if base is not None and limit is None and shard is None:
        return base
    if limit is not None and limit < 1:
        raise CorralError("--limit must be at least 1")
    if isinstance(shard, str):
        shard = Selection.parse_shard(shard)
    elif shard is not None:
        shard = Selection.parse_shard(f"{shard[0]}/{shard[1]}")
    if base is not None:
        return Selection(limit=limit if limit is not None else base.limit, shard=shard or base.shard)
    return Selection(limit=limit, shard=shard)


MAX_LEASE = 7 * 86400.0


def controller(controller_id: str | None = None, lease: float | None = None) -> tuple[str | None, float | None]:
    """This controller's id and lease on a shared ledger: the values given, else ``CORRAL_CONTROLLER_ID``
    or ``CORRAL_HOST`` and ``CORRAL_LEASE`` (None leaves the engine's defaults: the host name, 60 s)."""
    if lease is not None and not (0 < lease <= MAX_LEASE):  # also nan
        raise CorralError(f"--lease must be a number of seconds between 0 and {MAX_LEASE:.0f}, got {lease}")
    chosen = controller_id or os.environ.get("CORRAL_CONTROLLER_ID") or os.environ.get("CORRAL_HOST") or None
    if lease is None and os.environ.get("CORRAL_LEASE"):
        try:
            lease = float(os.environ["CORRAL_LEASE"])
        except ValueError:
            lease = None
        if lease is not None and not (0 < lease <= MAX_LEASE):
            raise CorralError(f"CORRAL_LEASE must be a number of seconds between 0 and {MAX_LEASE:.0f}, got {lease}")
    return chosen, lease


def check_stage(loaded: LoadedCampaign, stage: str | None) -> None:
    if stage is not None and stage not in loaded.spec.stages:
        raise SpecError(f"no stage {stage!r}", file=str(loaded.path), key="--stage",
                        expected="one of " + ", ".join(loaded.spec.stages))


def check_templates(loaded: LoadedCampaign, name: str, stage, sample: dict[str, Any]) -> None:
    if stage.per == "all":
        fields: dict[str, Any] = {}
    else:
        fields = dict(sample)
    fields.update(run_id="r", stage=name, attempt=1, task_id=1, item_id="i", item_key="k", root=".")
    templates = [("run", t) for t in (stage.run or [])] + [("outputs", t) for t in stage.outputs]
    if stage.skip_if and not stage.skip_callable:
        templates += [("skip_if", t) for t in stage.skip_if]
    if isinstance(stage.verify, VerifyCommand):
        templates += [("verify", t) for t in stage.verify.run]
    templates += [("verify", t) for t in stage.verify_paths]
    for key, template in templates:
        try:
            fill(template, fields)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise SpecError(f"template {template!r} cannot be filled: {exc!r}", file=str(loaded.path),
                            key=f"stages.{name}.{key}",
                            expected="fields among " + ", ".join(sorted(fields))) from None


#: how many items, spread over the campaign, ``corral check`` fills the templates of
TEMPLATE_SAMPLE = 20


def sampled_template_failures(loaded: LoadedCampaign, name: str, stage, items: list[Any]) -> dict[str, Any] | None:
    """Fill the stage's templates for a sample of the items. Every sampled item failing is an error
    in the template itself (raised); some failing is what the run would meet: how many, and an
    estimate over all items."""
    step = max(1, len(items) // TEMPLATE_SAMPLE)
    sampled = items[::step][:TEMPLATE_SAMPLE] if stage.per != "all" else items[:1]
    failures: list[tuple[Any, SpecError]] = []
    for item in sampled or [None]:
        try:
            check_templates(loaded, name, stage, item.params if item is not None else {})
        except SpecError as exc:
            failures.append((item, exc))
    if not failures:
        return None
    if len(failures) == max(1, len(sampled)):
        raise failures[0][1]
    return {"sampled": len(sampled), "failures": len(failures), "items": len(items),
            "estimated": round(len(failures) / len(sampled) * len(items)),
            "examples": [f"{item.key}: {exc.key}: {exc.detail}" for item, exc in failures[:3]]}


def check_callables(loaded: LoadedCampaign, name: str, stage) -> None:
    """A ``call:``, ``parse:`` (or skip_if/verify callable) whose module or function cannot be found
    fails at check time, not once per task. Both are looked up in the module's source; nothing of
    the user's code is imported."""
    from corral.llm.projection import check_llm_stage
    from corral.spec.callables import check_reference

    check_llm_stage(loaded, name, stage)
    refs = [("call", stage.call), ("skip_if", stage.skip_callable), ("verify", stage.verify_callable),
            ("parse", stage.parse)]
    for key, ref in refs:
        if ref:
            # Beside the campaign file first (as workers see it), then the installed packages.
            check_reference(ref, [loaded.root], file=str(loaded.path), key=f"stages.{name}.{key}")


def check_extras(loaded: LoadedCampaign) -> None:
    """The optional modules the stages need, before the items are read: a plain install learns which
    extra to add first, whatever else the campaign still lacks."""
    from corral.llm.projection import is_llm, require_llm_extra

    for name, stage in loaded.spec.stages.items():
        if is_llm(loaded, stage):
            require_llm_extra(loaded, name, stage)


def check_stages(loaded: LoadedCampaign, sample: dict[str, Any], stages=None) -> None:
    from corral.engine.results_files import check_template as check_results_template

    check_results_template(loaded, sample)
    for name in stages if stages is not None else loaded.spec.stages:
        stage = loaded.spec.stages[name]
        check_templates(loaded, name, stage, sample)
        check_callables(loaded, name, stage)


def plan(campaign, chosen, preview: bool = False) -> dict[str, Any]:
    """``corral check --json``: the items, tasks per stage, backends, ledger, and whether ``corral run``
    would continue a run; with ``preview``, what the backends would send."""
    from corral.engine.runs import check_selection, find_resumable, snapshot_hash
    from corral.spec import ItemSource

    loaded, spec = campaign.loaded, campaign.spec
    campaign.check_write_locations()
    campaign.check_ledger_driver()
    check_extras(loaded)
    source = ItemSource(spec.items, campaign.root, loaded.path, blame=loaded.blame)
    items = list(source.items(limit=chosen.limit, shard=chosen.shard))
    check_selection(loaded, chosen, len(items), source)
    sample = items[0].params if items else {}
    stages = {}
    from corral.engine.results_files import check_template as check_results_template

    check_results_template(loaded, sample)
    resumable, adds, drops = None, 0, 0
    ledger_path = campaign.sqlite_path() if campaign.ledger_url.startswith("sqlite") else None
    known = ledger_path is None or ledger_path.exists()
    if known:
        try:
            run = find_resumable(campaign.ledger(), loaded, chosen)
            resumable = run["id"] if run else None
            if run is not None:
                from corral.engine.continuing import membership_preview

                adds, drops = membership_preview(campaign.ledger(), loaded, run, chosen)
        except CorralError:
            resumable = None
    for name in loaded.stage_order():
        stage = spec.stages[name]
        failures = sampled_template_failures(loaded, name, stage, items)
        check_callables(loaded, name, stage)
        stages[name] = {
            "tasks": 1 if stage.per == "all" else len(items), "per": stage.per, "needs": stage.needs,
            "backend": stage.backend, "kind": "call" if stage.call else "run",
            "action": stage.call or " ".join(stage.run or []),
            "retries": stage.retries.max, "timeout": stage.timeout, "template_failures": failures,
        }
        if stage.request is not None:
            from corral.llm.projection import project

            billed = billed_requests(campaign, name, resumable) if known else None
            stages[name].update(kind="request", action=f"LLM request ({stage.request.get('model') or 'model'})",
                                llm=project(loaded, name, stage, items, billed=billed))
    found = preflight(loaded)
    for name, slots in found.slots.items():
        stages[name]["slots"] = slots
    preview_part = {}
    if preview:
        from corral.engine.preview import preview_submissions

        preview_part = {"submissions": preview_submissions(loaded, items)}
    return {
        "campaign": str(loaded.path), "name": spec.name, "items": len(items), **preview_part,
        "stages": stages, "tasks": sum(s["tasks"] for s in stages.values()),
        "backends": {n: b.model_dump(mode="json") for n, b in loaded.backends.items()},
        "ledger": display_url(campaign.ledger_url),
        "config_hash": snapshot_hash(loaded, chosen), "resumes": resumable,
        "adds_items": adds, "drops_items": drops,
        "sample_item": sample, "gpus": found.to_dict()["gpus"], "secrets": found.to_dict()["secrets"],
    }


#: the newest runs of a campaign whose billed requests ``corral check`` looks at for a cost range
RUNS_LOOKED_AT = 20


def billed_requests(campaign, stage: str, resumable: str | None):
    """What the ledger knows of a stage's billed requests, for its cost range: the run ``corral run``
    would continue (with what it spent), else the newest run of the campaign that billed some."""
    from corral.ledger.reads import billed_requests as read_billed, stage_spending
    from corral.llm.cost_range import MIN_OBSERVED, Billed

    try:
        ledger = campaign.ledger()
        runs = [r["id"] for r in ledger.find_runs(name=campaign.spec.name)][:RUNS_LOOKED_AT]
        if resumable in runs:
            runs.remove(resumable)
            runs.insert(0, resumable)
        for run_id in runs:
            rows = read_billed(ledger, run_id, stage)
            if len(rows) < MIN_OBSERVED:
                continue
            spent, done = stage_spending(ledger, run_id, stage) if run_id == resumable else (0.0, 0)
            return Billed(run_id=run_id, requests=rows, continues=run_id == resumable, spent_usd=spent, done=done)
    except CorralError:   # a ledger that cannot be read: the range comes from the assumptions
        return None
    return None


def display_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
