"""``corral reparse``: the kept raw answers of LLM stages run through ``parse`` again, nothing sent.

A task whose answer failed to parse (failed for good, or pending its retry) becomes done when the
current ``parse`` reads the answer; what waited on it, or was cancelled because of it, is released
in the same transaction. Tasks already done keep their result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.backends.llm_batch import LlmBatchBackend
from corral.engine.record import Changes
from corral.errors import CorralError
from corral.ledger import dumps
from corral.ledger import engine_queries as queries
from corral.states import ErrorClass, Outcome, RunStatus

if TYPE_CHECKING:
    from corral.engine.engine import Engine


@dataclass
class ReparseReport:
    stages: list[str]
    answers: int = 0        # kept answers read
    fixed: int = 0          # parse failures that became done
    still_failing: int = 0  # parse failures the current parse still cannot read
    released: int = 0       # dependents waiting again (they had been cancelled because of a fixed task)


def llm_stages(engine: Engine, stage: str | None) -> list[str]:
    """The stages to reparse: ``stage`` (refused unless it runs on an LLM batch backend), or every
    LLM stage of the campaign."""
    def is_llm(name: str) -> bool:
        return isinstance(engine.backends.get(engine.stages[name].spec.backend), LlmBatchBackend)

    if stage is not None:
        if not is_llm(stage):
            backend = engine.stages[stage].spec.backend
            kind = engine.campaign.backends[backend].type if backend in engine.campaign.backends else backend
            raise CorralError(f"stage {stage!r} runs on backend {backend!r} ({kind}): reparse reads the kept "
                              "answers of stages on an LLM batch backend (openai_batch, anthropic_batch); "
                              "use `corral retry` to run other stages again")
        return [stage]
    names = [name for name in engine.order if is_llm(name)]
    if not names:
        raise CorralError("no stage of this campaign runs on an LLM batch backend (openai_batch, anthropic_batch): "
                          "nothing to reparse")
    return names


def reparse(engine: Engine, stage: str | None = None) -> ReparseReport:
    names = llm_stages(engine, stage)
    report = ReparseReport(stages=names)
    with engine.ledger.tick_lock(engine.claims.lock_name, wait=True):
        now = engine.clock.now()
        for name in names:
            backend = engine.backends[engine.stages[name].spec.backend]
            assert isinstance(backend, LlmBatchBackend)
            results = backend.reparse(engine.stages[name])
            report.answers += len(results)
            with engine.ledger.write() as conn:
                rows = queries.lock_task_rows(conn, engine.run_id, list(results))
                failures = {tid: row for tid, row in rows.items()
                            if row["state"] in queries.REPARSABLE and row["error_class"] == ErrorClass.PARSE}
                parsed = [(tid, dumps(results[tid].result)) for tid in failures
                          if results[tid].outcome == Outcome.DONE]
                fixed = queries.write_reparsed(conn, engine.run_id, parsed)
                report.fixed += len(fixed)
                report.still_failing += len(failures) - len(fixed)
                if not fixed:
                    continue
                changes = Changes()
                changes.done[name].extend(failures[tid]["item_idx"] for tid in fixed)
                changes.completed = len(fixed)
                report.released += engine._reopen_dependents(conn, {name: list(changes.done[name])})
                engine.recorder.release(conn, changes, now)
                engine.ledger.set_run_status(conn, engine.run_id, RunStatus.ACTIVE, now)
                engine.ledger.add_events(conn, changes.events + [{
                    "at": now, "run_id": engine.run_id, "kind": "reparse", "stage": name, "count": len(fixed),
                    "message": f"{len(fixed)} parse failures done from their kept answers"}])
    if report.fixed:
        from corral.engine.engine import TickReport

        engine._finish(TickReport())
    engine.log(f"reparse: {report.answers} kept answers of {', '.join(names)}; {report.fixed} parse failures "
               f"now done, {report.still_failing} still failing, {report.released} dependents waiting again")
    return report
