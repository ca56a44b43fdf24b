"""What an LLM stage will take before it runs: requests, batches, tokens, cost and time to finish
under the limits (``corral check``), and the checks that a stage and its backend fit together."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from corral.errors import SpecError
from corral.extras import Extra, missing
from corral.llm.cost_range import Billed, cost_range, input_error, output_assumption
from corral.llm.gemini_request import gemini_request
from corral.llm.pricing import PRICES, ModelPrice, price_for
from corral.llm.requests import RenderError, RequestTemplate
from corral.llm.scheduler import State, enqueued_capacity, target_batch_requests
from corral.llm.tokens import TokenEstimator
from corral.spec.llm import LLM_BACKEND_TYPES
from corral.spec.llm_profiles import PROFILES

SAMPLE = 50


def is_llm(loaded: Any, stage: Any) -> bool:
    settings = loaded.backends.get(stage.backend)
    return getattr(settings, "type", None) in LLM_BACKEND_TYPES


def check_llm_stage(loaded: Any, name: str, stage: Any) -> None:
    """A ``request:`` stage runs on an LLM batch backend, and an LLM batch backend runs only those."""
    llm = is_llm(loaded, stage)
    if stage.request is not None and not llm:
        raise SpecError(f"a stage with 'request:' needs an LLM batch backend, not {stage.backend!r}",
                        file=str(loaded.path), key=f"stages.{name}.backend",
                        expected="a backend of type " + " or ".join(LLM_BACKEND_TYPES))
    if llm and stage.request is None:
        raise SpecError(f"backend {stage.backend!r} sends LLM requests: the stage needs 'request:' (the request "
                        "body template), not 'run' or 'call'", file=str(loaded.path), key=f"stages.{name}")
    if llm and stage.per != "item":
        raise SpecError("an LLM stage sends one request per item", file=str(loaded.path), key=f"stages.{name}.per",
                        expected="item")
    if llm:
        require_llm_extra(loaded, name, stage)
        try:
            RequestTemplate(stage.request, loaded.root)
        except ValueError as exc:
            raise SpecError(str(exc), file=str(loaded.path), key=f"stages.{name}.request") from None


#: what an LLM stage imports, by backend type: the templates and the provider's SDK
_NEEDS = {"openai_batch": ("jinja2", "openai"), "anthropic_batch": ("jinja2", "anthropic"),
          "gemini_batch": ("jinja2", "google.genai")}
_PROVIDERS = {"openai_batch": "openai", "anthropic_batch": "anthropic", "gemini_batch": "gemini"}


def require_llm_extra(loaded: Any, name: str, stage: Any) -> None:
    settings = loaded.backends[stage.backend]
    absent = missing(_NEEDS.get(settings.type, ("jinja2",)))
    if absent:
        raise SpecError(f"stage {name!r} sends LLM requests through backend {stage.backend!r} ({settings.type}), "
                        f"which needs {', '.join(absent)}: not installed", file=str(loaded.path),
                        key=f"stages.{name}", expected=f"the llm extra: {Extra.LLM.install}")


def _line(provider: str, settings: Any, body: dict[str, Any]) -> dict[str, Any]:
    """One request as its batch holds it, for the size of a batch."""
    custom_id = "c0000000000-t0000000"
    if provider == "anthropic":
        return {"custom_id": custom_id, "params": body}
    if provider == "gemini":
        try:
            return {"key": custom_id, "request": gemini_request(body)}
        except ValueError:
            return {"key": custom_id, "request": body}
    return {"custom_id": custom_id, "method": "POST", "url": getattr(settings, "endpoint", ""), "body": body}


def project(loaded: Any, name: str, stage: Any, items: list[Any],
            billed: Billed | None = None) -> dict[str, Any] | None:
    """Render a sample of the items and extrapolate to all of them; ``billed``: what the ledger knows
    of the stage's billed requests, for the cost range."""
    if not is_llm(loaded, stage):
        return None
    settings = loaded.backends[stage.backend]
    provider = _PROVIDERS[settings.type]
    template = RequestTemplate(stage.request, loaded.root)
    count = len(items)
    step = max(1, count // SAMPLE)
    sample = items[::step][:SAMPLE]
    tokens: list[int] = []
    sizes: list[int] = []
    outputs: list[int] = []
    output_key = "max_tokens"
    errors: list[str] = []
    model = settings.model
    estimator: TokenEstimator | None = None
    for item in sample:
        try:
            body = template.render(item.params, attempt=1, item_key=item.key, item_id=item.item_id, task_id=0)
        except RenderError as exc:
            errors.append(f"{item.key}: {exc}")
            continue
        if settings.model:
            body.setdefault("model", settings.model)
        model = body.get("model") or model
        if estimator is None:
            estimator = TokenEstimator(provider=provider, mode=settings.tokenizer, model=model)
        tokens.append(estimator.request_tokens(body))
        line = _line(provider, settings, body)
        sizes.append(len(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()) + 1)
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            if isinstance(body.get(key), int):
                outputs.append(body[key])
                output_key = key
                break
    out: dict[str, Any] = {"provider": provider_summary(settings), "requests": count, "model": model,
                           "sampled": len(sample), "render_errors": errors[:5], "render_failures": len(errors)}
    if not tokens:
        return out
    per_in = sum(tokens) / len(tokens)
    per_bytes = sum(sizes) / len(sizes)
    if settings.expected_output_tokens is not None:
        per_out, out_basis = float(settings.expected_output_tokens), "expected_output_tokens"
    elif outputs:
        per_out, out_basis = sum(outputs) / len(outputs), "max_tokens (an upper bound)"
    else:
        per_out, out_basis = 1000.0, "a guess of 1,000 per request"
    state = State(tokens_per_request=per_in, bytes_per_request=per_bytes)
    per_batch = target_batch_requests(settings, state, count)
    pilot = min(settings.pilot, count)
    batches = (1 if pilot else 0) + math.ceil(max(0, count - pilot) / per_batch)
    tokens_in, tokens_out = per_in * count, per_out * count
    price = backend_price(model, settings)
    turnaround = settings.expected_turnaround
    capacity = enqueued_capacity(settings, state)
    seconds = turnaround * (2 if pilot else 1)       # the pilot's turnaround, then the last batch's
    bound = "the batches' turnaround" + (" (the pilot's, then the others')" if pilot else "")
    limited = tokens_in / capacity * turnaround + turnaround * (1 if pilot else 0) if capacity else 0.0
    if limited > seconds:
        seconds = limited
        ratio = capacity / settings.enqueued_token_limit
        bound = f"the enqueued-token limit ({settings.enqueued_token_limit:,} x {ratio:.2g})"
    if settings.max_batches_per_hour and batches / settings.max_batches_per_hour * 3600 > seconds:
        seconds = batches / settings.max_batches_per_hour * 3600 + turnaround
        bound = f"max_batches_per_hour ({settings.max_batches_per_hour})"
    oversized = [t for t, b in zip(tokens, sizes) if b > settings.max_bytes_per_batch or (capacity and t > capacity)]
    out.update(cost_by_type=cost_by_type(price, tokens_in, tokens_out) if price else None)
    if price is not None:
        tokenizer = estimator.tokenizer if estimator else None
        output = output_assumption(settings.expected_output_tokens, max(outputs) if outputs else None, output_key)
        out["cost_range"] = cost_range(
            price, requests=count, per_in=per_in, in_error=input_error(provider, tokenizer), tokenizer=tokenizer,
            output=output, billed=billed, max_usd=settings.budget.max_usd if settings.budget is not None else None)
    out.update(tokens_per_request=round(per_in, 1), bytes_per_request=round(per_bytes), output_basis=out_basis,
               requests_per_batch=min(per_batch, max(1, count - pilot)), batches=batches, pilot=pilot, tokens_in=round(tokens_in),
               tokens_out=round(tokens_out), cost_usd=round(price.cost(tokens_in, tokens_out), 4) if price else None,
               priced=price is not None, seconds_to_finish=round(seconds), bound_by=bound,
               turnaround=turnaround, tokenizer=estimator.tokenizer if estimator else None,
               oversized_in_sample=len(oversized))
    if settings.budget is not None and price is None:
        raise SpecError(f"backend {stage.backend!r} has a budget but the model {model!r} has no price",
                        file=str(loaded.path), key=f"backends.{stage.backend}.prices",
                        expected=f"{model}: {{input: USD per 1M tokens, output: USD per 1M tokens}}")
    return out


def backend_price(model: str | None, settings: Any) -> ModelPrice | None:
    """The price of ``model`` on this backend: as ``price_for``, with the backend's ``batch_discount``
    (its profile's) for every price that does not set its own."""
    discount = getattr(settings, "batch_discount", None)
    if discount is None:
        return price_for(model, settings.prices)
    own = {name: ModelPrice(input=entry.input, output=entry.output, cached_input=entry.cached_input,
                            batch_discount=entry.batch_discount if "batch_discount" in entry.model_fields_set
                            else discount) for name, entry in settings.prices.items()}
    shipped = {name: replace(entry, batch_discount=discount) for name, entry in PRICES.items() if name not in own}
    return price_for(model, {**shipped, **own})


def provider_summary(settings: Any) -> dict[str, Any]:
    """Who the stage's requests go to and the limits its batches are cut to (``corral check``)."""
    profile = PROFILES.get(getattr(settings, "profile", None) or "")
    names = {"anthropic_batch": "Anthropic", "gemini_batch": "Google Gemini"}
    provider = profile.provider if profile else names.get(settings.type, "OpenAI")
    return {"profile": getattr(settings, "profile", None), "provider": provider,
            "base_url": settings.base_url, "api_key_env": settings.api_key_env,
            "max_requests_per_batch": settings.max_requests_per_batch,
            "max_bytes_per_batch": settings.max_bytes_per_batch,
            "completion_window": getattr(settings, "completion_window", None),
            "completion_windows": profile.windows() if profile else None,
            "result_retention": profile.result_retention if profile else None,
            "batch_discount": getattr(settings, "batch_discount", None),
            "endpoint": getattr(settings, "endpoint", None)}


def cost_by_type(price: Any, tokens_in: float, tokens_out: float) -> list[dict[str, Any]]:
    """The projected cost per token type at the batch price: rate (USD per 1M tokens), tokens, cost."""
    discount = 1 - price.batch_discount
    rows = [{"type": kind, "rate_per_million": rate * discount, "tokens": round(tokens),
             "cost_usd": round(tokens * rate * discount / 1e6, 4)}
            for kind, rate, tokens in (("input", price.input, tokens_in), ("output", price.output, tokens_out))]
    rows.append({"type": "total", "rate_per_million": None, "tokens": round(tokens_in + tokens_out),
                 "cost_usd": round(price.cost(tokens_in, tokens_out), 4)})
    return rows
