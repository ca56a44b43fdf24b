"""How `corral check` shows the sampled items that would fail and an LLM stage's projection, and
`corral status` its tokens and money."""

from __future__ import annotations

from typing import Any

from corral.spec.durations import format_duration


def _tokens(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:,.0f}K"
    return f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 10 else f"${value:,.4f}"


def projection_lines(stages: dict[str, Any]) -> list[str]:
    lines = []
    for name, stage in stages.items():
        failed = stage.get("template_failures")
        if failed:
            lines.append(f"{name}: {failed['failures']} of {failed['sampled']} sampled items would fail a template "
                         f"(about {failed['estimated']:,} of {failed['items']:,}): " + "; ".join(failed["examples"]))
        llm = stage.get("llm")
        if not llm:
            continue
        if llm.get("provider"):
            lines.append(provider_line(name, llm["provider"]))
        if "tokens_in" not in llm:
            lines.append(f"{name}: no request could be built from the sampled items: "
                         + "; ".join(llm.get("render_errors") or []))
            continue
        cost = f"~{_usd(llm['cost_usd'])}" if llm["cost_usd"] is not None else "unknown (no price for this model)"
        pilot = f" (a pilot of {llm['pilot']} first)" if llm["pilot"] else ""
        lines.append(
            f"{name}: {llm['requests']:,} requests to {llm['model']} in about {llm['batches']:,} batches of up to "
            f"{llm['requests_per_batch']:,}{pilot}; input ~{_tokens(llm['tokens_in'])} tokens "
            f"({llm['tokens_per_request']:,.0f} per request, {llm['tokenizer']}), output ~{_tokens(llm['tokens_out'])} "
            f"tokens ({llm['output_basis']}); cost {cost} at the batch price; about "
            f"{format_duration(llm['seconds_to_finish'])} to finish, bound by {llm['bound_by']} with "
            f"{format_duration(llm['turnaround'])} per batch")
        if llm.get("cost_by_type"):
            lines.extend(cost_table_lines(llm["model"], llm["cost_by_type"]))
        if llm.get("cost_range"):
            lines.extend(cost_range_lines(llm["cost_range"]))
        if llm["render_failures"]:
            estimated = round(llm["render_failures"] / llm["sampled"] * llm["requests"])
            lines.append(f"  {llm['render_failures']} of {llm['sampled']} sampled requests would fail (about "
                         f"{estimated:,} of {llm['requests']:,}): " + "; ".join(llm["render_errors"]))
        if llm["oversized_in_sample"]:
            lines.append(f"  {llm['oversized_in_sample']} sampled requests are too large for any batch")
    return lines


def cost_range_lines(spread: dict[str, Any]) -> list[str]:
    """The cost as a range, the assumption that decides its spread, and the budget against it."""
    lines = [f"  cost range: ~{_usd(spread['low_usd'])} to ~{_usd(spread['high_usd'])}, expected "
             f"~{_usd(spread['expected_usd'])} ({spread['interval']})",
             f"  spread: {spread['note']}"]
    if spread.get("budget_note"):
        lines.append(f"  {spread['budget_note']}")
    return lines


def provider_line(name: str, provider: dict[str, Any]) -> str:
    """Where the stage's batches go and the limits they are cut to."""
    profile = f" (profile {provider['profile']})" if provider.get("profile") else ""
    where = provider["base_url"] or "the SDK's default URL"
    share = provider.get("batch_discount")
    discount = f", batch discount {share:.0%}" if share is not None else ""
    window = ""
    if provider.get("completion_window"):
        accepted = f" (accepted: {provider['completion_windows']})" if provider.get("completion_windows") else ""
        window = f", completion window {provider['completion_window']}{accepted}"
    kept = f", files kept {provider['result_retention']}" if provider.get("result_retention") else ""
    return (f"{name}: provider {provider['provider']}{profile} at {where}, API key from {provider['api_key_env']}; "
            f"batches of up to {provider['max_requests_per_batch']:,} requests and "
            f"{provider['max_bytes_per_batch'] / 1e6:,.0f} MB{window}{discount}{kept}")


def _rate(value: float) -> str:
    """USD per million tokens with the digits a price list shows: $0.125/1M, $1.00/1M, $0.0375/1M."""
    text = f"{value:,.4f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{value:,.2f}"
    return f"${text}/1M"


def cost_table_lines(model: str, rows: list[dict[str, Any]]) -> list[str]:
    """The projected cost per token type, as a table under the stage's projection line."""
    cells = [("type", "rate", "tokens", "cost")] + [
        (row["type"], _rate(row["rate_per_million"]) if row["rate_per_million"] is not None else "",
         f"~{_tokens(row['tokens'])}", f"~{_usd(row['cost_usd'])}") for row in rows]
    widths = [max(len(cell[i]) for cell in cells) for i in range(4)]
    lines = [f"  cost at the batch price ({model}):"]
    for cell in cells:
        lines.append("    " + "  ".join([cell[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cell[1:], widths[1:])]))
    return lines


def usage_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for stage, usage in (data.get("usage") or {}).items():
        projected = (f", ~{_usd(usage['cost_projected'])} projected for the stage"
                     if usage.get("cost_projected") is not None else "")
        lines.append(f"{stage}: {usage['tokens_in']:,} input + {usage['tokens_out']:,} output tokens, "
                     f"{_usd(usage['cost'])} spent{projected}")
    return lines


def progress_lines(data: dict[str, Any]) -> list[str]:
    """Per LLM stage still running: the provider's counts of its batches in flight and the ETA."""
    lines = []
    for stage, llm in (data.get("llm") or {}).items():
        if llm.get("backups_sent") or llm.get("backups_refused") or llm.get("flex_sent"):
            flex = llm.get("flex_sent") or 0
            withdrawn = llm.get("flex_withdrawn") or 0
            lanes = f"{llm['backups_sent']} backup batches sent" if not flex else \
                f"{llm['backups_sent']} backups sent ({flex:,} flex requests: {llm['flex_answered']:,} answered, " \
                f"{llm['flex_refused']:,} refused, {llm['flex_lost']:,} lost" + \
                (f", {withdrawn:,} not sent as their batch answered first)" if withdrawn else ")")
            lines.append(f"{stage}: {lanes} ({llm['backups_in_flight']} in "
                         f"flight, {llm['backups_refused']} refused by hedge.max_extra_cost), "
                         f"~{_usd(llm['backup_estimated_cost'])} estimated, {_usd(llm['backup_extra_cost'])} "
                         "billed for answers not used")
        if not llm["batches_in_flight"] and not llm["not_sent"]:
            continue
        text = (f"{stage}: {llm['batches_in_flight']} batches in flight, the provider reports "
                f"{llm['provider_done']:,} of {llm['requests_in_flight']:,} requests done")
        if llm["provider_failed"]:
            text += f", {llm['provider_failed']:,} failed"
        if llm["not_sent"]:
            text += f"; {llm['not_sent']:,} not sent yet"
        basis = "median turnaround" if llm["turnaround_basis"] == "learned" else "expected_turnaround"
        text += (f"; ETA ~{format_duration(llm['eta_s'])} ({basis} "
                 f"{format_duration(llm['median_turnaround_s'])} per batch)")
        lines.append(text)
    return lines
