"""What ``corral check`` validates without running anything, and the options every command shares."""

from __future__ import annotations

import os
from typing import Any

from corral.errors import CorralError, SpecError
from corral.spec import LoadedCampaign


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


def controller(controller_id: str | None = None, lease: float | None = None) -> tuple[str | None, float | None]:
    """This controller's id and lease on a shared ledger: the values given, else ``CORRAL_CONTROLLER_ID``
    or ``CORRAL_HOST`` and ``CORRAL_LEASE`` (None leaves the engine's defaults: the host name, 60 s)."""
    if lease is not None and lease <= 0:
        raise CorralError("--lease must be a positive number of seconds")
    chosen = controller_id or os.environ.get("CORRAL_CONTROLLER_ID") or os.environ.get("CORRAL_HOST") or None
    if lease is None and os.environ.get("CORRAL_LEASE"):
        try:
            lease = float(os.environ["CORRAL_LEASE"])
        except ValueError:
            lease = None
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
    for key, template in templates:
        try:
            template.format_map(fields)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise SpecError(f"template {template!r} cannot be filled: {exc!r}", file=str(loaded.path),
                            key=f"stages.{name}.{key}",
                            expected="fields among " + ", ".join(sorted(fields))) from None


def check_callables(loaded: LoadedCampaign, name: str, stage) -> None:
    """A ``call:`` (or skip_if/verify callable) whose module cannot be found fails at check time,
    not once per task. Only the module is looked up; nothing of the user's code is imported."""
    import importlib.machinery
    import importlib.util

    from corral.llm.projection import check_llm_stage

    check_llm_stage(loaded, name, stage)
    refs = [("call", stage.call), ("skip_if", stage.skip_callable), ("verify", stage.verify_callable),
            ("parse", stage.parse)]
    for key, ref in refs:
        if not ref:
            continue
        module = ref.split(":", 1)[0]
        top = module.split(".", 1)[0]
        # Beside the campaign file first (as workers see it), then the installed packages; the
        # top-level name is enough, and sys.path is left alone (several controllers may share it).
        try:
            found = (importlib.machinery.PathFinder.find_spec(top, [str(loaded.root)]) is not None
                     or importlib.util.find_spec(top) is not None)
        except (ImportError, ValueError):
            found = False
        if not found:
            raise SpecError(f"cannot find the module {module!r} of {ref!r}", file=str(loaded.path),
                            key=f"stages.{name}.{key}",
                            expected=f"{module.replace('.', '/')}.py beside the campaign file, or an "
                                     "installed package")


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
    from corral.engine.runs import find_resumable, snapshot_hash
    from corral.spec import ItemSource

    loaded, spec = campaign.loaded, campaign.spec
    campaign.check_ledger_driver()
    source = ItemSource(spec.items, campaign.root, loaded.path)
    items = list(source.items(limit=chosen.limit, shard=chosen.shard))
    sample = items[0].params if items else {}
    stages = {}
    from corral.engine.results_files import check_template as check_results_template

    check_results_template(loaded, sample)
    for name in loaded.stage_order():
        stage = spec.stages[name]
        check_templates(loaded, name, stage, sample)
        check_callables(loaded, name, stage)
        stages[name] = {
            "tasks": 1 if stage.per == "all" else len(items), "per": stage.per, "needs": stage.needs,
            "backend": stage.backend, "kind": "call" if stage.call else "run",
            "action": stage.call or " ".join(stage.run or []),
            "retries": stage.retries.max, "timeout": stage.timeout,
        }
        if stage.request is not None:
            from corral.llm.projection import project

            stages[name].update(kind="request", action=f"LLM request ({stage.request.get('model') or 'model'})",
                                llm=project(loaded, name, stage, items))
    resumable, adds, drops = None, 0, 0
    ledger_path = campaign.sqlite_path() if campaign.ledger_url.startswith("sqlite") else None
    if ledger_path is None or ledger_path.exists():
        try:
            run = find_resumable(campaign.ledger(), loaded, chosen)
            resumable = run["id"] if run else None
            if run is not None:
                from corral.engine.continuing import membership_preview

                adds, drops = membership_preview(campaign.ledger(), loaded, run, chosen)
        except CorralError:
            resumable = None
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
        "sample_item": sample,
    }


def display_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
