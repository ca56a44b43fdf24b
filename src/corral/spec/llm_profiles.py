"""Named profiles of the ``openai_batch`` backend: providers that take the OpenAI batch file format
(JSONL of ``{custom_id, method, url, body}``) through the same endpoints, with their own limits.

A profile is a set of defaults (``profile: groq``); any setting given explicitly wins over it. Every
number comes from the provider's documentation, with the page and the date it was read in
docs/backends/openai-compatible.md. A provider whose Batch API the official ``openai`` SDK does
not drive as it drives OpenAI's is listed in ``REFUSED`` with the reason, so that naming it is a
clear error rather than a profile that works halfway.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1000 * 1000


@dataclass(frozen=True)
class Profile:
    name: str
    provider: str
    #: None: the SDK's own default (OpenAI's API)
    base_url: str | None
    api_key_env: str
    max_requests_per_batch: int
    max_bytes_per_batch: int
    #: the shortest and the longest completion window the provider accepts, in seconds
    completion_window_range: tuple[float, float]
    #: how long the provider keeps a batch's files, as its documentation says; None if it says nothing
    result_retention: str | None
    #: the share taken off the standard price for batches
    batch_discount: float
    endpoints: tuple[str, ...]
    #: the batch list pages as OpenAI's does (``after`` and ``has_more``), which the SDK follows; else
    #: only its first page is read (the newest batches)
    pages_like_openai: bool
    docs: str

    def settings(self) -> dict[str, object]:
        """The backend settings this profile gives when they are not set explicitly."""
        return {"base_url": self.base_url, "api_key_env": self.api_key_env,
                "max_requests_per_batch": self.max_requests_per_batch,
                "max_bytes_per_batch": self.max_bytes_per_batch, "batch_discount": self.batch_discount,
                "endpoint": self.endpoints[0]}

    def windows(self) -> str:
        """The completion windows accepted, as the documentation gives them."""
        low, high = (_window_text(s) for s in self.completion_window_range)
        return low if low == high else f"{low} to {high}"


def _window_text(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds > 86400 and seconds % 86400 == 0 else f"{seconds / 3600:g}h"


HOUR, DAY = 3600.0, 86400.0

PROFILES: dict[str, Profile] = {
    "openai": Profile(
        name="openai", provider="OpenAI", base_url=None, api_key_env="OPENAI_API_KEY",
        max_requests_per_batch=50_000, max_bytes_per_batch=200 * MB, completion_window_range=(DAY, DAY),
        result_retention=None, batch_discount=0.5,
        endpoints=("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"),
        pages_like_openai=True, docs="https://platform.openai.com/docs/api-reference/batch/create"),
    "groq": Profile(
        name="groq", provider="Groq", base_url="https://api.groq.com/openai/v1", api_key_env="GROQ_API_KEY",
        max_requests_per_batch=50_000, max_bytes_per_batch=200 * MB, completion_window_range=(DAY, 7 * DAY),
        result_retention="30 days", batch_discount=0.5,
        endpoints=("/v1/chat/completions",),   # its audio endpoints are not requests this backend sends
        pages_like_openai=False, docs="https://console.groq.com/docs/batch"),
}

#: providers with an OpenAI-like batch format that the ``openai_batch`` backend does not drive, and why
REFUSED: dict[str, str] = {
    "azure": ("Azure OpenAI batch deployments are addressed by deployment name and api-version through "
              "openai.AzureOpenAI, which this backend does not build; with Azure's v1 API "
              "(https://RESOURCE.openai.azure.com/openai/v1/) set base_url, api_key_env and the deployment "
              "name as the model instead of a profile"),
    "together": ("Together AI's Batch API is driven through Together's own SDK and its documented limits "
                 "(50,000 requests, 100 MB per file) are for that API; this backend does not drive it "
                 "through the openai SDK"),
}


def profile_named(name: str) -> Profile:
    """The profile ``name``; ValueError naming the valid profiles (and the reason, for a refused one)."""
    if name in PROFILES:
        return PROFILES[name]
    valid = ", ".join(sorted(PROFILES))
    if name in REFUSED:
        raise ValueError(f"profile {name!r} is not offered: {REFUSED[name]} (valid profiles: {valid})")
    raise ValueError(f"unknown profile {name!r} (valid profiles: {valid})")
