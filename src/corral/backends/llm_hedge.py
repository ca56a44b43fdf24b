"""Backup batches for the tail of an LLM stage (``hedge: {mode: backup}``).

Once all of a stage's work is in flight, a batch still unfinished past ``after`` x the median
turnaround gets a backup: a second batch with its requests, the original left running. The two
are one submission in the ledger (its tasks belong to it alone); the pair lives in the
submission's info under ``backup``:

- a poll decides (``state: due``, with the backup's idempotency key), written with that poll;
- the engine then hands over the submission's unfinished tasks and the backup is sent, or
  adopted when an earlier controller created it before a stop (found by its key), or refused
  by the cost cap (``state: refused``, with a log line);
- each batch of the pair is collected when it ends; an answer is recorded at its first arrival
  (``answered`` lists those), the other batch is then cancelled, and its answers for requests
  already recorded are dropped, their billed cost added to the stage's extra spend;
- the submission ends when both batches have ended.

What the backups cost is kept per stage in the backend's memory (``hedges``), written in the same
transaction as the submission info that caused it, so a kill at any instant neither loses nor
doubles it.
"""

from __future__ import annotations

from dataclasses import replace
from statistics import median
from typing import Any

from corral.backends.base import PollResult, StageContext, SubmissionRecord, TaskResult, TaskSpec, TransientError
from corral.backends.llm_results import ApiErrorKind, BatchStatus
from corral.llm.scheduler import enqueued_capacity
from corral.spec.llm import HedgeMode
from corral.states import Outcome

LANES = ("original", "backup")


class PairAnswers:
    """The answers of a hedged pair so far: requests answered (each recorded once), failures held
    while the other lane may still answer, and what the dropped second answers cost."""

    def __init__(self, backup: dict[str, Any]):
        self.answered: set[int] = set(backup.get("answered") or [])
        self.held: dict[str, list[Any]] = dict(backup.get("held") or {})
        self.extra_cost = 0.0
        self.dropped = 0

    def take(self, results: list[TaskResult], *, last: bool) -> list[TaskResult]:
        """The results to record from one lane's; ``last``: the other lane has ended."""
        out: list[TaskResult] = []
        for result in results:
            task = str(result.task_id)
            if result.task_id in self.answered:
                self.extra_cost += result.cost or 0.0
                self.dropped += result.outcome == Outcome.DONE
            elif result.outcome == Outcome.DONE:
                self.answered.add(result.task_id)
                if task in self.held:
                    self.extra_cost += self.held.pop(task)[2] or 0.0
                out.append(result)
            elif not last:
                if result.outcome == Outcome.FAILED:   # the other lane may still answer it
                    self.held[task] = [result.error_class, result.error_message, result.cost]
            elif result.outcome != Outcome.FAILED and task in self.held:
                error_class, message, cost = self.held.pop(task)
                out.append(TaskResult(result.task_id, Outcome.FAILED, error_class=error_class,
                                      error_message=message, cost=cost))
            else:
                self.held.pop(task, None)
                out.append(result)
        return out

    def unanswered(self, reported: list[TaskResult]) -> list[TaskResult]:
        """Both lanes ended: the failures held for the other lane are what is left to record."""
        seen = {r.task_id for r in reported}
        out = [TaskResult(int(task), Outcome.FAILED, error_class=error_class, error_message=message, cost=cost)
               for task, (error_class, message, cost) in self.held.items() if int(task) not in seen]
        self.held = {}
        return out

    def save(self, backup: dict[str, Any]) -> None:
        backup.update(answered=sorted(self.answered), held=self.held)


class HedgedTail:
    """Mixed into LlmBatchBackend, whose provider calls, state, rendering and collection it uses."""

    # -- decide ----------------------------------------------------------------------------------

    def _hedge_due(self, stage: StageContext, sub: SubmissionRecord, status: BatchStatus) -> dict[str, Any] | None:
        state = self.state(stage)
        if sub.info.get("backup") or status.phase not in ("validating", "in_progress") or \
                len(state.turnarounds) < 4 or not self.memory.get("tail", {}).get(stage.name):
            return None
        typical = float(median(state.turnarounds))
        elapsed = self.now() - (sub.submitted_at or sub.created_at)
        flex = self.settings.hedge.mode == HedgeMode.FLEX and not self.flex_refused_for(stage.name)
        if flex and elapsed > typical:
            # Past its expected turnaround and showing its pace: cancelled if flex ends its rest
            # sooner (that bills nothing twice), else left to finish.
            sooner = self.flex_sooner(stage, sub, status)
            if sooner is not None:
                return self._cancel_if_straggler(stage, sub, status, factor=1.0) if sooner else None
        if elapsed <= self.settings.hedge.after * typical:
            return None
        return {"backup": {"state": "due", "key": f"{sub.idempotency_key}-{'flex' if flex else 'backup'}",
                           "lane": "flex" if flex else "batch", "decided_at": self.now(),
                           "elapsed": round(elapsed, 1), "median": round(typical, 1)}}

    def flex_refused_for(self, stage: str) -> str | None:
        """Why this stage's stragglers get no flex requests (None: they may)."""
        return "this provider has no flex requests"

    def flex_resend(self, stage: StageContext, tasks: list[TaskSpec]) -> bool:
        """Whether these tasks, sent again in the tail, go as flex requests (a provider with flex)."""
        return False

    def flex_sooner(self, stage: StageContext, sub: SubmissionRecord, status: BatchStatus) -> bool | None:
        """Whether cancelling a straggler and sending its rest by flex ends sooner (a provider with flex)."""
        return None

    def drain_by_flex(self, stage: StageContext, remaining: int) -> bool:
        """Whether the rest of the stage goes as flex requests (a provider with flex)."""
        return False

    def backup_due(self, submission: SubmissionRecord) -> bool:
        return (submission.info.get("backup") or {}).get("state") == "due"

    def holds_run_open(self, submission: SubmissionRecord) -> bool:
        backup = submission.info.get("backup") or {}
        return bool(backup.get("remote_id")) and any(backup.get(lane) != "collected" for lane in LANES)

    def hedges(self, stage: str) -> dict[str, Any]:
        """What the stage's backups cost: sent, their estimated cost and tokens, and the billed cost
        of answers dropped because the other batch of their pair answered first."""
        return {"sent": 0, "estimated_cost": 0.0, "estimated_tokens": 0.0, "extra_cost": 0.0, "dropped": 0,
                "refused": 0, **self.memory.get("hedges", {}).get(stage, {})}

    def _count_hedge(self, stage: str, **add: float) -> None:
        counts = self.hedges(stage)
        for key, value in add.items():
            counts[key] = counts.get(key, 0) + value
        self.memory.set("hedges", {**self.memory.get("hedges", {}), stage: counts})

    def extra_spent(self) -> float:
        """Billed cost of dropped answers over every stage: part of the run's spending."""
        return sum(float(c.get("extra_cost") or 0.0) for c in self.memory.get("hedges", {}).values())

    def _note_stage_size(self, stage: str, requests: int) -> None:
        sizes = self.memory.get("stage_size", {})
        if requests > sizes.get(stage, 0):
            self.memory.set("stage_size", {**sizes, stage: requests})

    def _cancel_if_straggler(self, stage: StageContext, sub: SubmissionRecord, status: BatchStatus,
                             factor: float | None = None) -> dict[str, Any] | None:
        """A batch far past the typical turnaround (``straggler_after`` x the median) is cancelled:
        its finished requests come back and only the rest go out again, in a fresh batch with a
        fresh draw of the turnaround. Before the tail this frees the room under the enqueued-token
        limit that its finished requests hold until it ends; in the tail (all of the stage's work in
        flight) the last batches decide the end."""
        factor = factor or self.settings.straggler_after
        tail = bool(self.memory.get("tail", {}).get(stage.name))
        if tail and factor and self.settings.hedge.mode == HedgeMode.FLEX and not self.flex_refused_for(stage.name):
            # Its unfinished requests go out by flex, billed once: no reason to wait longer than a race.
            factor = min(factor, self.settings.hedge.after)
        state = self.state(stage)
        if not factor or sub.info.get("straggler") or status.phase not in ("validating", "in_progress") or \
                len(state.turnarounds) < 4:
            return None
        # Requests sent again after a cancelled straggler of the tail are not cancelled again (each
        # new batch pays validation and queueing anew): only batches sent before the first came back.
        if tail and (sub.submitted_at or sub.created_at) >= \
                self.memory.get("resent_since", {}).get(stage.name, float("inf")):
            return None
        typical = sorted(state.turnarounds)[len(state.turnarounds) // 2]
        elapsed = self.now() - (sub.submitted_at or sub.created_at)
        if elapsed <= factor * typical:
            return None
        try:
            self.cancel_batch(sub.remote_id)
        except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile
            self.log(f"{self.name}: cancelling straggler {sub.remote_id} failed: {exc}")
            return None
        ran = f"{elapsed / 60:.0f} min" if elapsed >= 120 else f"{elapsed:.0f} s"
        self.log(f"{self.name}: batch {sub.remote_id} has run {ran}, {elapsed / typical:.1f}x the "
                 "median turnaround: cancelled; its finished requests are kept and the rest sent again")
        return {"straggler": True}

    # -- send ------------------------------------------------------------------------------------

    def second_copy(self, stage: StageContext, tasks: list[TaskSpec]) -> tuple[list[Any], str | None, int, float,
                                                                             float | None] | None:
        """The requests of a second copy of these tasks, rendered: (entries, model, raw tokens,
        estimated tokens, estimated cost); None when none renders."""
        state = self.state(stage)
        entries, _, model = self._render(stage, tasks, state) if tasks else ([], {}, None)
        if not entries:
            return None
        price = self.price(model)
        raw_tokens = sum(e.meta["raw_tokens"] for e in entries)
        tokens = sum(e.tokens for e in entries)
        out_tokens = self._expected_output(stage, state, entries)
        cost = price.cost(raw_tokens * state.calibration.factor, out_tokens * len(entries)) if price else None
        return entries, model, raw_tokens, tokens, cost

    def send_backup(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
                    all_in_flight: list[SubmissionRecord]) -> dict[str, Any] | None:
        backup = dict(submission.info["backup"])
        if backup.get("lane") == "flex":
            if not self.flex_refused_for(stage.name):
                return self.send_flex(stage, submission, tasks)
            backup["lane"] = "batch"   # decided by a controller that kept running; this one makes one pass
        state = self.state(stage)
        lane = replace(submission, idempotency_key=backup["key"], created_at=backup["decided_at"], remote_id=None,
                       submitted_at=None, task_count=len(tasks), info={})
        copy = self.second_copy(stage, tasks)
        if copy is None:
            return {"backup": {**backup, "state": "skipped"}}
        entries, model, raw_tokens, tokens, cost = copy
        try:
            found = self.find_batch(stage, lane)
        except Exception as exc:  # noqa: BLE001 - creating without knowing could pay three times
            raise TransientError(f"looking up an earlier backup failed: {type(exc).__name__}: {exc}") from None
        if found is not None:
            remote_id, extra = found
            self.log(f"{self.name}: backup {remote_id} of batch {submission.remote_id} adopted after a restart")
        else:
            refusal = self._over_cap(stage.name, state, cost, tokens)
            if refusal:
                self.log(f"{self.name}: batch {submission.remote_id} is slow but gets no backup: {refusal}")
                self._count_hedge(stage.name, refused=1)
                return {"backup": {**backup, "state": "refused", "why": refusal}}
            capacity = enqueued_capacity(self.settings, state)
            used = sum(self._in_flight_of(s, state).tokens for s in all_in_flight)
            if capacity is not None and used + tokens > capacity:
                self.say(f"stage {stage.name}: a backup of batch {submission.remote_id} waits for room under the "
                         "enqueued token limit")
                return None
            try:
                remote_id, extra = self.create_batch(stage, lane, entries, model, used)
            except Exception as exc:
                if self.error_kind(exc) == ApiErrorKind.TRANSIENT:
                    raise TransientError(f"creating the backup did not get through: {exc}") from exc
                raise
            self.write_journal(stage, backup["key"], remote_id, created_at=self.now(), requests=len(entries))
            self.log(f"{self.name}: batch {submission.remote_id} has run {backup.get('elapsed', 0) / 60:.0f} min, "
                     f"past {self.settings.hedge.after}x the median turnaround: backup {remote_id} sent with its "
                     f"{len(entries)} requests")
        self._count_hedge(stage.name, sent=1, estimated_cost=cost or 0.0, estimated_tokens=tokens)
        backup.update(extra, state="sent", remote_id=remote_id, submitted_at=self.now(), model=model,
                      prefix=submission.info.get("prefix") or self.prefix(stage), tasks=[e.task_id for e in entries],
                      tokens=tokens, raw_tokens=raw_tokens, requests=len(entries), cost=cost)
        return {"backup": backup}

    def _over_cap(self, stage: str, state: Any, cost: float | None, tokens: float) -> str | None:
        """Why this backup would pass ``max_extra_cost`` x the stage's projected cost (None: it fits).
        Without a price the same share is taken of tokens."""
        cap = self.settings.hedge.max_extra_cost
        size = self.memory.get("stage_size", {}).get(stage, 0)
        counts = self.hedges(stage)
        if cost is not None and state.cost_per_request:
            projected, spent, this, unit = size * state.cost_per_request, counts["estimated_cost"], cost, "$"
        else:
            projected, spent, this, unit = size * (state.tokens_per_request or 0.0), counts["estimated_tokens"], \
                tokens, "tokens "
        if spent + this <= cap * projected:
            return None
        return (f"backups would cost {unit}{spent + this:,.2f}, over hedge.max_extra_cost {cap:.0%} of the stage's "
                f"projected {unit}{projected:,.2f}")

    # -- poll and collect a pair ---------------------------------------------------------------------

    def _lane(self, sub: SubmissionRecord, name: str) -> SubmissionRecord:
        if name == "original":
            return sub
        backup = sub.info["backup"]
        return replace(sub, idempotency_key=backup["key"], remote_id=backup["remote_id"],
                       submitted_at=backup["submitted_at"], created_at=backup["decided_at"],
                       task_count=backup["requests"], info=backup)

    def pair_answers(self, backup: dict[str, Any]) -> PairAnswers:
        return PairAnswers(backup)

    def _poll_pair(self, stage: StageContext, sub: SubmissionRecord,
                   submissions: list[SubmissionRecord]) -> PollResult | None:
        backup = dict(sub.info["backup"])
        pair = self.pair_answers(backup)
        cancelled = list(backup.get("cancelled") or [])
        results: list[TaskResult] = []
        info: dict[str, Any] = {}
        running = False
        for name in LANES:
            if backup.get(name) == "collected":
                continue
            polled = self._poll_lane(stage, sub, name, submissions, backup, pair, info, cancelled)
            if polled is None:
                continue
            lane_running, taken = polled
            running = running or lane_running
            results += taken
            if backup.get(name) == "collected" and not all(backup.get(other) == "collected" for other in LANES):
                other = LANES[1 - LANES.index(name)]
                self._cancel_lane(sub, other, name)
                cancelled.append(other)
        finished = all(backup.get(name) == "collected" for name in LANES)
        if finished:
            results += pair.unanswered(results)
        return self._pair_result(stage, sub, backup, pair, results, info, running, finished, cancelled)

    def _poll_original(self, stage: StageContext, sub: SubmissionRecord, submissions: list[SubmissionRecord],
                       backup: dict[str, Any], pair: PairAnswers, info: dict[str, Any]
                       ) -> tuple[bool, list[TaskResult]] | None:
        return self._poll_lane(stage, sub, "original", submissions, backup, pair, info,
                               list(backup.get("cancelled") or []))

    def _poll_lane(self, stage: StageContext, sub: SubmissionRecord, name: str, submissions: list[SubmissionRecord],
                   backup: dict[str, Any], pair: PairAnswers, info: dict[str, Any],
                   cancelled: list[str]) -> tuple[bool, list[TaskResult]] | None:
        """One batch of a pair: (running, results to record); None when the provider did not answer.
        An ended batch is collected and marked so in ``backup``; ``info`` gets what to write."""
        lane = self._lane(sub, name)
        try:
            status = self.batch_status(lane)
        except Exception as exc:
            kind = self.error_kind(exc)
            if kind == ApiErrorKind.TRANSIENT:
                self.log(f"{self.name}: reading batch {lane.remote_id} failed ({exc}); asking again")
                return None
            if kind != ApiErrorKind.GONE:
                raise
            self.log(f"{self.name}: the provider does not know batch {lane.remote_id} ({exc}); the other lane "
                     "of its pair answers for it")
            backup[name] = "collected"
            return False, []
        if not status.ended:
            if name == "original":
                progress = {"phase": status.phase, **(status.counts or {})}
                if sub.info.get("provider") != progress:
                    info["provider"] = progress
            return status.running, []
        last = all(backup.get(other) == "collected" for other in LANES if other != name)
        collected = self._collect(stage, lane, status, submissions,
                                  raw_name=None if name == "original" else f"{sub.id}-backup",
                                  learn_turnaround=name not in cancelled)
        self.batch_ended(lane)
        backup[name] = "collected"
        if name == "original":
            info.update(collected.info or {})
        else:
            backup["billed"] = {k: v for k, v in (collected.info or {}).items() if k.startswith("billed_")}
        return False, pair.take(collected.results, last=last)

    def _pair_result(self, stage: StageContext, sub: SubmissionRecord, backup: dict[str, Any], pair: PairAnswers,
                     results: list[TaskResult], info: dict[str, Any], running: bool, finished: bool,
                     cancelled: list[str]) -> PollResult | None:
        if pair.extra_cost or pair.dropped:
            self._count_hedge(stage.name, extra_cost=pair.extra_cost, dropped=pair.dropped)
        pair.save(backup)
        backup["cancelled"] = cancelled
        if backup != sub.info["backup"]:
            info["backup"] = backup
        if not (finished or results or info):
            return PollResult(running=running)
        return PollResult(finished=finished, running=running, results=results, info=info or None,
                          lost_message="the batch and its second copy ended without a result for this request")

    def _cancel_lane(self, sub: SubmissionRecord, name: str, winner: str) -> None:
        lane = self._lane(sub, name)
        try:
            self.cancel_batch(lane.remote_id)
        except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile: collected all the same
            self.log(f"{self.name}: cancelling {lane.remote_id} failed: {exc}")
            return
        self.log(f"{self.name}: the {winner} batch of pair {sub.remote_id} ended first: {lane.remote_id} cancelled; "
                 "its finished answers are still collected")
