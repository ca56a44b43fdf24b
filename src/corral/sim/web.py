"""HTTP plumbing shared by both providers' endpoints: requests, responses, errors, multipart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]          # lower-case names
    body: bytes
    base_url: str                    # scheme://host:port as the client addressed us

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_request_error", "The request body is not valid JSON.") from None

    @staticmethod
    def parse_query(raw: str) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


@dataclass
class Resp:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_resp(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Resp:
    return Resp(status, json.dumps(data, separators=(",", ":")).encode(), headers=headers or {})


class ApiError(Exception):
    """An error answer; each provider renders it in its own error shape."""

    def __init__(self, status: int, kind: str, message: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.code, self.param = status, kind, message, code, param
        self.headers = headers or {}


def multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename or None, value bytes)."""
    boundary = None
    for piece in content_type.split(";"):
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ApiError(400, "invalid_request_error", "Expected a multipart/form-data body with a boundary.")
    delimiter = b"--" + boundary.encode()
    fields: dict[str, tuple[str | None, bytes]] = {}
    start = body.find(delimiter)
    while start >= 0:
        start += len(delimiter)
        if body[start:start + 2] == b"--":
            break
        start += 2  # CRLF after the delimiter
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise ApiError(400, "invalid_request_error", "The multipart body is truncated.")
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end < 0:
            raise ApiError(400, "invalid_request_error", "A multipart part has no headers.")
        name, filename = _disposition(body[start:head_end].decode("utf-8", "replace"))
        if name:
            fields[name] = (filename, body[head_end + 4:end])
        start = end + 2
    return fields


def _disposition(head: str) -> tuple[str | None, str | None]:
    name = filename = None
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        for piece in value.split(";"):
            k, _, v = piece.strip().partition("=")
            if k == "name":
                name = v.strip('"')
            elif k == "filename":
                filename = v.strip('"')
    return name, filename
