"""What an LLM stage may cost, as a range: low, expected and high, and the assumption that decides
the spread (``corral check``).

Where the ledger holds billed requests of the stage (a pilot batch, or an earlier run), the range
comes from them: each request's cost from its billed input (cached input at the cached rate),
output and reasoning tokens at today's price, and the interval of the mean cost per request
(``Z`` standard errors, within the cheapest and dearest request seen) over the requests left.
Before anything is billed, it comes from the rendered requests and stated assumptions: input as
estimated, give or take the tokenizer's error, output between the expected tokens and the
request's ``max_tokens`` (or ``max_completion_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from corral.llm.pricing import ModelPrice

#: standard errors of the mean each side: about a 95% interval
Z = 2.0
#: billed requests needed before their spread sets the range
MIN_OBSERVED = 2
#: the input estimate's error each side: tiktoken for an OpenAI model, else another tokenizer's
#: count or the 4-bytes-per-token rule
INPUT_ERROR_TIKTOKEN = 0.05
INPUT_ERROR_OTHER = 0.25
#: output tokens when neither expected_output_tokens nor a max_tokens is given, and the range around it
GUESSED_OUTPUT = 1000.0
GUESSED_OUTPUT_RANGE = (250.0, 4000.0)


@dataclass
class Billed:
    """What the ledger knows of a stage's billed requests: from which run, each request's usage,
    and for the run ``corral run`` would continue, what it spent and finished already."""

    run_id: str
    requests: list[dict[str, int]] = field(default_factory=list)   # tokens_in, tokens_out, cached_in, reasoning_out
    continues: bool = False
    spent_usd: float = 0.0
    done: int = 0


@dataclass
class OutputAssumption:
    """Output tokens per request before any is billed: low, expected, high, and in words."""

    low: float
    expected: float
    high: float
    words: str


def output_assumption(expected_setting: float | None, max_out: float | None, max_key: str) -> OutputAssumption:
    """Between the expected tokens and ``max_tokens``; where only the cap is known, up to the cap (the
    projection's figure) and as low as a quarter of it; where neither, a stated guess."""
    if expected_setting is not None:
        expected = float(expected_setting)
        if max_out:
            high = max(expected, float(max_out))
            return OutputAssumption(expected, expected, high, f"output assumed {expected:,.0f} tokens "
                                    f"(expected_output_tokens), up to {max_key} {high:,.0f}")
        return OutputAssumption(expected, expected, 2 * expected, f"output assumed {expected:,.0f} tokens "
                                "(expected_output_tokens), up to twice that (the request sets no max_tokens)")
    if max_out:
        cap = float(max_out)
        return OutputAssumption(cap / 4, cap, cap, f"output assumed to reach {max_key} {cap:,.0f} (an upper "
                                f"bound; as low as {cap / 4:,.0f}); set expected_output_tokens to narrow it")
    low, high = GUESSED_OUTPUT_RANGE
    return OutputAssumption(low, GUESSED_OUTPUT, high, f"output guessed at {GUESSED_OUTPUT:,.0f} tokens "
                            f"({low:,.0f}-{high:,.0f}): the request sets no max_tokens and the backend no "
                            "expected_output_tokens")


def input_error(provider: str, tokenizer: str | None) -> float:
    return INPUT_ERROR_TIKTOKEN if provider == "openai" and (tokenizer or "").startswith("tiktoken") \
        else INPUT_ERROR_OTHER


def cost_range(price: ModelPrice, *, requests: int, per_in: float, in_error: float, tokenizer: str | None,
               output: OutputAssumption, billed: Billed | None, max_usd: float | None) -> dict[str, Any]:
    """The stage's cost as ``{low_usd, expected_usd, high_usd, basis, dominant, note, ...}``."""
    if billed is not None and len(billed.requests) >= MIN_OBSERVED:
        out = _from_billed(price, requests, billed)
    else:
        out = _from_assumptions(price, requests, per_in, in_error, tokenizer, output)
    out.update(budget_usd=max_usd, budget_note=budget_note(max_usd, out["low_usd"], out["high_usd"]))
    return out


def _from_billed(price: ModelPrice, requests: int, billed: Billed) -> dict[str, Any]:
    rows = billed.requests
    n = len(rows)
    rate_in, rate_cached, rate_out = _rates(price)
    inputs = [(r["tokens_in"] - min(r["cached_in"], r["tokens_in"])) * rate_in +
              min(r["cached_in"], r["tokens_in"]) * rate_cached for r in rows]
    outputs = [r["tokens_out"] * rate_out for r in rows]
    costs = [a + b for a, b in zip(inputs, outputs)]
    mean = sum(costs) / n
    half = Z * _std(costs) / math.sqrt(n)
    low_per, high_per = max(min(costs), mean - half), min(max(costs), mean + half)
    done = billed.done if billed.continues else 0
    left = max(0, requests - done)
    spent = billed.spent_usd if billed.continues else 0.0
    dominant = "output" if _std(outputs) >= _std(inputs) else "input"
    source = (f"{n:,} billed requests of this run" if billed.continues
              else f"{n:,} billed requests of run {billed.run_id}")
    if dominant == "output":
        tokens = [r["tokens_out"] for r in rows]
        reasoning = [r["reasoning_out"] for r in rows]
        note = f"output length: {n:,} billed answers ranged {min(tokens):,}-{max(tokens):,} tokens " \
               f"(mean {sum(tokens) / n:,.0f}"
        if any(reasoning):
            note += f", of which {sum(reasoning) / n:,.0f} reasoning"
        note += ")"
    else:
        tokens = [r["tokens_in"] for r in rows]
        cached = sum(r["cached_in"] for r in rows)
        note = f"input length: {n:,} billed requests ranged {min(tokens):,}-{max(tokens):,} input tokens " \
               f"(mean {sum(tokens) / n:,.0f}"
        if cached:
            note += f", {cached / max(1, sum(tokens)):.0%} of it cached"
        note += ")"
    return {"low_usd": round(spent + left * low_per, 4), "expected_usd": round(spent + left * mean, 4),
            "high_usd": round(spent + left * high_per, 4), "basis": "billed", "billed_requests": n,
            "from_run": billed.run_id, "spent_usd": round(spent, 4), "requests_left": left,
            "dominant": dominant, "note": note,
            "interval": f"the mean cost per request of {source}, {Z:g} standard errors each side, "
                        f"over the {left:,} requests left" + (f", plus ${spent:,.4f} spent" if spent else "")}


def _from_assumptions(price: ModelPrice, requests: int, per_in: float, in_error: float, tokenizer: str | None,
                      output: OutputAssumption) -> dict[str, Any]:
    rate_in, _, rate_out = _rates(price)
    low = price.cost(per_in * (1 - in_error), output.low) * requests
    expected = price.cost(per_in, output.expected) * requests
    high = price.cost(per_in * (1 + in_error), output.high) * requests
    output_spread = (output.high - output.low) * rate_out
    input_spread = 2 * in_error * per_in * rate_in
    if output_spread >= input_spread:
        dominant, note = "output", f"no pilot yet: {output.words}"
    else:
        how = "tiktoken" if (tokenizer or "").startswith("tiktoken") else "an estimate of 4 bytes per token"
        dominant, note = "input", (f"no pilot yet: input estimated at {per_in:,.0f} tokens per request by "
                                   f"{how} (±{in_error:.0%})")
    return {"low_usd": round(low, 4), "expected_usd": round(expected, 4), "high_usd": round(high, 4),
            "basis": "assumptions", "billed_requests": 0, "from_run": None, "spent_usd": 0.0,
            "requests_left": requests, "dominant": dominant, "note": note,
            "interval": f"input ±{in_error:.0%}, output {output.low:,.0f}-{output.high:,.0f} tokens per request"}


def budget_note(max_usd: float | None, low: float, high: float) -> str | None:
    """Where the budget lies against the range, in words."""
    if max_usd is None:
        return None
    if max_usd < low:
        return f"the budget of ${max_usd:,.2f} will stop the run: even the low end is ${low:,.2f}"
    if max_usd < high:
        return f"the budget of ${max_usd:,.2f} may stop the run: high end ${high:,.2f}"
    return f"within the budget of ${max_usd:,.2f}: high end ${high:,.2f}"


def _rates(price: ModelPrice) -> tuple[float, float, float]:
    """USD per token at the batch price: input, cached input, output."""
    share = (1 - price.batch_discount) / 1e6
    cached = price.cached_input if price.cached_input is not None else price.input
    return price.input * share, cached * share, price.output * share


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
