"""What requests cost: a shipped price table per model, overridable by the campaign.

Prices are USD per million tokens at the providers' standard (not batch) rates, as published on
their pricing pages in 2025; every provider bills batches at half price (``batch_discount: 0.5``).
Prices change: a campaign overrides any entry, or adds a model, under ``prices:`` in its backend
settings. A model name matches its entry exactly or by the longest entry it starts with, so
``gpt-4o-2024-08-06`` is priced as ``gpt-4o`` and ``gpt-4o-mini-2024-07-18`` as ``gpt-4o-mini``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPrice:
    input: float
    output: float
    cached_input: float | None = None
    batch_discount: float = 0.5

    def cost(self, tokens_in: int, tokens_out: int, cached_in: int = 0, batch: bool = True) -> float:
        cached_in = min(max(cached_in, 0), tokens_in)
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        usd = ((tokens_in - cached_in) * self.input + cached_in * cached_rate + tokens_out * self.output) / 1e6
        return usd * (1 - self.batch_discount) if batch else usd


# model: (input, cached input, output), USD per 1M tokens, standard rates
_TABLE: dict[str, tuple[float, float | None, float]] = {
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4-turbo": (10.00, None, 30.00),
    "gpt-3.5-turbo": (0.50, None, 1.50),
    "o1": (15.00, 7.50, 60.00),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o4-mini": (1.10, 0.275, 4.40),
    "text-embedding-3-small": (0.02, None, 0.0),
    "text-embedding-3-large": (0.13, None, 0.0),
    "claude-opus-4-5": (5.00, 0.50, 25.00),
    "claude-opus-4-1": (15.00, 1.50, 75.00),
    "claude-opus-4": (15.00, 1.50, 75.00),
    "claude-sonnet-4-5": (3.00, 0.30, 15.00),
    "claude-sonnet-4": (3.00, 0.30, 15.00),
    "claude-3-7-sonnet": (3.00, 0.30, 15.00),
    "claude-haiku-4-5": (1.00, 0.10, 5.00),
    "claude-3-5-haiku": (0.80, 0.08, 4.00),
    "claude-3-haiku": (0.25, 0.03, 1.25),
    # https://ai.google.dev/gemini-api/docs/pricing (paid tier, prompts up to 200k tokens; the Batch
    # API bills half of these)
    "gemini-2.5-pro": (1.25, 0.125, 10.00),
    "gemini-2.5-flash": (0.30, 0.03, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.01, 0.40),
    "gemini-2.0-flash": (0.10, 0.025, 0.40),
    "gemini-2.0-flash-lite": (0.075, None, 0.30),
}

PRICES: dict[str, ModelPrice] = {name: ModelPrice(i, o, c) for name, (i, c, o) in _TABLE.items()}


def price_for(model: str | None, overrides: dict[str, object] | None = None) -> ModelPrice | None:
    """The price of ``model``: the campaign's override, else the shipped table; None if unknown."""
    if not model:
        return None
    table: dict[str, ModelPrice] = dict(PRICES)
    for name, entry in (overrides or {}).items():
        table[name] = ModelPrice(input=entry.input, output=entry.output, cached_input=entry.cached_input,
                                 batch_discount=entry.batch_discount) if not isinstance(entry, ModelPrice) else entry
    model = model.removeprefix("models/")   # Gemini's resource name of a model
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None
