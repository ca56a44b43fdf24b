"""The money budget of the LLM batch backends: what a request costs as estimated now, and which
requests of a batch still fit what is left (mixed into LlmBatchBackend, whose settings, prices and
output estimate it uses)."""

from __future__ import annotations

from typing import Any

from corral.backends.base import StageContext
from corral.llm.packing import Entry
from corral.llm.pricing import ModelPrice
from corral.llm.scheduler import State


class BudgetGate:
    settings: Any
    name: str

    def _cost_per_request(self, stage: StageContext, state: State) -> float | None:
        """A request's cost as estimated now, for the budget: its input tokens as calibrated so far,
        its output as billed so far (or as configured); None where that is not known yet."""
        model = (stage.spec.request or {}).get("model")
        price = self.price(model if isinstance(model, str) and "{" not in model else self.settings.model)
        if price is None or state.tokens_per_request is None or not (
                state.output_per_request or self.settings.expected_output_tokens is not None):
            return None
        state.follow_calibration()
        return price.cost(state.tokens_per_request, self._expected_output(stage, state, []))

    def _spent_message(self, plan: Any) -> str:
        return (f"not sent: it would pass the budget of ${self.settings.budget.max_usd:,.2f} (${plan.spent:,.2f} "
                f"recorded); raise backends.{self.name}.budget.max_usd, then `corral retry --error-class budget`")

    def _within_budget(self, entries: list[Entry], price: ModelPrice | None, out_tokens: float,
                       plan: Any) -> tuple[list[Entry], list[Entry]]:
        budget = self.settings.budget
        if budget is None or price is None or not entries:   # without a price, the caller refused them
            return entries, []
        room = budget.max_usd - plan.spent - plan.in_flight_cost
        taken: list[Entry] = []
        for index, entry in enumerate(entries):
            cost = price.cost(entry.tokens, out_tokens)
            if cost > room:
                return taken, entries[index:]
            room -= cost
            taken.append(entry)
        return taken, []
