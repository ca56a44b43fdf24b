"""Read a campaign's YAML file safely: UTF-8 only, no duplicate keys, bounded nesting and aliases.

PyYAML shares the object an alias points to, so nine lines of ``&a``/``*a`` build a small graph that
every later step (composition, hashing, validation) would expand to billions of values: the expanded
size is counted over the shared graph and refused before anything walks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from corral.errors import SpecError

#: values a campaign file may expand to, aliases included (the largest real ones hold a few thousand)
MAX_VALUES = 1_000_000
#: nesting depth of mappings and lists
MAX_DEPTH = 100


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML says keys are unique;
    PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first on line {first.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(file: Path) -> Any:
    """The parsed content of ``file``; a SpecError naming the file for anything that is not a
    readable, valid, reasonably sized YAML document."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot be read: {exc.strerror}", file=str(file)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(f"is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} cannot be decoded",
                        file=str(file), expected="a YAML file saved as UTF-8") from None
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"is not valid YAML{where}: {problem}", file=str(file)) from None
    except RecursionError:
        raise SpecError(f"is nested too deeply (more than {MAX_DEPTH} levels)", file=str(file)) from None
    _check_size(value, file)
    return value


def _check_size(value: Any, file: Path) -> None:
    sizes: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if depth > MAX_DEPTH:
            raise SpecError(f"is nested too deeply (more than {MAX_DEPTH} levels)", file=str(file))
        known = sizes.get(id(node))
        if known is not None:
            return known
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_VALUES:
                raise SpecError(f"expands to more than {MAX_VALUES:,} values (YAML aliases repeat what they "
                                "point to)", file=str(file), expected="fewer or smaller aliases (&name / *name)")
        sizes[id(node)] = total
        return total

    size(value, 0)
