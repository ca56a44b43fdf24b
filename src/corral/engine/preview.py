"""``corral run --dry-run``: what each stage's first submission would send, sending nothing."""

from __future__ import annotations

from typing import Any

from corral.backends import make_backend
from corral.backends.base import StageContext, SubmissionRecord, TaskSpec
from corral.spec import LoadedCampaign
from corral.spec.items import Item
from corral.states import SubmissionState

DRY_RUN_ID = "dry-run"


def preview_submissions(loaded: LoadedCampaign, items: list[Item]) -> dict[str, Any]:
    """Per stage, the backend's description of one submission of all its tasks (scripts, commands)."""
    out: dict[str, Any] = {}
    run_dir = loaded.root / loaded.spec.workdir / "runs" / DRY_RUN_ID
    made: dict[str, Any] = {}
    for position, name in enumerate(loaded.stage_order()):
        stage = loaded.spec.stages[name]
        settings = loaded.backends.get(stage.backend)
        if settings is None:
            continue
        backend = made.get(stage.backend) or make_backend(stage.backend, settings)
        made[stage.backend] = backend
        if stage.per == "all":
            tasks = [TaskSpec(task_id=1, key="t1", stage=name, item_idx=-1, item_id="all", item_key="all",
                              params={}, attempt=1)]
        else:
            first = position * len(items) + 1
            tasks = [TaskSpec(task_id=first + n, key=f"t{first + n}", stage=name, item_idx=item.index,
                              item_id=item.item_id, item_key=item.key, params=item.params, attempt=1)
                     for n, item in enumerate(items)]
        context = StageContext(name=name, spec=stage, run_id=DRY_RUN_ID, root=loaded.root, run_dir=run_dir,
                               ledger_url="")
        record = SubmissionRecord(id=position + 1, stage=name, idempotency_key=f"corral-{DRY_RUN_ID}-{position + 1}",
                                  remote_id=None, state=SubmissionState.SUBMITTING, created_at=0.0, submitted_at=None,
                                  task_count=len(tasks))
        described = backend.preview(context, record, tasks)
        if described is not None:
            out[name] = described
    for backend in made.values():
        backend.close()
    return out
