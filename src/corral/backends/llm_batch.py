"""The part of the OpenAI and Anthropic batch backends that does not depend on the provider:
rendering and packing requests, scheduling under the limits, collecting what came back, cost
(what each result line means is in ``llm_results``).

A provider subclass implements the calls: create a batch, find one by its idempotency key, read
a batch's status, stream its result lines, cancel it, and say what an exception of its SDK means.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corral.backends.base import (
    Backend,
    Backlog,
    CapacityError,
    Handle,
    PollResult,
    StageContext,
    SubmissionPlan,
    SubmissionRecord,
    TaskResult,
    TaskSpec,
    TransientError,
)
from corral.backends.llm_budget import BudgetGate
from corral.backends.llm_collect import BatchCollection
from corral.backends.llm_hedge import HedgedTail
from corral.backends.llm_raw import raw_path
from corral.backends.llm_results import (
    ApiErrorKind,
    BatchStatus,
    ResultLine,
    early_results,
    max_output,
)
from corral.errors import CorralError
from corral.llm.packing import Entry, pack
from corral.llm.pricing import ModelPrice, price_for
from corral.llm.requests import (
    RenderError,
    RequestTemplate,
    default_parse,
    load_callable,
)
from corral.llm.scheduler import InFlight, State, budget_requests, enqueued_capacity, plan_sizes
from corral.llm.tokens import TokenEstimator
from corral.spec.llm import HedgeMode
from corral.states import ErrorClass


#: polls in a row answered 404 (or 401/403) after which a batch is given up and its requests sent again
GONE_AFTER_POLLS = 3


@dataclass(frozen=True)
class LlmPlan(SubmissionPlan):
    """One batch as planned: what was in flight before it (the open batches, and the batches
    planned before it in the same round, by the estimates the plan used) and the run's spending."""

    in_flight_tokens: float = 0.0
    in_flight_cost: float = 0.0
    spent: float = 0.0
    over_budget: bool = False
    open_batches: int = 0     # batches in flight before it, those planned before it in the round included
    by_flex: bool = False     # the rest of the stage, as flex requests


class LlmBatchBackend(BudgetGate, HedgedTail, BatchCollection, Backend):
    provider = "openai"

    @property
    def wants_cost(self) -> bool:   # the run's recorded cost is a sum over its tasks: only for a budget
        return self.settings.budget is not None

    def __init__(self, name: str, settings: Any, **kwargs: Any):
        super().__init__(name, settings, **kwargs)
        self.poll_interval = min(5.0, settings.poll_interval)
        self._client: Any = None
        self._state: State | None = None
        self._templates: dict[str, RequestTemplate] = {}
        self._parsers: dict[str, Any] = {}
        self._estimators: dict[str | None, TokenEstimator] = {}
        self._last_poll: dict[int, float] = {}
        self._said = ""

    # -- provider calls ---------------------------------------------------------------------

    @abstractmethod
    def make_client(self) -> Any:
        """Provider-specific: implemented by each backend."""

    @abstractmethod
    def create_batch(self, stage: StageContext, submission: SubmissionRecord, entries: list[Entry],
                     model: str, in_flight_tokens: float) -> tuple[str, dict[str, Any]]:
        """Provider-specific: implemented by each backend. ``in_flight_tokens``: the estimated
        tokens of the other open batches, for a refusal under the enqueued-token limit."""

    @abstractmethod
    def find_batch(self, stage: StageContext, submission: SubmissionRecord) -> tuple[str, dict[str, Any]] | None:
        """Provider-specific: implemented by each backend."""

    @abstractmethod
    def batch_status(self, sub: SubmissionRecord) -> BatchStatus:
        """Provider-specific: implemented by each backend."""

    @abstractmethod
    def result_lines(self, sub: SubmissionRecord, status: BatchStatus) -> Iterator[ResultLine | None]:
        """Result lines; None for a line that cannot be read (it counts as missing)."""

    @abstractmethod
    def cancel_batch(self, remote_id: str) -> None:
        """Provider-specific: implemented by each backend."""

    @abstractmethod
    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Provider-specific: implemented by each backend."""

    @abstractmethod
    def error_kind(self, exc: BaseException) -> ApiErrorKind:
        """What an exception of the provider's SDK means: an outage, a batch that is gone, or other."""

    # -- shared helpers -----------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            env = self.settings.api_key_env
            if not os.environ.get(env):
                raise CorralError(f"backend {self.name!r} needs an API key in the environment variable {env} "
                                  f"(set backends.{self.name}.api_key_env to use another variable)")
            self._client = self.make_client()
        return self._client

    def api_key(self) -> str:
        return os.environ[self.settings.api_key_env]

    def state(self, stage: StageContext) -> State:
        """What this backend learned in the run: from its memory (kept in the ledger), or, for a
        run begun by a corral that kept it in the run folder, from that file."""
        if self._state is None:
            stored = self.memory.get("state")
            self._state = State.from_dict(stored) if stored is not None else \
                State.load(stage.run_dir / "llm" / f"{self.name}.json")
        return self._state

    def save_state(self) -> None:
        if self._state is not None:
            self.memory.set("state", self._state.to_dict())

    def journal(self, stage: StageContext) -> Path:
        return stage.run_dir / "llm" / f"{self.name}-batches.jsonl"

    def write_journal(self, stage: StageContext, key: str, remote_id: str, **extra: Any) -> None:
        path = self.journal(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps({"key": key, "remote_id": remote_id, **extra}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_journal(self, stage: StageContext) -> list[dict[str, Any]]:
        try:
            text = self.journal(stage).read_text()
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue   # a line cut by a crash
        return entries

    def template(self, stage: StageContext) -> RequestTemplate:
        if stage.name not in self._templates:
            if stage.spec.request is None:
                raise CorralError(f"stage {stage.name!r} runs on the LLM batch backend {self.name!r} but has no "
                                  "'request:' (the request body template)")
            try:
                self._templates[stage.name] = RequestTemplate(stage.spec.request, stage.root)
            except ValueError as exc:
                raise CorralError(f"stage {stage.name!r}: request: {exc}") from None
        return self._templates[stage.name]

    def parser(self, stage: StageContext) -> Any:
        if stage.name not in self._parsers:
            ref = stage.spec.parse
            if ref is None:
                self._parsers[stage.name] = default_parse
            else:
                try:
                    self._parsers[stage.name] = load_callable(ref, stage.root)
                except Exception as exc:  # noqa: BLE001 - the user's module failed to import
                    raise CorralError(f"stage {stage.name!r}: cannot load parse function {ref!r}: "
                                      f"{type(exc).__name__}: {exc}") from None
        return self._parsers[stage.name]

    def estimator(self, model: str | None) -> TokenEstimator:
        if model not in self._estimators:
            self._estimators[model] = TokenEstimator(provider=self.provider, mode=self.settings.tokenizer,
                                                     model=model)
        return self._estimators[model]

    def price(self, model: str | None) -> ModelPrice | None:
        return price_for(model, self.settings.prices)

    def prefix(self, stage: StageContext) -> str:
        return "c" + hashlib.sha1(stage.run_id.encode()).hexdigest()[:10]

    def say(self, message: str) -> None:
        if message != self._said:
            self._said = message
            self.log(f"{self.name}: {message}")

    # -- plan ---------------------------------------------------------------------------------

    def plan(self, stage: StageContext, backlog: Backlog, in_flight: list[SubmissionRecord],
             all_in_flight: list[SubmissionRecord]) -> list[LlmPlan]:
        self.template(stage)
        state = self.state(stage)
        flying = [self._in_flight_of(s, state) for s in all_in_flight]
        self._note_stage_size(stage.name, max(backlog.remaining, backlog.ready) + sum(s.task_count for s in in_flight))
        spent = backlog.cost_spent + self.extra_spent()
        if backlog.ready and not backlog.more_coming and backlog.ready >= backlog.remaining and \
                self.drain_by_flex(stage, backlog.ready) and \
                self._budget_allows(state, spent, flying, self._cost_per_request(stage, state), backlog.ready):
            # All that is left fits the flex lane's answers within a batch turnaround: one more round of
            # batches would end the stage a turnaround draw later.
            self._set_tail(stage.name, True)
            return [LlmPlan(size=backlog.ready, spent=spent, open_batches=len(flying), by_flex=True)]
        decision = plan_sizes(self.settings, state, now=self.now(), ready=backlog.ready,
                              remaining=max(backlog.remaining, backlog.ready), in_flight=flying,
                              spent=spent, cost_per_request=self._cost_per_request(stage, state))
        # Everything left is being sent: from now on the stage ends when its slowest batch does.
        self._set_tail(stage.name, not backlog.more_coming and sum(decision.sizes) >= backlog.remaining)
        if decision.reason not in ("fill", "nothing ready"):
            self.say(f"stage {stage.name}: {decision.reason}")
        # Each batch of this round counts the ones before it as in flight, as the scheduler did.
        tokens, cost = sum(b.tokens for b in flying), sum(b.cost for b in flying)
        plans = []
        for size in decision.sizes:
            plans.append(LlmPlan(size=size, in_flight_tokens=tokens, in_flight_cost=cost, spent=spent,
                                 over_budget=decision.over_budget, open_batches=len(flying) + len(plans)))
            tokens += size * (state.tokens_per_request or 0.0)
            cost += size * (state.cost_per_request or 0.0)
        return plans

    def _budget_allows(self, state: State, spent: float, flying: list[InFlight], cost_per_request: float | None,
                       requests: int) -> bool:
        room = budget_requests(self.settings, state, spent, flying, cost_per_request)
        return state.budget_waits is None and (room is None or room >= requests)

    def _set_tail(self, stage: str, tail: bool) -> None:
        """Per stage: everything left was sent (from then on the slowest batch decides its end).
        Kept in the backend's memory, so a tick from cron cancels stragglers as `corral run` does."""
        tails = self.memory.get("tail", {})
        if tails.get(stage) != tail:
            self.memory.set("tail", {**tails, stage: tail})

    def _in_flight_of(self, sub: SubmissionRecord, state: State) -> InFlight:
        backup = sub.info.get("backup") or {}
        if (sub.remote_id or "").startswith("flex:") or \
                (backup.get("lane") == "flex" and backup.get("original") == "collected"):
            return InFlight(tokens=0.0, requests=0, cost=0.0)   # flex requests hold no room in the batch queue
        if backup.get("remote_id") and backup.get("backup") != "collected" and backup.get("lane") != "flex":
            lane = InFlight(tokens=float(backup.get("tokens") or 0.0), requests=int(backup.get("requests") or 0),
                            cost=float(backup.get("cost") or 0.0))
            if sub.info.get("backup", {}).get("original") == "collected":
                return lane
            main = self._in_flight_of(replace(sub, info={k: v for k, v in sub.info.items() if k != "backup"}), state)
            return InFlight(main.tokens + lane.tokens, main.requests + lane.requests, main.cost + lane.cost)
        if "tokens" in sub.info:
            return InFlight(tokens=float(sub.info["tokens"]), requests=int(sub.info.get("requests", sub.task_count)),
                            cost=float(sub.info.get("cost") or 0.0))
        per = state.tokens_per_request or 0.0
        return InFlight(tokens=per * sub.task_count, requests=sub.task_count,
                        cost=(state.cost_per_request or 0.0) * sub.task_count)

    # -- submit ---------------------------------------------------------------------------------

    def submit(self, stage: StageContext, submission: SubmissionRecord, tasks: list[TaskSpec],
               plan: SubmissionPlan) -> Handle:
        if not isinstance(plan, LlmPlan):
            # Sent again after a restart: what is in flight is not known, so what the budget does not
            # allow now waits for a later plan rather than ending.
            plan = LlmPlan(size=len(tasks), open_batches=1)
        state = self.state(stage)
        base_info = {"prefix": self.prefix(stage), "tasks": [t.task_id for t in tasks]}
        if plan.over_budget:
            return Handle(f"none:{submission.idempotency_key}",
                          {**base_info, "rejected": {str(t.task_id): [ErrorClass.BUDGET.value, self._spent_message(plan)]
                                                     for t in tasks}})
        if plan.by_flex or self.flex_resend(stage, tasks):
            return self.submit_flex(stage, submission, tasks, base_info, drain=plan.by_flex)
        entries, rejected, model = self._render(stage, tasks, state)
        capacity = enqueued_capacity(self.settings, state)
        used = plan.in_flight_tokens
        packed = pack(entries, max_requests=self.settings.max_requests_per_batch,
                      max_bytes=self.settings.max_bytes_per_batch, max_tokens=None,
                      token_room=(capacity - used) if capacity is not None else None,
                      fits_alone_tokens=capacity)
        for entry, message in packed.oversized:
            rejected[str(entry.task_id)] = ["invalid_request", f"too large for any batch: {message}"]
        price = self.price(model)
        taken = packed.taken
        if taken and price is None and self.settings.budget is not None:
            message = (f"not sent: backends.{self.name}.budget is set but model {model!r} has no price, so its cost "
                       f"cannot be counted; add it under backends.{self.name}.prices as {model}: {{input: USD per "
                       "1M tokens, output: USD per 1M tokens}, then `corral retry --error-class budget`")
            rejected.update({str(e.task_id): [ErrorClass.BUDGET.value, message] for e in taken})
            taken = []
        out_tokens = self._expected_output(stage, state, entries)
        taken, over = self._within_budget(taken, price, out_tokens, plan)
        if over and not taken:
            if plan.open_batches:   # planned again only once a batch in flight is billed
                state.budget_waits = plan.open_batches
                self.save_state()
            else:   # nothing in flight will free budget: what does not fit now never will
                message = self._spent_message(plan)
                rejected.update({str(e.task_id): [ErrorClass.BUDGET.value, message] for e in over})
                over = []
        deferred = [e.task_id for e in packed.deferred + over]
        info: dict[str, Any] = {**base_info, "rejected": rejected, "deferred": deferred, "model": model}
        if not taken:
            return Handle(f"none:{submission.idempotency_key}", info)
        raw_tokens = sum(e.meta["raw_tokens"] for e in taken)
        tokens = sum(e.tokens for e in taken)
        nbytes = sum(len(e.line) for e in taken)
        cost = price.cost(raw_tokens * state.calibration.factor, out_tokens * len(taken)) if price else None
        try:
            remote_id, extra = self.create_batch(stage, submission, taken, model, used)
        except (CapacityError, TransientError, CorralError):
            raise
        except Exception as exc:
            if self.error_kind(exc) == ApiErrorKind.TRANSIENT:
                raise TransientError(f"creating the batch did not get through: {type(exc).__name__}: {exc}") from exc
            raise
        now = self.now()
        self.write_journal(stage, submission.idempotency_key, remote_id, created_at=now, requests=len(taken))
        state.learn_request(tokens / len(taken), nbytes / len(taken),
                            cost / len(taken) if cost is not None else None, len(taken))
        state.record_submit(now, tokens, keep=max(86400.0, getattr(self.settings.token_window, "window", 0.0)))
        self.save_state()
        info.update(extra, tokens=tokens, raw_tokens=raw_tokens, requests=len(taken), bytes=nbytes, cost=cost,
                    tasks=[e.task_id for e in taken], tokenizer=self.estimator(model).tokenizer)
        return Handle(remote_id, info)

    def _render(self, stage: StageContext, tasks: list[TaskSpec],
                state: State) -> tuple[list[Entry], dict[str, list[str]], str | None]:
        template = self.template(stage)
        prefix = self.prefix(stage)
        factor = state.calibration.factor
        entries: list[Entry] = []
        rejected: dict[str, list[str]] = {}
        model: str | None = None
        for task in tasks:
            try:
                body = template.render(task.params, attempt=task.attempt, item_key=task.item_key,
                                       item_id=task.item_id, task_id=task.task_id)
            except RenderError as exc:
                rejected[str(task.task_id)] = ["template", str(exc)]
                continue
            if self.settings.model:
                body.setdefault("model", self.settings.model)
            task_model = body.get("model")
            if not task_model:
                rejected[str(task.task_id)] = ["invalid_request", "the request names no model: set 'model' in "
                                               f"the request or backends.{self.name}.model"]
                continue
            if model is None:
                model = task_model
            elif task_model != model:
                rejected[str(task.task_id)] = ["invalid_request", f"model {task_model!r} differs from {model!r}: "
                                               "one model per stage (a batch holds one model)"]
                continue
            custom_id = f"{prefix}-{task.key}"
            try:
                record = self.line(custom_id, body)
            except ValueError as exc:   # the provider's shape has no place for part of the request
                rejected[str(task.task_id)] = ["template", f"the request cannot be sent to {self.provider}: {exc}"]
                continue
            try:
                line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            except (TypeError, ValueError) as exc:
                rejected[str(task.task_id)] = ["template", f"the request is not JSON: {exc}"]
                continue
            raw = self.estimator(model).request_tokens(body)
            entries.append(Entry(task.task_id, line, int(raw * factor + 0.5), custom_id,
                                 {"raw_tokens": raw, "max_out": max_output(body)}))
        return entries, rejected, model

    def _expected_output(self, stage: StageContext, state: State, entries: list[Entry]) -> float:
        # What the provider billed wins: expected_output_tokens is the figure before any batch is.
        if state.output_per_request:
            return float(state.output_per_request)
        if self.settings.expected_output_tokens is not None:
            return float(self.settings.expected_output_tokens)
        caps = [e.meta["max_out"] for e in entries if e.meta.get("max_out")]
        return float(sum(caps) / len(caps)) if caps else 1000.0

    def find(self, stage: StageContext, submission: SubmissionRecord) -> Handle | None:
        try:
            found = self.find_batch(stage, submission)
        except CorralError:
            raise
        except Exception as exc:  # noqa: BLE001 - sending again without knowing could pay twice
            if self.error_kind(exc) == ApiErrorKind.TRANSIENT:
                raise TransientError(f"cannot look up whether submission {submission.id} was created before "
                                     f"({type(exc).__name__}: {exc}); nothing was sent again") from None
            raise CorralError(f"backend {self.name!r}: cannot look up whether submission {submission.id} was "
                              f"created before the last stop ({type(exc).__name__}: {exc}); nothing was sent "
                              "again; run again when the API answers") from None
        if found is None:
            return None
        remote_id, info = found
        return Handle(remote_id, {"prefix": self.prefix(stage), "adopted": True, **info})

    def describe_task(self, stage: StageContext, submission: SubmissionRecord, task_id: int) -> dict[str, Any] | None:
        """For ``corral logs``: the task's batch, its ``custom_id`` in it, and the files that hold
        its request and answer (at the provider, and the raw answers kept in the run folder)."""
        remote = submission.remote_id if submission.remote_id and not submission.remote_id.startswith("none:") \
            else None
        info = submission.info
        out: dict[str, Any] = {"submission": submission.id, "batch": remote or "(never sent)",
                               "custom_id": f"{info.get('prefix') or self.prefix(stage)}-t{task_id}",
                               "batch_state": (info.get("provider") or {}).get("phase") or submission.state}
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            if info.get(key):
                out[key.removesuffix("_id")] = info[key]
        raw = raw_path(stage.run_dir, stage.name, submission.id)
        if raw.exists():
            out["raw_answers"] = str(raw)
        if info.get("error"):
            out["batch_error"] = info["error"]
        return out

    # -- poll and collect ------------------------------------------------------------------------

    def batch_ended(self, sub: SubmissionRecord) -> None:
        """A batch was collected: what it left at the provider (its input file) may go."""

    def sweep(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> None:
        """Once in a while, what earlier controllers of the run left at the provider (an input file
        uploaded just before a stop) is found and deleted."""

    def poll(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> dict[int, PollResult]:
        out: dict[int, PollResult] = {}
        now = self.now()
        self.sweep(stages, submissions)
        for sub in submissions:
            stage = stages.get(sub.stage)
            if stage is None:
                continue
            early = self._early_results(sub)
            if sub.remote_id is None or sub.remote_id.startswith("none:"):
                out[sub.id] = PollResult(finished=True, results=early)
                continue
            if early:
                out[sub.id] = PollResult(running=False, results=early, info={"early_reported": True})
                continue
            if sub.remote_id.startswith("flex:"):
                flex = self._poll_flex_only(stage, sub)
                if flex is not None:
                    out[sub.id] = flex
                continue
            ask = now - self._last_poll.get(sub.id, -1e18) >= self.settings.poll_interval
            if (sub.info.get("backup") or {}).get("lane") == "flex" and (sub.info["backup"].get("remote_id")):
                # Flex answers are taken at every poll; the batch is asked at its interval.
                if ask:
                    self._last_poll[sub.id] = now
                pair = self._poll_flex_pair(stage, sub, submissions, ask_batch=ask)
                if pair is not None:
                    out[sub.id] = pair
                    if pair.finished:
                        self._last_poll.pop(sub.id, None)
                continue
            if not ask:
                continue
            self._last_poll[sub.id] = now
            if (sub.info.get("backup") or {}).get("remote_id"):
                pair = self._poll_pair(stage, sub, submissions)
                if pair is not None:
                    out[sub.id] = pair
                    if pair.finished:
                        self._last_poll.pop(sub.id, None)
                continue
            try:
                status = self.batch_status(sub)
                self._forget_not_found(sub)
                if not status.ended:
                    info = {}
                    if self.settings.hedge.mode in (HedgeMode.BACKUP, HedgeMode.FLEX):
                        info = self._hedge_due(stage, sub, status) or {}
                    # Without backups, refused one by the cost cap, or before the tail: cancelled past
                    # straggler_after.
                    if self.settings.hedge.mode == HedgeMode.OFF or \
                            (sub.info.get("backup") or {}).get("state") == "refused" or \
                            not self.memory.get("tail", {}).get(stage.name):
                        info = info or self._cancel_if_straggler(stage, sub, status) or {}
                    if sub.info.get("not_found"):
                        info["not_found"] = 0   # known again
                    progress = {"phase": status.phase, **(status.counts or {})}
                    if sub.info.get("provider") != progress:   # for `corral status`, written when it changes
                        info["provider"] = progress
                    out[sub.id] = PollResult(running=status.running, info=info or None)
                    continue
                out[sub.id] = self._collect(stage, sub, status, submissions)
                self.batch_ended(sub)
            except Exception as exc:
                gone = self._poll_failed(sub, exc)
                if gone is not None:
                    out[sub.id] = gone
                    if gone.finished:
                        self._last_poll.pop(sub.id, None)
                continue
            self._last_poll.pop(sub.id, None)
        return out

    def _poll_failed(self, sub: SubmissionRecord, exc: Exception) -> PollResult | None:
        """An outage is logged and the batch asked about again at its next poll (None); a batch the
        provider does not know at ``GONE_AFTER_POLLS`` polls in a row ends, its requests to be sent
        again (the count is kept in the ledger, so it holds across cron ticks); anything else is a bug."""
        kind = self.error_kind(exc)
        what = f"{type(exc).__name__}: {exc}"
        if kind == ApiErrorKind.TRANSIENT:
            self.log(f"{self.name}: reading batch {sub.remote_id} failed ({what}); asking again at the next poll")
            return None
        if kind == ApiErrorKind.GONE:
            counts = self.memory.get("not_found", {})
            seen = counts.get(str(sub.id), 0) + 1
            if seen < GONE_AFTER_POLLS:
                self.memory.set("not_found", {**counts, str(sub.id): seen})
                self.log(f"{self.name}: the provider does not know batch {sub.remote_id} ({what}): poll {seen} of "
                         f"{GONE_AFTER_POLLS}; asking again at the next poll")
                return PollResult(info={"not_found": seen, "not_found_error": what})
            self._forget_not_found(sub)
            message = (f"the provider does not know batch {sub.remote_id} after {seen} polls ({what}); "
                       "given up, its requests are sent again")
            return PollResult(finished=True, gone=message, lost_error_class=ErrorClass.GONE, lost_message=message)
        raise exc

    def _forget_not_found(self, sub: SubmissionRecord) -> None:
        counts = self.memory.get("not_found", {})
        if str(sub.id) in counts:
            counts.pop(str(sub.id))
            self.memory.set("not_found", counts)

    def _early_results(self, sub: SubmissionRecord) -> list[TaskResult]:
        """Requests never sent (rejected alone, or deferred to a later batch), reported at once."""
        return [] if sub.info.get("early_reported") else early_results(sub.info)

    def limit_refused(self, state: State, ceiling: float | None) -> None:
        configured = enqueued_capacity(self.settings, state, refusals=False)
        state.token_limit_hit(self.now(), self.settings.token_limit_backoff, ceiling, configured)
        self.save_state()

    # -- cancel ----------------------------------------------------------------------------------

    def cancel(self, stages: dict[str, StageContext], submissions: list[SubmissionRecord]) -> None:
        for sub in submissions:
            backup = (sub.info.get("backup") or {}).get("remote_id")
            for remote_id in (sub.remote_id, backup):
                if remote_id and not remote_id.startswith(("none:", "flex:")):
                    try:
                        self.cancel_batch(remote_id)
                    except Exception as exc:  # noqa: BLE001 - already ended, or gone
                        self.log(f"{self.name}: cancelling {remote_id} failed: {exc}")

    def close(self) -> None:
        pool = getattr(self, "_flex", None)
        if pool is not None:
            pool.close()
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
