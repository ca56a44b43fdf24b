"""Deterministic synthetic answers: a template, else JSON shaped by the request's schema, else text.

The same custom_id (and seed) always gives the same answer, so a parse function sees stable input.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

WORDS = ("move", "the", "arm", "left", "gripper", "closes", "around", "red", "cube", "slowly", "then",
         "lifts", "it", "above", "blue", "bowl", "rotate", "wrist", "forward", "object", "table", "camera",
         "frame", "shows", "robot", "reaches", "toward", "drawer", "opens", "pushes", "green", "block", "right")


def shape_of_openai(body: dict[str, Any]) -> Any:
    """What decides an answer's shape: a JSON schema, "json_object", or None for text."""
    fmt = body.get("response_format") or (body.get("text") or {}).get("format")
    return _shape(fmt)


def shape_of_anthropic(params: dict[str, Any]) -> Any:
    fmt = params.get("output_format") or (params.get("output_config") or {}).get("format")
    return _shape(fmt)


def _shape(fmt: Any) -> Any:
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema", fmt)
        schema = schema.get("schema", schema) if isinstance(schema, dict) else None
        return schema if isinstance(schema, dict) else "json_object"
    if fmt.get("type") == "json_object":
        return "json_object"
    return None


def answer(custom_id: str, index: int, shape: Any, template: Any, seed: int) -> str:
    if template is not None:
        if isinstance(template, str):
            return template.replace("{custom_id}", custom_id).replace("{index}", str(index))
        return json.dumps(_fill(copy.deepcopy(template), custom_id, index))
    rng = random.Random(f"{seed}:{custom_id}")
    if shape == "json_object":
        return json.dumps({"answer": _words(rng, 6)})
    if isinstance(shape, dict):
        return json.dumps(instance(shape, rng, shape, 0))
    return f"Simulated answer for {custom_id}: {_words(rng, 8)}."


def _fill(value: Any, custom_id: str, index: int) -> Any:
    if isinstance(value, str):
        return value.replace("{custom_id}", custom_id).replace("{index}", str(index))
    if isinstance(value, list):
        return [_fill(v, custom_id, index) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, custom_id, index) for k, v in value.items()}
    return value


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def instance(schema: Any, rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    """A value that validates against a (reasonable) JSON schema."""
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema:
        return instance(_resolve(schema["$ref"], root), rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
            return instance(rng.choice(options or schema[key]), rng, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            if isinstance(part, dict):
                merged.setdefault("properties", {}).update(part.get("properties", {}))
                merged.update({k: v for k, v in part.items() if k != "properties"})
        return instance(merged, rng, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return {name: instance(sub, rng, root, depth + 1) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        return [instance(schema.get("items", {}), rng, root, depth + 1) for _ in range(rng.randint(low, high))]
    if kind == "integer":
        low, high = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(low, max(low, high))
    if kind == "number":
        low, high = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1.0))
        return round(rng.uniform(low, max(low, high)), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time":
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
    if fmt == "email":
        return f"{rng.choice(WORDS)}@example.com"
    if fmt in ("uri", "url"):
        return f"https://example.com/{rng.choice(WORDS)}"
    text = _words(rng, rng.randint(3, 9))
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    while len(text) < low:
        text += " " + rng.choice(WORDS)
    if high is not None:
        text = text[: int(high)]
    return text


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node
