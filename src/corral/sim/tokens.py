"""The simulator's billed-token model: deterministic, documented, and deliberately not tiktoken.

Text: ``ceil(utf8 bytes / 4)`` per text value, plus 4 tokens per message and 3 per request.
OpenAI images: ``detail: low`` is 85 tokens; otherwise the image is scaled to fit 2048x2048, then
so that its shortest side is at most 768 px, and costs 85 + 170 per 512 px tile.
Anthropic images: scaled so the long edge is at most 1568 px, then ``ceil(width * height / 750)``.
A JSON schema (``response_format`` / ``output_format``) counts as its compact JSON text.
Output: ``ceil(utf8 bytes of the answer / 4)``.
The image size is read from the data URL's header bytes (PNG, JPEG, GIF, WebP; other formats with
Pillow where it is installed); an image given by an http(s) URL, or whose size cannot be read, is
taken as 1024x1024.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Any

PER_MESSAGE = 4
PER_REQUEST = 3
UNKNOWN_IMAGE = (1024, 1024)


def text_tokens(text: str) -> int:
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return -(-size // 4)


def openai_image_tokens(width: int, height: int, detail: str = "auto") -> int:
    if detail == "low":
        return 85
    if width > 2048 or height > 2048:
        scale = 2048 / max(width, height)
        width, height = int(width * scale), int(height * scale)
    if min(width, height) > 768:
        scale = 768 / min(width, height)
        width, height = int(width * scale), int(height * scale)
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return 85 + 170 * tiles


def anthropic_image_tokens(width: int, height: int) -> int:
    if max(width, height) > 1568:
        scale = 1568 / max(width, height)
        width, height = int(width * scale), int(height * scale)
    return math.ceil(width * height / 750)


def openai_request_tokens(body: dict[str, Any]) -> int:
    """Billed input tokens of a chat completions (or responses) request body."""
    total = PER_REQUEST
    messages = body.get("messages")
    if messages is None and "input" in body:  # /v1/responses
        messages = body["input"] if isinstance(body["input"], list) else [{"content": body["input"]}]
    for message in messages or []:
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                total += _openai_part(part)
    fmt = body.get("response_format") or (body.get("text") or {}).get("format")
    if isinstance(fmt, dict):
        total += text_tokens(json.dumps(fmt, separators=(",", ":")))
    return total


def _openai_part(part: Any) -> int:
    if isinstance(part, str):
        return text_tokens(part)
    if not isinstance(part, dict):
        return 0
    kind = part.get("type")
    if kind in ("text", "input_text"):
        return text_tokens(str(part.get("text", "")))
    if kind in ("image_url", "input_image"):
        image = part.get("image_url")
        url, detail = (image.get("url", ""), image.get("detail", "auto")) if isinstance(image, dict) \
            else (image or "", part.get("detail", "auto"))
        return openai_image_tokens(*image_size_from_url(str(url)), detail=detail)
    return 0


def anthropic_request_tokens(params: dict[str, Any]) -> int:
    """Billed input tokens of a Messages API request (the ``params`` of a batch request)."""
    total = PER_REQUEST
    system = params.get("system")
    if isinstance(system, str):
        total += text_tokens(system)
    elif isinstance(system, list):
        total += sum(_anthropic_block(b) for b in system)
    for message in params.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            total += sum(_anthropic_block(b) for b in content)
    fmt = params.get("output_format") or (params.get("output_config") or {}).get("format")
    if isinstance(fmt, dict):
        total += text_tokens(json.dumps(fmt, separators=(",", ":")))
    return total


def _anthropic_block(block: Any) -> int:
    if not isinstance(block, dict):
        return 0
    if block.get("type") == "text":
        return text_tokens(str(block.get("text", "")))
    if block.get("type") == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            data = str(source.get("data", ""))
            size = image_size(_b64_prefix(data)) or _full_image_size(_b64_all(data))
        else:
            size = None
        return anthropic_image_tokens(*(size or UNKNOWN_IMAGE))
    return 0


def image_size_from_url(url: str) -> tuple[int, int]:
    if url.startswith("data:"):
        comma = url.find(",")
        if comma > 0:
            size = image_size(_b64_prefix(url[comma + 1:]))
            if size is None:
                size = _full_image_size(_b64_all(url[comma + 1:]))
            if size:
                return size
    return UNKNOWN_IMAGE


def _full_image_size(data: bytes) -> tuple[int, int] | None:
    """The size from the whole image: header parsing first, then Pillow (other formats) if installed."""
    size = image_size(data)
    if size is None and data:
        try:
            from io import BytesIO

            from PIL import Image

            with Image.open(BytesIO(data)) as image:
                size = image.size
        except Exception:  # noqa: BLE001 (not an image Pillow can read, or no Pillow: the size stays unknown)
            size = None
    return size


def _b64_prefix(data: str, chars: int = 65536) -> bytes:
    head = data[: chars - chars % 4]
    try:
        return base64.b64decode(head)
    except (binascii.Error, ValueError):
        return b""


def _b64_all(data: str) -> bytes:
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError):
        return b""


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header bytes (PNG, JPEG, GIF, WebP), or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None
