"""Input-token estimates for request bodies, before anything is sent.

Text is counted with tiktoken where its encoding can be loaded. tiktoken downloads an encoding on
first use (then caches it); where that fails (offline machines, the test suite) the estimate is
one token per 4 bytes of UTF-8 text, the providers' rule of thumb for English. Images follow the
providers' published formulas. Either way the estimate is then corrected by the ratio of billed to
estimated input tokens of the batches that finished (``Calibration``), so a systematic error of the
tokenizer (tiktoken is not Claude's tokenizer) disappears after the first batch.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

#: tokens added per message and per request by the chat formats (role markers, priming)
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 3
#: an image whose size cannot be read (a remote URL) is counted as a 1024 x 1024 one
UNKNOWN_IMAGE = (1024, 1024)
_SKIPPED_KEYS = frozenset(("model", "role", "type", "detail", "media_type", "custom_id", "url", "method",
                           "response_format", "max_tokens", "max_completion_tokens", "temperature", "tool_choice"))
#: how long ``auto`` waits for tiktoken to load its encoding (a download on first use; where there
#: is no network the load may hang rather than fail) before using the fallback for this process
AUTO_LOAD_TIMEOUT = 3.0
EXPLICIT_LOAD_TIMEOUT = 60.0

_encoders: dict[str, Any] = {}
_encoder_lock = threading.Lock()


def fallback_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


def load_encoding(name: str = "o200k_base", timeout: float = AUTO_LOAD_TIMEOUT) -> Any | None:
    """tiktoken's encoding, or None where it cannot be loaded (no network and no cached copy)."""
    with _encoder_lock:
        if name in _encoders:
            return _encoders[name]
        box: list[Any] = [None]

        def load() -> None:
            try:
                import tiktoken

                box[0] = tiktoken.get_encoding(name)
            except Exception:  # noqa: BLE001 - any failure means: use the fallback estimate
                box[0] = None

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        thread.join(timeout)
        _encoders[name] = box[0]
        return box[0]


def encoding_for(model: str | None) -> str:
    if model and any(model.startswith(p) for p in ("gpt-4-", "gpt-3.5", "gpt-4-turbo")) and \
            not model.startswith("gpt-4o"):
        return "cl100k_base"
    return "o200k_base"


def openai_image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """OpenAI's formula for GPT-4o-class vision models: 85 base tokens, plus 170 per 512-px tile
    after fitting the image in 2048 x 2048 and scaling its shorter side down to 768 px."""
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def anthropic_image_tokens(width: int, height: int) -> int:
    """Anthropic's formula: width x height / 750, after scaling the long edge down to 1568 px; at
    most about 1,600 tokens."""
    w, h = float(width), float(height)
    if max(w, h) > 1568:
        scale = 1568 / max(w, h)
        w, h = w * scale, h * scale
    return min(1600, math.ceil(w * h / 750))


@functools.lru_cache(maxsize=4096)
def _image_size_cached(head: str, _length: int) -> tuple[int, int]:
    from PIL import Image

    try:
        raw = base64.b64decode(head[: len(head) - len(head) % 4])
        with Image.open(io.BytesIO(raw)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - an unreadable header: count a typical image
        return UNKNOWN_IMAGE


def image_size(data: str) -> tuple[int, int]:
    """Pixel size of a base64 image (raw or a data URL), read from its first bytes only."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    # The header of a JPEG or PNG holds the size; 96 KiB of base64 covers large EXIF blocks too.
    return _image_size_cached(data[:131072], len(data))


@dataclass
class TokenEstimator:
    """Estimated input tokens of one request body, for ``provider`` "openai" or "anthropic"."""

    provider: str = "openai"
    mode: str = "auto"          # auto | tiktoken | estimate
    model: str | None = None

    def __post_init__(self) -> None:
        self._encode: Callable[[str], int] | None = None
        self.tokenizer = "estimate"
        if self.mode != "estimate":
            encoding = load_encoding(encoding_for(self.model),
                                     AUTO_LOAD_TIMEOUT if self.mode == "auto" else EXPLICIT_LOAD_TIMEOUT)
            if encoding is not None:
                self._encode = lambda text: len(encoding.encode(text, disallowed_special=()))
                self.tokenizer = f"tiktoken:{encoding.name}"
            elif self.mode == "tiktoken":
                raise RuntimeError("tiktoken's encoding could not be loaded (it downloads it on first use); "
                                   "use tokenizer: auto or estimate where there is no network")
        self.text_tokens = functools.lru_cache(maxsize=8192)(self._text_tokens)

    def _text_tokens(self, text: str) -> int:
        if not text:
            return 0
        return self._encode(text) if self._encode is not None else fallback_tokens(text)

    def image_tokens(self, width: int, height: int, detail: str = "auto") -> int:
        if self.provider == "gemini":   # 258 up to 384 px a side, else 258 per 768 px tile
            return 258 if max(width, height) <= 384 else 258 * (-(-width // 768)) * (-(-height // 768))
        if self.provider == "anthropic":
            return anthropic_image_tokens(width, height)
        return openai_image_tokens(width, height, detail)

    def request_tokens(self, body: dict[str, Any]) -> int:
        total = REQUEST_OVERHEAD
        messages = body.get("messages")
        if isinstance(messages, list):
            total += MESSAGE_OVERHEAD * len(messages)
        return total + self._walk(body, None)

    def _walk(self, value: Any, key: str | None) -> int:
        if isinstance(value, str):
            if key in _SKIPPED_KEYS:
                return 0
            return self.text_tokens(value)
        if isinstance(value, list):
            return sum(self._walk(v, key) for v in value)
        if not isinstance(value, dict):
            return 0
        kind = value.get("type")
        if kind == "image_url" or kind == "input_image":
            image = value.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            detail = (image.get("detail") if isinstance(image, dict) else None) or value.get("detail") or "auto"
            size = image_size(url) if isinstance(url, str) and url.startswith("data:") else UNKNOWN_IMAGE
            return self.image_tokens(*size, detail=detail)
        inline = value.get("inlineData")
        if isinstance(inline, dict) and isinstance(inline.get("data"), str):   # a Gemini part
            return self.image_tokens(*image_size(inline["data"]))
        if kind == "image":
            source = value.get("source") or {}
            data = source.get("data") if source.get("type") == "base64" else None
            size = image_size(data) if isinstance(data, str) else UNKNOWN_IMAGE
            return self.image_tokens(*size)
        return sum(self._walk(v, k) for k, v in value.items())


@dataclass
class Calibration:
    """Billed over estimated input tokens, accumulated over finished batches, and the same ratio
    batch by batch (the last ``KEEP``) for the spread of the estimate's error."""

    estimated: float = 0.0
    billed: float = 0.0
    ratios: list[float] = field(default_factory=list)    # billed / estimated per batch, oldest first

    KEEP = 50

    @property
    def factor(self) -> float:
        if self.estimated <= 0 or self.billed <= 0:
            return 1.0
        return self.billed / self.estimated

    def add(self, estimated: float, billed: float) -> None:
        if estimated > 0 and billed > 0:
            self.estimated += estimated
            self.billed += billed
            self.ratios = (self.ratios + [billed / estimated])[-self.KEEP:]

    def residuals(self) -> list[float]:
        """Per batch, billed tokens over the estimate corrected by ``factor``: 1.0 where the
        corrected estimate was exact, 1.05 where the bill was 5% over it."""
        factor = self.factor
        return [ratio / factor for ratio in self.ratios]

    def upper_error(self, quantile: float, min_samples: int) -> float | None:
        """How far over a corrected estimate a batch's bill may come: the larger of the residuals'
        empirical ``quantile`` and a normal prediction bound at about that level (which widens
        while few batches are measured); None until ``min_samples`` batches are billed."""
        residuals = self.residuals()
        n = len(residuals)
        if n < max(2, min_samples):
            return None
        ordered = sorted(residuals)
        empirical = ordered[min(n - 1, max(0, math.ceil(quantile * n) - 1))]
        mean = sum(residuals) / n
        sd = math.sqrt(sum((r - mean) ** 2 for r in residuals) / (n - 1))
        z = NormalDist().inv_cdf(min(max(quantile, 0.5), 1 - 1e-6)) * (1.0 + 2.0 / n)   # a rough Student t
        return max(empirical, mean + z * sd * math.sqrt(1.0 + 1.0 / n))
