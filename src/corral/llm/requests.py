"""Request bodies from a stage's ``request:`` template, and answers back into result dicts.

Every string value of the template is a Jinja template rendered with ``item`` (the item's
fields); a string that is one expression only (``"{{ item.max_tokens }}"``) keeps the
expression's type. Two helpers are available in templates: ``image_data_url(path, max_side=None)``
and ``file_text(path)``; relative paths are taken from the campaign file's folder.
"""

from __future__ import annotations

import base64
import functools
import importlib
import importlib.util
import io
import mimetypes
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
         ".webp": "image/webp"}
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}


class RenderError(Exception):
    """One task's request could not be built (a missing file, an undefined field)."""


def _resolve(path: str | os.PathLike, root: Path | None) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    return path


def image_data_url(path: str | os.PathLike, max_side: int | None = None, *, quality: int = 90,
                   root: Path | None = None) -> str:
    """A ``data:`` URL with the image's bytes in base64; with ``max_side``, an image whose longer
    side is larger is first scaled down (aspect kept) and re-encoded in its own format."""
    full = _resolve(path, root)
    try:
        stat = full.stat()
    except OSError as exc:
        raise RenderError(f"image {str(path)!r}: {exc.strerror or exc}") from None
    return _image_data_url(str(full), stat.st_mtime_ns, stat.st_size, max_side, quality)


@functools.lru_cache(maxsize=256)
def _image_data_url(full: str, _mtime: int, _size: int, max_side: int | None, quality: int) -> str:
    data = Path(full).read_bytes()
    mime = _MIME.get(Path(full).suffix.lower()) or mimetypes.guess_type(full)[0] or ""
    if max_side is not None or not mime.startswith("image/"):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or "PNG"
                mime = Image.MIME.get(fmt, mime) or "image/png"
                if max_side is not None and max(image.size) > max_side:
                    image = image.copy()
                    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
                        image = image.convert("RGB")
                    out = io.BytesIO()
                    image.save(out, format=_PIL_FORMATS.get(mime, fmt), quality=quality)
                    data = out.getvalue()
        except OSError as exc:
            raise RenderError(f"cannot read image {full!r}: {exc}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_text(path: str | os.PathLike, *, root: Path | None = None, encoding: str = "utf-8") -> str:
    """A text file's contents."""
    full = _resolve(path, root)
    try:
        return full.read_text(encoding=encoding)
    except OSError as exc:
        raise RenderError(f"file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RenderError(f"file {str(path)!r} is not {encoding} text: {exc}") from None


class RequestTemplate:
    """A stage's ``request:`` compiled once, rendered per task."""

    def __init__(self, body: dict[str, Any], root: Path | None = None):
        import jinja2  # the llm extra: checked by `corral check` before a template is built

        self.root = root
        self._undefined, self._undefined_error = jinja2.Undefined, jinja2.UndefinedError
        self.env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                                      keep_trailing_newline=True)
        self.env.globals.update(image_data_url=functools.partial(image_data_url, root=root),
                                file_text=functools.partial(file_text, root=root))
        try:
            self._compiled = self._compile(body)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"Jinja syntax error: {exc.message} in {exc.source!r}" if exc.source else
                             f"Jinja syntax error: {exc.message}") from None

    def _compile(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._compile(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._compile(v) for v in value]
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            match = _WHOLE_EXPRESSION.match(value)
            if match:
                return ("expr", self.env.compile_expression(match.group("expr"), undefined_to_none=False))
            return ("text", self.env.from_string(value))
        return ("const", value)

    def render(self, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
        context = {"item": item, **extra}
        try:
            return self._render(self._compiled, context)
        except RenderError:
            raise
        except self._undefined_error as exc:
            raise RenderError(f"template: {exc.message}; item fields: {', '.join(sorted(item)) or 'none'}") \
                from None
        except Exception as exc:  # noqa: BLE001 - any template failure is this task's alone
            raise RenderError(f"template: {type(exc).__name__}: {exc}") from None

    def _render(self, node: Any, context: dict[str, Any]) -> Any:
        if isinstance(node, dict):
            return {k: self._render(v, context) for k, v in node.items()}
        if isinstance(node, list):
            return [self._render(v, context) for v in node]
        kind, payload = node
        if kind == "const":
            return payload
        if kind == "expr":
            value = payload(**context)
            if isinstance(value, self._undefined):
                str(value)  # raises UndefinedError with the name
            return value
        return payload.render(**context)


def text_of(body: dict[str, Any] | None) -> str:
    """The assistant's text in a response body of any provider (chat completions, responses,
    Anthropic messages, Gemini GenerateContentResponse: the first candidate's parts, thoughts left out)."""
    if not isinstance(body, dict):
        return ""
    if "candidates" in body:
        candidates = body.get("candidates") or []
        parts = ((candidates[0] or {}).get("content") or {}).get("parts") or [] if candidates else []
        return "".join(part.get("text", "") for part in parts if isinstance(part, dict) and not part.get("thought"))
    if "choices" in body:
        choices = body.get("choices") or []
        if choices:
            message = choices[0].get("message") or {}
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return content or choices[0].get("text") or ""
        return ""
    if isinstance(body.get("output_text"), str):
        return body["output_text"]
    if isinstance(body.get("output"), list):
        texts = []
        for entry in body["output"]:
            for part in (entry or {}).get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        return "".join(texts)
    content = body.get("content")
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content
                       if isinstance(block, dict) and block.get("type") == "text")
    return content if isinstance(content, str) else ""


def default_parse(body: dict[str, Any]) -> dict[str, Any]:
    """Without ``parse:``, a task's result is the answer's text."""
    return {"text": text_of(body)}


def load_callable(ref: str, root: Path | None) -> Callable[..., Any]:
    """``package.module:function``, looked up beside the campaign file first, then installed."""
    module_name, _, func_name = ref.partition(":")
    module = sys.modules.get(module_name)
    if root is not None:
        parts = module_name.split(".")
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.exists():
                loaded = getattr(module, "__file__", None)
                if loaded and Path(loaded).resolve() == candidate.resolve():
                    break   # this campaign's module, imported already
                # Not imported yet, or a module of the same name from another campaign's folder.
                spec = importlib.util.spec_from_file_location(module_name, candidate)
                if spec is None or spec.loader is None:
                    break
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(module_name, None)
                    raise
                break
    if module is None:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no function {func_name!r}") from None
