"""A request body for the Gemini API from a stage's ``request:``: a native GenerateContentRequest
(it has ``contents``) goes as it is; the OpenAI chat-completions shape the other LLM backends take
is translated: ``messages`` to ``contents`` (system and developer messages to ``systemInstruction``),
``image_url`` data URLs to ``inlineData``, ``response_format`` to ``responseMimeType`` and
``responseSchema`` (JSON Schema to the OpenAPI subset Gemini reads), ``max_completion_tokens`` to
``maxOutputTokens``. A key that has no Gemini counterpart is an error, never dropped."""

from __future__ import annotations

import mimetypes
from typing import Any

#: chat-completions keys of generationConfig: (Gemini name, conversion)
_GENERATION = {"max_completion_tokens": "maxOutputTokens", "max_tokens": "maxOutputTokens",
               "temperature": "temperature", "top_p": "topP", "n": "candidateCount", "seed": "seed",
               "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}
_ROLES = {"user": "user", "assistant": "model"}
#: JSON Schema keys the Gemini schema has under the same name
_SCHEMA_KEYS = {"format", "description", "nullable", "enum", "maxItems", "minItems", "required", "minimum",
                "maximum", "minLength", "maxLength", "pattern", "title", "example", "default", "minProperties",
                "maxProperties"}
#: JSON Schema keys with no meaning for Gemini's answer (strict mode and annotations)
_SCHEMA_IGNORED = {"additionalProperties", "$schema", "$id", "strict", "$comment", "examples"}


def gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentRequest of one rendered request (the model is the batch's, not the line's)."""
    if "contents" in body:
        return {k: v for k, v in body.items() if k != "model"}
    if "messages" not in body:
        raise ValueError("a Gemini request needs 'contents' (the native shape) or 'messages' (the chat shape)")
    out: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("model", "messages"):
            continue
        if key in _GENERATION:
            config[_GENERATION[key]] = value
        elif key == "stop":
            config["stopSequences"] = [value] if isinstance(value, str) else list(value)
        elif key == "response_format":
            config.update(_response_format(value))
        elif key == "generationConfig":
            config.update(value)
        elif key in ("safetySettings", "tools", "toolConfig", "cachedContent", "labels"):
            out[key] = value
        else:
            raise ValueError(f"request key {key!r} has no Gemini counterpart; use the native GenerateContentRequest "
                             "shape (contents, generationConfig) for it")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for number, message in enumerate(body["messages"]):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{number}] is not an object")
        role = message.get("role")
        parts = _parts(message.get("content"), f"messages[{number}].content")
        if role in ("system", "developer"):
            system += parts
        elif role in _ROLES:
            contents.append({"role": _ROLES[role], "parts": parts})
        else:
            raise ValueError(f"messages[{number}].role {role!r}: Gemini takes system, developer, user or assistant")
    if system:
        out["systemInstruction"] = {"parts": system}
    out["contents"] = contents
    if config:
        out["generationConfig"] = config
    return out


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise ValueError(f"{where}: a string or a list of parts")
    parts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_image(url, f"{where}[{index}]"))
        else:
            raise ValueError(f"{where}[{index}]: part type {kind!r}; Gemini's translation takes text and image_url")
    return parts


def _image(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise ValueError(f"{where}: image_url needs a url")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        mime = head[5:].split(";")[0] or "image/png"
        if ";base64" not in head:
            raise ValueError(f"{where}: a data URL must be base64")
        return {"inlineData": {"mimeType": mime, "data": data}}
    return {"fileData": {"mimeType": mimetypes.guess_type(url)[0] or "image/jpeg", "fileUri": url}}


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema") or {}
        wanted = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(wanted, dict):
            raise ValueError("response_format.json_schema.schema: a JSON schema object")
        return {"responseMimeType": "application/json", "responseSchema": gemini_schema(wanted)}
    raise ValueError(f"response_format type {kind!r}: text, json_object or json_schema")


def gemini_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """JSON Schema as the Gemini Schema object: upper-case types, ``["x", "null"]`` as nullable,
    ``$ref`` inlined, ``const`` as a one-value enum, properties in their given order."""
    root = schema if root is None else root
    if depth > 32:
        raise ValueError("response schema: nested too deeply (a recursive $ref?)")
    if "$ref" in schema:
        return gemini_schema(_resolve(schema["$ref"], root), root, depth + 1)
    out: dict[str, Any] = {}
    for key, value in dict(schema).items():
        if key in _SCHEMA_IGNORED or key in ("$defs", "definitions"):
            continue
        if key == "type":
            types = [value] if isinstance(value, str) else list(value)
            if "null" in types:
                out["nullable"] = True
                types.remove("null")
            if len(types) != 1:
                raise ValueError(f"response schema: type {value!r}; Gemini takes one type (and null)")
            out["type"] = str(types[0]).upper()
        elif key == "properties":
            out["properties"] = {name: gemini_schema(sub, root, depth + 1) for name, sub in value.items()}
            out["propertyOrdering"] = list(value)
        elif key == "items":
            out["items"] = gemini_schema(value, root, depth + 1)
        elif key in ("anyOf", "oneOf"):
            out["anyOf"] = [gemini_schema(sub, root, depth + 1) for sub in value]
        elif key == "const":
            out["enum"] = [value]
        elif key in _SCHEMA_KEYS:
            out[key] = value
        else:
            raise ValueError(f"response schema key {key!r} is not in Gemini's schema dialect")
    if "enum" in out and out.get("type") in (None, "STRING"):
        out["type"] = "STRING"
        out.setdefault("format", "enum")
    return out


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"response schema: $ref {ref!r}; only references inside the schema (#/...) are read")
    node: Any = root
    for piece in ref[2:].split("/"):
        node = node.get(piece) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise ValueError(f"response schema: $ref {ref!r} points at nothing")
    return node
