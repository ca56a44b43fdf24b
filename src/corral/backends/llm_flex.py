"""Flex requests for the tail of an OpenAI batch stage (``hedge: {mode: flex}``).

A batch still unfinished past ``after`` x the median turnaround, once all of a stage's work is in
flight, gets its unanswered requests sent again as synchronous requests with ``service_tier:
"flex"`` (billed at the Batch price, slower than standard requests, sometimes refused with HTTP 429
"resource unavailable", which is not billed). The batch keeps running; the pair is one submission,
as with a backup batch (corral.backends.llm_hedge), its flex lane in the submission's info under
``backup`` with ``lane: flex``:

- the decision and the requests it covers are written to the ledger before any is sent (the
  requests go out at the next poll, from threads of this process);
- each answer is recorded when a poll takes it, if its request has no answer yet; once every
  request of the batch has one, the batch is cancelled (its finished answers are still collected,
  and dropped, their billed cost counted as extra spend);
- a refused request is asked again a few times, then left to the batch;
- a request is sent by flex at most once: a controller that stops with flex requests in flight
  loses their answers (they may be billed), and the next one leaves those requests to the batch,
  so no request is billed more than twice.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from statistics import median
from typing import Any

from corral.backends.base import Handle, PollResult, StageContext, SubmissionRecord, TaskResult, TaskSpec
from corral.backends.llm_raw import SUFFIX, RawWriter, raw_path
from corral.backends.llm_results import ResultLine, classify_line, task_of
from corral.spec.llm import HedgeMode
from corral.states import Outcome

#: tries of a request refused with 429 (not billed) before it is left to its batch
FLEX_TRIES = 5
#: real seconds before the second try of a refused request (doubling, at most ``FLEX_MAX_WAIT``)
FLEX_FIRST_WAIT = 0.5
FLEX_MAX_WAIT = 8.0
#: seconds a flex request is taken to need until a stage has seen ``FLEX_LATENCY_AFTER`` answers
FLEX_LATENCY_GUESS = 90.0
FLEX_LATENCY_AFTER = 20
#: seconds a cancelled batch is taken to need before what it finished comes back
CANCEL_ALLOWANCE = 120.0


class FlexOutcome(str, Enum):
    ANSWERED = "answered"
    REFUSED = "refused"        # 429 after every try (resource unavailable, rate limit): not billed
    REJECTED = "rejected"      # another 4xx: the provider will not take it (e.g. a model without flex)
    LOST = "lost"              # no answer (timeout, connection): it may have run and be billed
    WITHDRAWN = "withdrawn"    # not sent: its batch answered first


@dataclass
class FlexAnswer:
    custom_id: str
    outcome: FlexOutcome
    body: Any = None
    status_code: int | None = None
    message: str = ""
    seconds: float | None = None   # from sending to the answer, on the backend's clock


#: sends one request and returns the provider's answer body; raises the SDK's exceptions
Sender = Callable[[str, dict[str, Any]], dict[str, Any]]


class FlexPool:
    """Daemon threads that send one request each; answers wait, per submission, for a poll to
    take them. Threads are daemons so that a stopping controller never waits on a request."""

    _sending = 0                 # requests being sent or waited on, over every pool of the process
    _sending_lock = threading.Lock()

    @classmethod
    def sending(cls) -> int:
        """Flex requests this process has out at the provider now (for a simulation on a shared
        virtual clock, which waits for them to reach the simulator before moving on)."""
        with cls._sending_lock:
            return cls._sending

    def __init__(self, size: int, send: Sender, status_of: Callable[[BaseException], int | None],
                 clock: Callable[[], float] = time.time):
        self.size = size
        self._clock = clock
        self._send = send
        self._status_of = status_of
        # (priority, order, submission, custom_id, body): lower priority first, then in order
        self._jobs: queue.PriorityQueue[tuple[int, int, int, str, dict[str, Any]]] = queue.PriorityQueue()
        self._order = 0
        self._lock = threading.Lock()
        self._answers: dict[int, list[FlexAnswer]] = {}
        self._pending: dict[int, int] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._rejected: set[int] = set()   # submissions whose requests the provider will not take
        self._withdrawn: set[int] = set()  # submissions whose requests not yet sent are dropped

    def submit(self, sub_id: int, requests: list[tuple[str, dict[str, Any]]], priority: int = 0) -> None:
        """Queue a submission's requests; ``priority`` 0 (a straggler's) goes before 1 (the last of a stage)."""
        with self._lock:
            self._pending[sub_id] = self._pending.get(sub_id, 0) + len(requests)
            self._answers.setdefault(sub_id, [])
            while len(self._threads) < min(self.size, self._jobs.qsize() + len(requests) + len(self._threads)):
                thread = threading.Thread(target=self._work, name=f"flex-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            order, self._order = self._order, self._order + len(requests)
        for i, (custom_id, body) in enumerate(requests):
            self._jobs.put((priority, order + i, sub_id, custom_id, body))

    def knows(self, sub_id: int) -> bool:
        with self._lock:
            return sub_id in self._pending

    def backlog(self) -> int:
        """Requests queued or out, over every submission."""
        with self._lock:
            return sum(self._pending.values())

    def pending(self, sub_id: int) -> int:
        with self._lock:
            return self._pending.get(sub_id, 0)

    def take(self, sub_id: int) -> list[FlexAnswer]:
        with self._lock:
            answers, self._answers[sub_id] = self._answers.get(sub_id, []), []
            return answers

    def forget(self, sub_id: int) -> None:
        """Nothing more of the submission is wanted: its requests not yet sent never are."""
        with self._lock:
            self._pending.pop(sub_id, None)
            self._answers.pop(sub_id, None)
            self._withdrawn.discard(sub_id)

    def withdraw(self, sub_id: int) -> None:
        """The submission's requests not yet sent are not sent (and not waited for); those out are."""
        with self._lock:
            if sub_id in self._pending:
                self._withdrawn.add(sub_id)

    def close(self) -> None:
        self._closed = True

    def _work(self) -> None:
        while not self._closed:
            try:
                _, _, sub_id, custom_id, body = self._jobs.get(timeout=1.0)
            except queue.Empty:
                continue
            with self._lock:
                if sub_id not in self._pending:
                    continue        # forgotten: never sent
                if sub_id in self._withdrawn:
                    self._answers[sub_id].append(FlexAnswer(custom_id, FlexOutcome.WITHDRAWN,
                                                            message="not sent: the batch answered first"))
                    self._pending[sub_id] -= 1
                    continue
            with FlexPool._sending_lock:
                FlexPool._sending += 1
            started = self._clock()
            try:
                if sub_id in self._rejected:
                    answer = FlexAnswer(custom_id, FlexOutcome.REJECTED,
                                        message="not sent: the provider refused the flex requests sent before it")
                else:
                    answer = self._ask(custom_id, body)
                    answer.seconds = self._clock() - started
                    if answer.outcome == FlexOutcome.REJECTED:
                        self._rejected.add(sub_id)
            finally:
                with FlexPool._sending_lock:
                    FlexPool._sending -= 1
            with self._lock:
                if sub_id in self._pending:
                    self._answers[sub_id].append(answer)
                    self._pending[sub_id] -= 1

    def _ask(self, custom_id: str, body: dict[str, Any]) -> FlexAnswer:
        wait = FLEX_FIRST_WAIT
        for attempt in range(1, FLEX_TRIES + 1):
            if self._closed:
                return FlexAnswer(custom_id, FlexOutcome.REFUSED, message="the controller stopped first")
            try:
                return FlexAnswer(custom_id, FlexOutcome.ANSWERED, body=self._send(custom_id, body), status_code=200)
            except Exception as exc:  # noqa: BLE001 - every outcome is reported to the poll
                status = self._status_of(exc)
                message = f"{type(exc).__name__}: {exc}"
                if status is None or status in (408, 409) or status >= 500:
                    return FlexAnswer(custom_id, FlexOutcome.LOST, status_code=status, message=message)
                if status != 429:
                    return FlexAnswer(custom_id, FlexOutcome.REJECTED, status_code=status, message=message)
                if attempt == FLEX_TRIES:
                    return FlexAnswer(custom_id, FlexOutcome.REFUSED, status_code=status, message=message)
            time.sleep(wait)
            wait = min(FLEX_MAX_WAIT, wait * 2)
        raise AssertionError("unreachable")


_CONTROLLER: dict[str, Any] = {}


def this_controller() -> dict[str, Any]:
    """Who holds the flex requests this process sends: its host, pid and a token of its own."""
    if _CONTROLLER.get("pid") != os.getpid():
        _CONTROLLER.update(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex)
    return dict(_CONTROLLER)


class FlexTail:
    """Mixed into the OpenAI batch backend, with HedgedTail: the flex lane of a hedged pair. The
    backend sends each request with its ``flex_request(custom_id, body) -> answer body``."""

    _flex: FlexPool | None = None

    def flex_status_of(self, exc: BaseException) -> int | None:
        """The HTTP status of a failed flex request, None when no answer came."""
        return getattr(exc, "status_code", None)

    def _flex_pool(self) -> FlexPool:
        if self._flex is None:
            self._flex = FlexPool(self.settings.hedge.flex_concurrency, self.flex_request, self.flex_status_of,
                                  clock=self.now)
            self._flex_ready: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        return self._flex

    def flex_refused_for(self, stage: str) -> str | None:
        """Why this stage gets no flex requests now (then backups are batches): the provider refused
        them, or this controller makes one pass (``corral tick``) and could not collect answers."""
        if not self.polls_on:
            return "flex requests need a controller that keeps running (corral run); one tick ends first"
        return self.memory.get("flex_off", {}).get(stage)

    def send_flex(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec]) -> dict[str, Any]:
        """Decide the flex lane: its requests are written with the submission before any is sent."""
        backup = dict(submission.info["backup"])
        state = self.state(stage)
        copy = self.second_copy(stage, tasks)
        if copy is None:
            return {"backup": {**backup, "state": "skipped"}}
        entries, model, raw_tokens, tokens, cost = copy
        refusal = self._over_cap(stage.name, state, cost, tokens)
        if refusal:
            self.log(f"{self.name}: batch {submission.remote_id} is slow but gets no flex requests: {refusal}")
            self._count_hedge(stage.name, refused=1)
            return {"backup": {**backup, "state": "refused", "why": refusal}}
        self._flex_pool()
        self._flex_ready[submission.id] = [(e.custom_id, json.loads(e.line)["body"]) for e in entries]
        self._count_hedge(stage.name, sent=1, flex_sent=len(entries), estimated_cost=cost or 0.0,
                          estimated_tokens=tokens)
        self.log(f"{self.name}: batch {submission.remote_id} has run {backup.get('elapsed', 0) / 60:.0f} min, past "
                 f"{self.settings.hedge.after}x the median turnaround: its {len(entries)} unanswered requests go as "
                 "flex requests")
        backup.update(state="sent", lane="flex", remote_id=f"flex:{backup['key']}", submitted_at=self.now(),
                      holder=this_controller(),
                      model=model, prefix=submission.info.get("prefix") or self.prefix(stage),
                      tasks=[e.task_id for e in entries], tokens=tokens, raw_tokens=raw_tokens,
                      requests=len(entries), cost=cost)
        return {"backup": backup}

    def _poll_flex_pair(self, stage: StageContext, sub: SubmissionRecord, submissions: list[SubmissionRecord],
                        ask_batch: bool) -> PollResult | None:
        backup = dict(sub.info["backup"])
        pair = self.pair_answers(backup)
        results: list[TaskResult] = []
        info: dict[str, Any] = {}
        running = False
        if backup.get("backup") != "collected":
            results += self._take_flex(stage, sub, backup, pair)
        if backup.get("original") != "collected" and ask_batch:
            polled = self._poll_original(stage, sub, submissions, backup, pair, info)
            if polled is None:
                return None
            running, taken = polled
            results += taken
        if backup.get("original") == "collected" and backup.get("backup") != "collected":
            # The batch answered first: its requests still queued for flex are not sent.
            pool = self._flex_pool()
            pool.withdraw(sub.id)
            if pool.knows(sub.id) and pool.pending(sub.id) == 0:
                results += self._take_flex(stage, sub, backup, pair)
        cancelled = list(backup.get("cancelled") or [])
        if backup.get("original") != "collected" and "original" not in cancelled and \
                set(backup.get("tasks") or []) <= pair.answered:
            try:
                self.cancel_batch(sub.remote_id)
                self.log(f"{self.name}: every request of batch {sub.remote_id} has its flex answer: cancelled; its "
                         "finished answers are still collected")
            except Exception as exc:  # noqa: BLE001 - it may have ended meanwhile: collected all the same
                self.log(f"{self.name}: cancelling {sub.remote_id} failed: {exc}")
            cancelled.append("original")
        finished = backup.get("backup") == "collected" and backup.get("original") == "collected"
        if finished:
            results += pair.unanswered(results)
            self._flex_pool().forget(sub.id)
        return self._pair_result(stage, sub, backup, pair, results, info, running, finished, cancelled)

    def _held_elsewhere(self, lane: dict[str, Any]) -> bool:
        """Whether another controller of the run that is still running holds these flex requests
        (a `corral tick` from cron beside a `corral run`): its answers come back to it, so this one
        leaves them alone. A holder on this host is alive while its process is; one elsewhere, or
        one that never ends, at most until every request could have timed out."""
        holder = lane.get("holder") or {}
        if not holder or holder.get("token") == this_controller()["token"]:
            return False
        hedge = self.settings.hedge
        rounds = int(lane.get("requests") or 0) / hedge.flex_concurrency + 1
        if self.now() - float(lane.get("submitted_at") or 0.0) > rounds * hedge.flex_timeout * FLEX_TRIES:
            return False
        if holder.get("host") != socket.gethostname():
            return True
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (OSError, ValueError, KeyError):   # another user's process, or an odd record: wait for the bound
            pass
        return True

    def _take_flex(self, stage: StageContext, sub: SubmissionRecord, backup: dict[str, Any],
                   pair: Any) -> list[TaskResult]:
        pool = self._flex_pool()
        if sub.id in self._flex_ready:
            pool.submit(sub.id, self._flex_ready.pop(sub.id))
        elif not pool.knows(sub.id) and self._held_elsewhere(backup):
            return []
        elif not pool.knows(sub.id):
            # Sent by a controller that stopped: never sent again, so billed at most twice.
            lost = len(set(backup.get("tasks") or []) - pair.answered)
            backup.update(backup="collected", lost=lost)
            if lost:
                self._count_hedge(stage.name, flex_lost=lost)
                self.log(f"{self.name}: {lost} flex requests of batch {sub.remote_id} were in flight when an earlier "
                         "controller stopped: their answers are lost; the batch answers for them")
            return []
        answers = pool.take(sub.id)
        results: list[TaskResult] = []
        if answers:
            results = self._flex_results(stage, sub, backup, pair, answers)
        if pool.pending(sub.id) == 0:
            backup["backup"] = "collected"
        return results

    def _flex_results(self, stage: StageContext, sub: SubmissionRecord, backup: dict[str, Any], pair: Any,
                      answers: list[FlexAnswer]) -> list[TaskResult]:
        lines = self._flex_lines(stage, sub, backup, answers)
        return pair.take([r for r in lines if r.outcome != Outcome.INTERRUPTED],
                         last=backup.get("original") == "collected")

    def _flex_lines(self, stage: StageContext, sub: SubmissionRecord, lane: dict[str, Any],
                    answers: list[FlexAnswer]) -> list[TaskResult]:
        """Each answer as its task's result (a request without an answer: INTERRUPTED, to go out
        again by batch); the raw answers kept for ``corral reparse``; the counts in the hedges."""
        parse, price = self.parser(stage), self.price(lane.get("model"))
        prefix = lane.get("prefix") or self.prefix(stage)
        part = int(lane.get("raw_parts") or 0) + 1
        raw = RawWriter(raw_path(stage.run_dir, stage.name, sub.id).with_name(f"{sub.id}-flex{part}{SUFFIX}"))
        started, now = lane.get("submitted_at") or sub.submitted_at or self.now(), self.now()
        results: list[TaskResult] = []
        counts = {f"flex_{outcome.value}": 0 for outcome in FlexOutcome}
        unsent = set(self.memory.get("no_flex", {}).get(stage.name, []))
        for answer in answers:
            task_id = task_of(answer.custom_id, prefix)
            if task_id is None:
                continue
            counts[f"flex_{answer.outcome.value}"] += 1
            if answer.outcome == FlexOutcome.WITHDRAWN:
                continue
            if answer.outcome != FlexOutcome.ANSWERED:
                self._flex_failed(stage.name, sub, answer)
                unsent.add(task_id)
                results.append(TaskResult(task_id, Outcome.INTERRUPTED,
                                          error_message=f"the flex request got no answer ({answer.message}): sent "
                                                        "again in a batch"))
                continue
            line = flex_line(answer.custom_id, answer.body)
            raw.add(task_id, line)
            result = classify_line(line, parse, price)
            result.task_id, result.started_at, result.finished_at = task_id, started, now
            results.append(result)
        raw.commit()
        if raw.count:
            lane["raw_parts"] = part
        self._count_hedge(stage.name, **{k: v for k, v in counts.items() if v})
        self._no_flex(stage.name, unsent)
        self._learn_flex_latency(stage.name, [a.seconds for a in answers
                                              if a.outcome == FlexOutcome.ANSWERED and a.seconds is not None])
        return results

    def _learn_flex_latency(self, stage: str, seconds: list[float]) -> None:
        if not seconds:
            return
        known = self.memory.get("flex_latency", {})
        seen = known.get(stage) or {"n": 0, "mean": 0.0}
        n = seen["n"] + len(seconds)
        mean = (seen["mean"] * seen["n"] + sum(seconds)) / n
        self.memory.set("flex_latency", {**known, stage: {"n": n, "mean": round(mean, 3)}})

    def flex_latency(self, stage: str) -> float:
        """Mean seconds from sending a flex request of the stage to its answer (a guess at first)."""
        seen = self.memory.get("flex_latency", {}).get(stage) or {}
        return float(seen["mean"]) if seen.get("n", 0) >= FLEX_LATENCY_AFTER else FLEX_LATENCY_GUESS

    def flex_sooner(self, stage: StageContext, sub: SubmissionRecord, status: Any) -> bool | None:
        """For a straggler of the tail: True when cancelling it and sending its unfinished requests
        by flex answers them sooner than the batch would at the pace it shows (a cancellation bills
        nothing more); False when the batch should end first; None when it shows no progress (then
        it races flex requests, under the cost cap)."""
        counts = status.counts or {}
        total = int(counts.get("total") or sub.task_count or 0)
        done = int(counts.get("done") or 0) + int(counts.get("failed") or 0)
        if not counts or done <= 0 or not total or not self.settings.straggler_after:
            return None
        left = max(0, total - done)
        batch_needs = (self.now() - (sub.submitted_at or sub.created_at)) * left / done
        latency = self.flex_latency(stage.name)
        flex_needs = (self._flex_pool().backlog() + left) * latency / self.settings.hedge.flex_concurrency + \
            latency + CANCEL_ALLOWANCE
        return batch_needs > flex_needs

    # -- the last of a stage's work: by flex, not in one more round of batches --------------------------

    def drain_by_flex(self, stage: StageContext, remaining: int) -> bool:
        """Whether the rest of the stage, ``remaining`` requests not yet sent, goes as flex requests
        rather than in batches: flex works for the stage, the stage has not drained before, and the
        flex lane answers them all within the median batch turnaround (a batch sent now would, at
        best, take that long; the batches in flight run on meanwhile)."""
        if getattr(self.settings.hedge, "mode", None) != HedgeMode.FLEX or self.flex_refused_for(stage.name):
            return False
        if remaining <= 0 or self.memory.get("drained", {}).get(stage.name):
            return False
        state = self.state(stage)
        if len(state.turnarounds) < 4:
            return False
        typical = float(median(state.turnarounds))
        return remaining * self.flex_latency(stage.name) / self.settings.hedge.flex_concurrency <= typical

    def _no_flex(self, stage: str, tasks: set[int]) -> None:
        """Tasks whose flex request got no answer: never sent by flex again (each is billed at most
        once by flex), so they go by batch."""
        known = self.memory.get("no_flex", {})
        if tasks - set(known.get(stage, [])):
            self.memory.set("no_flex", {**known, stage: sorted(set(known.get(stage, [])) | tasks)})

    # -- requests sent again in the tail: by flex, not in a new batch ----------------------------------

    def flex_resend(self, stage: StageContext, tasks: list[TaskSpec]) -> bool:
        """Whether these tasks go as flex requests: the stage is in its tail, a straggler was
        cancelled (these are its unfinished requests, or retries), flex works for the stage, and
        none of them already went by flex."""
        if getattr(self.settings.hedge, "mode", None) != HedgeMode.FLEX or self.flex_refused_for(stage.name):
            return False
        if not self.memory.get("tail", {}).get(stage.name) or stage.name not in self.memory.get("resent_since", {}):
            return False
        unsent = set(self.memory.get("no_flex", {}).get(stage.name, []))
        return bool(tasks) and not any(t.task_id in unsent for t in tasks)

    def submit_flex(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
                    base_info: dict[str, Any], *, drain: bool = False) -> Handle:
        """A submission of flex requests only; they go out at the next poll, once it is recorded.
        ``drain``: the rest of the stage, sent once (later requests of the stage go by batch)."""
        state = self.state(stage)
        unsent = set(self.memory.get("no_flex", {}).get(stage.name, []))
        deferred = [t.task_id for t in tasks if t.task_id in unsent]   # they go by batch
        entries, rejected, model = self._render(stage, [t for t in tasks if t.task_id not in unsent], state)
        info: dict[str, Any] = {**base_info, "rejected": rejected, "deferred": deferred, "model": model,
                                "lane": "flex"}
        if drain:
            self.memory.set("drained", {**self.memory.get("drained", {}), stage.name: True})
            info["drain"] = True
        if not entries:
            return Handle(f"none:{submission.idempotency_key}", info)
        price = self.price(model)
        raw_tokens = sum(e.meta["raw_tokens"] for e in entries)
        cost = price.cost(raw_tokens * state.calibration.factor,
                          self._expected_output(stage, state, entries) * len(entries)) if price else None
        self._flex_pool()
        self._flex_ready[submission.id] = [(e.custom_id, json.loads(e.line)["body"]) for e in entries]
        self._count_hedge(stage.name, flex_sent=len(entries))
        if drain:
            self.log(f"{self.name}: the last {len(entries)} requests of stage {stage.name} go as flex requests: "
                     f"about {len(entries) * self.flex_latency(stage.name) / self.settings.hedge.flex_concurrency / 60:.0f}"
                     " min, against a batch's median turnaround")
        else:
            self.log(f"{self.name}: {len(entries)} requests of stage {stage.name} sent again in its tail go as "
                     "flex requests")
        info.update(tasks=[e.task_id for e in entries], requests=len(entries), raw_tokens=raw_tokens,
                    tokens=sum(e.tokens for e in entries), cost=cost, submitted_at=self.now(),
                    holder=this_controller())
        return Handle(f"flex:{submission.idempotency_key}", info)

    def _poll_flex_only(self, stage: StageContext, sub: SubmissionRecord) -> PollResult | None:
        pool = self._flex_pool()
        info = dict(sub.info)
        if sub.id in self._flex_ready:
            pool.submit(sub.id, self._flex_ready.pop(sub.id), priority=1 if info.get("drain") else 0)
        elif not pool.knows(sub.id) and self._held_elsewhere(info):
            return PollResult(running=True)
        elif not pool.knows(sub.id):
            # Sent by a controller that stopped: the answers are lost; the requests go by batch.
            lost = {int(t) for t in info.get("tasks") or []} - {int(t) for t in info.get("answered") or []}
            self._no_flex(stage.name, lost)
            self._count_hedge(stage.name, flex_lost=len(lost))
            self.log(f"{self.name}: {len(lost)} flex requests were in flight when an earlier controller stopped: "
                     "their answers are lost; they go out again in a batch")
            return PollResult(finished=True, lost_message="the flex request was in flight when the controller stopped: sent "
                                           "again in a batch")
        answers = pool.take(sub.id)
        results = self._flex_lines(stage, sub, info, answers) if answers else []
        answered = sorted({int(t) for t in info.get("answered") or []} |
                          {r.task_id for r in results if r.outcome == Outcome.DONE})
        finished = pool.pending(sub.id) == 0
        if finished:
            pool.forget(sub.id)
        if not (results or finished):
            return PollResult(running=True)
        written = {"answered": answered} if results and not finished else {}
        if info.get("raw_parts"):
            written["raw_parts"] = info["raw_parts"]
        return PollResult(finished=finished, running=not finished, results=results, info=written or None,
                          lost_message="the flex request ended without an answer")

    def _flex_failed(self, stage: str, sub: SubmissionRecord, answer: FlexAnswer) -> None:
        if answer.outcome == FlexOutcome.REJECTED and not self.memory.get("flex_off", {}).get(stage):
            why = f"HTTP {answer.status_code}: {answer.message}"
            self.memory.set("flex_off", {**self.memory.get("flex_off", {}), stage: why})
            self.log(f"{self.name}: the provider refused a flex request of stage {stage} ({why}); the stage's later "
                     "stragglers get backup batches instead")
        elif answer.outcome == FlexOutcome.LOST:
            self.log(f"{self.name}: flex request {answer.custom_id} got no answer ({answer.message}); its batch "
                     "answers for it")


def flex_line(custom_id: str, body: Any) -> ResultLine:
    """A flex answer as a result line, like a batch's (Chat Completions or Responses usage)."""
    body = body if isinstance(body, dict) else {}
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return ResultLine(custom_id, "ok", body=body, status_code=200,
                      tokens_in=usage.get("prompt_tokens", usage.get("input_tokens")),
                      tokens_out=usage.get("completion_tokens", usage.get("output_tokens")),
                      cached_in=details.get("cached_tokens") or 0)

