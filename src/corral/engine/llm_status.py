"""What `corral status` says of an LLM stage while it runs: the provider's own request counts
for the batches in flight (as the last polls recorded them) and an ETA.

Everything comes from the ledger: open submissions (with the counts each poll wrote into their
info) and the turnarounds the backend learned. The ETA of a batch in flight is what its
provider-side progress implies (time so far x requests left / requests done) or, before any
request is done, the median turnaround less the time it has run; requests not yet sent add a
median turnaround per round of ``batches_in_flight`` batches. Backup batches of the tail: how many
were sent (and refused by the cost cap), their estimated cost, and the billed cost of the answers
dropped because the other batch of their pair answered first.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from corral.engine.learning import Learning
from corral.ledger import loads
from corral.llm.projection import is_llm
from corral.spec import LoadedCampaign
from corral.states import TaskState


def llm_progress(loaded: LoadedCampaign, learning: Learning, open_subs: list[dict[str, Any]],
                 counts: dict[str, dict[str, int]], now: float) -> dict[str, Any]:
    """Per LLM stage: batches in flight, the provider's request counts, and the ETA in seconds."""
    out: dict[str, Any] = {}
    for name, stage in loaded.spec.stages.items():
        if not is_llm(loaded, stage):
            continue
        settings = loaded.backends[stage.backend]
        state = learning.backend(stage.backend).get("state") or {}
        turnarounds = state.get("turnarounds") or []
        typical = float(median(turnarounds)) if turnarounds else float(settings.expected_turnaround)
        batches = [s for s in open_subs if s["stage"] == name and s["remote_id"]
                   and not str(s["remote_id"]).startswith("none:")]
        total = done = failed = 0
        eta_in_flight = 0.0
        for sub in batches:
            info = loads(sub["info"]) or {}
            provider = info.get("provider") or {}
            size = int(provider.get("total") or sub["task_count"])
            finished = int(provider.get("done") or 0) + int(provider.get("failed") or 0)
            total, done, failed = total + size, done + int(provider.get("done") or 0), \
                failed + int(provider.get("failed") or 0)
            elapsed = max(0.0, now - (sub["submitted_at"] or sub["created_at"]))
            if 0 < finished < size:
                left = elapsed * (size - finished) / finished
            elif finished >= size:
                left = 0.0
            else:
                left = max(0.0, typical - elapsed)
            eta_in_flight = max(eta_in_flight, left)
        hedges = (learning.backend(stage.backend).get("hedges") or {}).get(name) or {}
        pairs = sum(1 for sub in batches if ((loads(sub["info"]) or {}).get("backup") or {}).get("state") == "sent")
        states = counts.get(name, {})
        not_sent = sum(states.get(str(s), 0) for s in (TaskState.PENDING, TaskState.WAITING))
        per_round = max(1, (total // len(batches)) if batches else settings.max_requests_per_batch) * \
            settings.batches_in_flight
        rounds = math.ceil(not_sent / per_round) if not_sent else 0
        out[name] = {"batches_in_flight": len(batches), "requests_in_flight": total, "provider_done": done,
                     "provider_failed": failed, "not_sent": not_sent, "median_turnaround_s": round(typical, 1),
                     "turnaround_basis": "learned" if turnarounds else "expected_turnaround",
                     "eta_s": round(eta_in_flight + rounds * typical, 1) if (batches or not_sent) else 0.0,
                     "backups_sent": int(hedges.get("sent") or 0), "backups_in_flight": pairs,
                     "backups_refused": int(hedges.get("refused") or 0),
                     "backup_estimated_cost": float(hedges.get("estimated_cost") or 0.0),
                     "backup_extra_cost": float(hedges.get("extra_cost") or 0.0),
                     "flex_sent": int(hedges.get("flex_sent") or 0),
                     "flex_answered": int(hedges.get("flex_answered") or 0),
                     "flex_refused": int(hedges.get("flex_refused") or 0) + int(hedges.get("flex_rejected") or 0),
                     "flex_lost": int(hedges.get("flex_lost") or 0),
                     "flex_withdrawn": int(hedges.get("flex_withdrawn") or 0)}
    return out
