"""Collecting what an LLM batch brought back: each result line to its task's result, the raw
answers kept for ``corral reparse``, billed usage into the token calibration, turnarounds into
the straggler decision, and a batch refused as a whole (token limit, validation)."""

from __future__ import annotations

from corral.backends.base import PollResult, StageContext, SubmissionRecord, TaskResult
from corral.backends.llm_raw import SUFFIX, RawWriter, raw_path, read_answers
from corral.backends.llm_results import (
    SENT_AGAIN_WHOLE,
    BatchStatus,
    classify_line,
    task_of,
    validation_failure,
)
from corral.llm.scheduler import State
from corral.states import ErrorClass, Outcome


class BatchCollection:
    """Mixed into LlmBatchBackend, whose state, parser, prices and provider calls it uses."""

    def _collect(self, stage: StageContext, sub: SubmissionRecord, status: BatchStatus,
                 open_subs: list[SubmissionRecord], *, raw_name: str | None = None,
                 learn_turnaround: bool = True) -> PollResult:
        """``raw_name``: the raw answers' file when not the submission's own (a backup batch);
        ``learn_turnaround``: False for a batch cancelled because its pair ended first."""
        state = self.state(stage)
        task_ids = [int(t) for t in sub.info.get("tasks") or []]
        poll = PollResult(finished=True, lost_message="the batch ended without a result for this request")
        if status.failed:
            in_flight = sum(self._in_flight_of(s, state).tokens for s in open_subs)
            poll.results = self._whole_batch_failed(state, task_ids, status, in_flight)
            poll.info = {"failed": [list(e) for e in status.errors[:20]]}
            self.save_state()
            return poll
        state.batch_accepted()
        parse = self.parser(stage)
        model = sub.info.get("model")
        price = self.price(model)
        prefix = sub.info.get("prefix") or self.prefix(stage)
        billed_in = billed_out = ok = unreadable = 0
        started, finished = sub.submitted_at or sub.created_at, self.now()
        path = raw_path(stage.run_dir, stage.name, sub.id)
        raw = RawWriter(path if raw_name is None else path.with_name(raw_name + SUFFIX))
        try:
            for line in self.result_lines(sub, status):
                if line is None:
                    unreadable += 1
                    continue
                task_id = task_of(line.custom_id, prefix)
                if task_id is None:
                    continue
                if line.kind == "ok":
                    raw.add(task_id, line)
                result = classify_line(line, parse, price)
                result.task_id = task_id
                result.started_at, result.finished_at = started, finished
                poll.results.append(result)
                if line.kind == "ok" and line.tokens_in is not None:
                    ok += 1
                    billed_in += line.tokens_in
                    billed_out += line.tokens_out or 0
        except BaseException:
            raw.discard()
            raise
        raw.commit()
        if ok and sub.info.get("raw_tokens") and sub.info.get("requests"):
            raw_per_request = sub.info["raw_tokens"] / sub.info["requests"]
            state.calibration.add(raw_per_request * ok, billed_in)
            state.output_per_request = billed_out / ok
        state.pilot_done = True
        if sub.info.get("straggler") and self.memory.get("tail", {}).get(stage.name):
            resent = self.memory.get("resent_since", {})
            if stage.name not in resent:
                self.memory.set("resent_since", {**resent, stage.name: self.now()})
        if learn_turnaround and not sub.info.get("straggler") and sub.submitted_at:
            state.turnarounds = (state.turnarounds + [self.now() - sub.submitted_at])[-50:]
        self.save_state()
        usage = status.usage or {}
        poll.info = {"billed_tokens_in": usage.get("input_tokens", billed_in),
                     "billed_tokens_out": usage.get("output_tokens", billed_out),
                     "unreadable_lines": unreadable, "provider": {"phase": status.phase, **(status.counts or {})},
                     **status.files}
        return poll

    def reparse(self, stage: StageContext) -> dict[int, TaskResult]:
        """The stage's kept answers run through its ``parse`` function as it is now, by task id
        (for a task answered more than once, its latest answer). Nothing is sent."""
        parse = self.parser(stage)
        results: dict[int, TaskResult] = {}
        for task_id, line in read_answers(stage.run_dir, stage.name):
            result = classify_line(line, parse, None)
            result.task_id = task_id
            results[task_id] = result
        return results

    def _whole_batch_failed(self, state: State, task_ids: list[int], status: BatchStatus,
                            in_flight_tokens: float) -> list[TaskResult]:
        codes = {code for code, _, _ in status.errors}
        if "token_limit_exceeded" in codes:
            self.limit_refused(state, in_flight_tokens)
            self.log(f"{self.name}: batch refused with token_limit_exceeded; backing off {state.backoff:.0f}s "
                     f"and aiming at {state.limit_factor:.0%} of the configured limit")
            return [TaskResult(t, Outcome.CAPACITY, error_class=ErrorClass.TOKEN_LIMIT,
                               error_message="the batch was refused: enqueued token limit exceeded",
                               info={"retry_after": state.backoff}) for t in task_ids]
        sent_again = set(self.memory.get("validation_sent_again", []))
        results = validation_failure(task_ids, status, sent_again)
        again = [r.task_id for r in results if (r.info or {}).get(SENT_AGAIN_WHOLE)]
        if again:
            self.memory.set("validation_sent_again", sorted(sent_again | set(again)))
            self.log(f"{self.name}: a batch failed validation naming no request; its {len(again)} requests are "
                     "sent again once as a whole")
        return results
