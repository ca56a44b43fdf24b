"""Questions about one task that only its backend can answer (where it ran remotely)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.backends import make_backend
from corral.backends.base import StageContext, SubmissionRecord
from corral.ledger import Ledger, loads
from corral.ledger.engine_queries import submission_row
from corral.spec import LoadedCampaign


def remote_details(loaded: LoadedCampaign, ledger: Ledger, run_id: str, run_dir: Path,
                   task: dict[str, Any]) -> dict[str, Any] | None:
    """The backend's description of where ``task`` last ran (a SLURM job and its usage), if any."""
    if not task.get("submission_id"):
        return None
    with ledger.read() as conn:
        row = submission_row(conn, task["submission_id"])
    if row is None:
        return None
    info = loads(row["info"]) or {}
    stage_spec = loaded.spec.stages.get(row["stage"])
    backend_name = info.get("backend") or (stage_spec.backend if stage_spec else None)
    settings = loaded.backends.get(backend_name or "")
    if stage_spec is None or settings is None:
        return None
    backend = make_backend(backend_name, settings)
    try:
        stage = StageContext(name=row["stage"], spec=stage_spec, run_id=run_id, root=loaded.root, run_dir=run_dir,
                             ledger_url=ledger.url)
        record = SubmissionRecord(id=row["id"], stage=row["stage"], idempotency_key=row["idempotency_key"],
                                  remote_id=row["remote_id"], state=row["state"], created_at=row["created_at"],
                                  submitted_at=row["submitted_at"], task_count=row["task_count"], info=info)
        return backend.describe_task(stage, record, task["id"])
    finally:
        backend.close()
