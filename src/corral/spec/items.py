"""Item sources (grid, zip, list, file) and the stable identity of an item."""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any, Callable, Iterator

from corral.errors import SpecError
from corral.spec.models import MAX_ITEMS, Items


@dataclass(slots=True)
class Item:
    index: int
    item_id: str
    key: str
    params: dict[str, Any]
    canonical: str = ""   # the canonical JSON its identity hashes


def canonical(value: Any) -> Any:
    """Normalise a value so equal parameters hash equally on every machine and Python.

    Integral floats become ints (``1.0 == 1``), non-finite floats become strings, tuples lists.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return int(value) if value.is_integer() and abs(value) < 2**53 else value
        return str(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_SIMPLE = (str, int, bool, type(None))


def canonical_json(params: dict[str, Any]) -> str:
    # Flat parameters of strings, ints and booleans are already canonical (the common grid case).
    for value in params.values():
        if not isinstance(value, _SIMPLE):
            return _CANONICAL.encode(canonical(params))
    return _CANONICAL.encode(params)


def item_identity(params: dict[str, Any]) -> str:
    """A 16-hex-digit hash of the canonical parameters: the item's identity."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:16]


def shard_of(item_id: str, count: int) -> int:
    return int(item_id, 16) % count


def format_key(template: str, params: dict[str, Any]) -> str:
    return template.format_map(params)


def template_fields(template: str) -> set[str]:
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in Formatter().parse(template) if name}


def _blamed(method):
    """Errors of ``method`` name the file that holds their key (a config-group file may set items)."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except SpecError as exc:
                raise self.blame(exc) from None
        return generator

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SpecError as exc:
            raise self.blame(exc) from None
    return call


class ItemSource:
    """Expands an ``items:`` section into items, in a stable order.

    ``blame`` gives an error the file that holds its key, when the campaign was composed from several.
    """

    def __init__(self, spec: Items, root: Path, file: str | Path = "corral.yaml",
                 blame: Callable[[SpecError], SpecError] | None = None):
        self.spec, self.root, self.file = spec, root, str(file)
        self.blame = blame or (lambda exc: exc)

    @_blamed
    def factors(self) -> list[list[dict[str, Any]]]:
        """Row sources (from, list, zip) as lists of partial items; the grid is in ``axes()``."""
        factors: list[list[dict[str, Any]]] = []
        if self.spec.from_ is not None:
            factors.append(self._from_file())
        if self.spec.list is not None:
            factors.append([dict(row) for row in self.spec.list])
        if self.spec.zip is not None:
            factors.append(self._zip())
        self._check_disjoint(factors + [[{name: None}] for name, _ in self.axes()])
        return factors

    @_blamed
    def axes(self) -> list[tuple[str, list[Any]]]:
        return [(name, self._axis(name, values)) for name, values in (self.spec.grid or {}).items()]

    @_blamed
    def param_names(self) -> list[str]:
        """Parameter names in the order the campaign file gives them (for exports)."""
        names: list[str] = []
        for factor in self.factors():
            for row in factor[:1]:
                names.extend(k for k in row if k not in names)
        names.extend(name for name, _ in self.axes() if name not in names)
        return names

    @_blamed
    def count(self) -> int:
        """How many items the campaign has, counted without building them (a grid of 10^12 is fine)."""
        return math.prod(len(f) for f in self.factors()) * math.prod(_size(v) for _, v in self.axes())

    def check_count(self) -> int:
        """The item count, refused when it is zero or more than a run can hold."""
        total = self.count()
        if total > MAX_ITEMS:
            sizes = [f"{len(f):,} rows" for f in self.factors()] + [f"{name}: {_size(v):,}" for name, v in self.axes()]
            raise SpecError(f"the campaign has {total:,} items ({' x '.join(sizes)}); a run holds at most "
                            f"{MAX_ITEMS:,} (writing more to the ledger would take hours and gigabytes)",
                            file=self.file, key="items",
                            expected="fewer values per axis, or several campaigns or runs of a part each")
        if total == 0:
            raise SpecError(f"the campaign has no items: {self._why_empty()}", file=self.file, key="items",
                            expected="at least one item")
        return total

    def _why_empty(self) -> str:
        if self.spec.from_ is not None:
            read = len(_read_rows(self._from_path(), self._from_kind(self._from_path()))) if self.spec.from_.where else 0
            if read:
                return f"'where' matched none of the {read:,} rows of {self.spec.from_.path}"
            if not self._from_file():
                return f"the item file {self.spec.from_.path} has no rows"
        if self.spec.list is not None and not self.spec.list:
            return "items.list is empty"
        if self.spec.zip is not None and not self._zip():
            return "the items.zip lists are empty"
        for name, values in self.axes():
            if not _size(values):
                return f"items.grid.{name} has no values"
        return "the item sources give none"

    @_blamed
    def params(self) -> Iterator[dict[str, Any]]:
        """Every item's parameters, lazily: the product of the row sources and the grid axes."""
        factors, axes = self.factors(), self.axes()
        names = [name for name, _ in axes]
        if not factors:
            for combo in itertools.product(*(values for _, values in axes)):
                yield dict(zip(names, combo))
            return
        split = len(factors)
        for combo in itertools.product(*factors, *(values for _, values in axes)):
            merged: dict[str, Any] = {}
            for part in combo[:split]:
                merged.update(part)
            merged.update(zip(names, combo[split:]))
            yield merged

    def _grid_only_and_distinct(self) -> bool:
        """A grid alone whose axes hold distinct values cannot repeat an item."""
        if self.factors():
            return False
        for _, values in self.axes():
            texts = {_CANONICAL.encode(canonical(v)) for v in values}
            if len(texts) != len(values):
                return False
        return True

    def _grid_params_and_canonical(self) -> Iterator[tuple[dict[str, Any], str]]:
        """For a grid alone: parameters and canonical JSON built from each axis value's encoding,
        encoded once per value instead of once per item (the JSON has its keys sorted)."""
        axes = self.axes()
        names = [name for name, _ in axes]
        order = sorted(range(len(names)), key=lambda i: names[i])
        encoded = [[(value, f"{_CANONICAL.encode(name)}:{_CANONICAL.encode(canonical(value))}") for value in values]
                   for name, values in axes]
        for combo in itertools.product(*encoded):
            yield dict(zip(names, [c[0] for c in combo])), "{" + ",".join([combo[i][1] for i in order]) + "}"

    @_blamed
    def items(self, limit: int | None = None, shard: tuple[int, int] | None = None) -> Iterator[Item]:
        self.check_count()
        key_template = self.spec.key
        if key_template:
            self._check_key_template(key_template)
        distinct_grid = self._grid_only_and_distinct()
        if distinct_grid:
            yield from self._items_from(self._grid_params_and_canonical(), key_template, limit, shard, False)
            return
        pairs = ((params, canonical_json(params)) for params in self.params())
        yield from self._items_from(pairs, key_template, limit, shard, True)

    def _items_from(self, pairs, key_template: str | None, limit: int | None, shard: tuple[int, int] | None,
                    check_duplicates: bool) -> Iterator[Item]:
        seen: dict[str, int] = {}
        index = 0
        sha256 = hashlib.sha256
        for position, (params, text) in enumerate(pairs):
            item_id = sha256(text.encode()).hexdigest()[:16]
            if check_duplicates:
                if item_id in seen:
                    raise SpecError(f"items {seen[item_id]} and {position} have the same parameters "
                                    f"{text}; every item must be distinct", file=self.file, key="items")
                seen[item_id] = position
            if shard is not None and shard_of(item_id, shard[1]) != shard[0]:
                continue
            if limit is not None and index >= limit:
                break
            key = self._key(key_template, params) if key_template else item_id
            yield Item(index=index, item_id=item_id, key=key, params=params, canonical=text)
            index += 1

    def _key(self, template: str, params: dict[str, Any]) -> str:
        try:
            return format_key(template, params)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise SpecError(f"the key template {template!r} cannot be filled for the item {params}: {exc}",
                            file=self.file, key="items.key",
                            expected="{name} fields with a format spec that fits the value, e.g. {seed:03d}") from None

    def _check_key_template(self, template: str) -> None:
        names = set(self.param_names())
        try:
            missing = template_fields(template) - names
        except ValueError as exc:
            raise SpecError(f"bad key template: {exc}", file=self.file, key="items.key") from None
        if missing:
            raise SpecError(f"key template uses unknown parameters {sorted(missing)}", file=self.file,
                            key="items.key", expected="fields among " + ", ".join(sorted(names)))

    def _axis(self, name: str, values: Any) -> list[Any]:
        axis_key = f"sweep.params.{name}" if name in self.spec._swept else f"items.grid.{name}"
        if isinstance(values, dict) and set(values) == {"range"}:
            bounds = values["range"]
            bounds = [bounds] if isinstance(bounds, int) else bounds
            if not (isinstance(bounds, list) and 1 <= len(bounds) <= 3 and all(isinstance(b, int) for b in bounds)):
                raise SpecError("a range is {range: stop} or {range: [start, stop, step]} of integers",
                                file=self.file, key=f"{axis_key}.range", expected="[start, stop, step]")
            values = range(*bounds) if bounds[-1] != 0 or len(bounds) < 3 else None
            if values is None:
                raise SpecError("a range's step must not be 0", file=self.file, key=f"{axis_key}.range",
                                expected="[start, stop, step] with a step other than 0")
            return values  # type: ignore[return-value]  # a range is counted without being built
        if isinstance(values, list):
            if not values:
                raise SpecError("an empty list gives no items", file=self.file, key=axis_key,
                                expected="a non-empty list of values")
            return values
        if isinstance(values, dict):
            raise SpecError("a grid axis is a list of values or {range: ...}", file=self.file,
                            key=axis_key, expected="[a, b, c] or {range: [0, 10]}")
        return [values]

    def _zip(self) -> list[dict[str, Any]]:
        columns = self.spec.zip or {}
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise SpecError(f"zip lists must have the same length, got {lengths}", file=self.file, key="items.zip")
        names = list(columns)
        return [dict(zip(names, row)) for row in zip(*columns.values())]

    def _from_path(self) -> Path:
        source = self.spec.from_
        assert source is not None
        try:
            path = Path(source.path).expanduser()
        except RuntimeError:  # ~user of no such user
            raise SpecError(f"cannot find the home folder in {source.path!r}", file=self.file, key="items.from",
                            expected="a path relative to the campaign folder, absolute, or ~/...") from None
        if not path.is_absolute():
            path = self.root / path
        try:
            exists = path.is_file()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            raise SpecError(f"the item file path cannot be used: {getattr(exc, 'strerror', None) or exc}",
                            file=self.file, key="items.from") from None
        if not exists:
            what = "is a folder" if path.is_dir() else "does not exist"
            raise SpecError(f"item file {str(path)!r} {what}", file=self.file, key="items.from",
                            expected="a .jsonl, .json or .csv file")
        return path

    def _from_kind(self, path: Path) -> str:
        assert self.spec.from_ is not None
        kind = self.spec.from_.format or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
                                          ".csv": "csv"}.get(path.suffix.lower())
        if kind is None:
            raise SpecError(f"cannot tell the format of {path.name}", file=self.file, key="items.from.format",
                            expected="json | jsonl | csv")
        return kind

    def _from_file(self) -> list[dict[str, Any]]:
        source = self.spec.from_
        assert source is not None
        path = self._from_path()
        kind = self._from_kind(path)
        try:
            rows = _read_rows(path, kind)
        except (ValueError, csv.Error) as exc:  # JSON, CSV, UTF-8 decoding
            raise SpecError(f"cannot read {path.name}: {exc}", file=self.file, key="items.from") from None
        except RecursionError:
            raise SpecError(f"cannot read {path.name}: values nested too deeply", file=self.file,
                            key="items.from") from None
        except OSError as exc:
            raise SpecError(f"cannot read {path.name}: {exc.strerror}", file=self.file, key="items.from") from None
        if source.where:
            rows = self._filter(rows, source.where)
        return rows

    def _filter(self, rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
        try:
            code = compile(where, "<where>", "eval")
        except (RecursionError, MemoryError):
            raise SpecError("'where' is too deeply nested to evaluate", file=self.file, key="items.from.where",
                            expected="a shorter Python expression over row fields") from None
        except (SyntaxError, ValueError) as exc:
            raise SpecError(f"'where' is not a valid expression: {getattr(exc, 'msg', exc)}", file=self.file,
                            key="items.from.where", expected="a Python expression over row fields, "
                            "e.g. split == 'test' and length < 500") from None
        kept = []
        for row in rows:
            try:
                if eval(code, {"__builtins__": _SAFE_BUILTINS}, dict(row)):  # noqa: S307 - the user's own file
                    kept.append(row)
            except Exception as exc:  # noqa: BLE001 - reported with the row
                raise SpecError(f"'where' failed on row {row}: {type(exc).__name__}: {exc}", file=self.file,
                                key="items.from.where") from None
        return kept

    def _check_disjoint(self, factors: list[list[dict[str, Any]]]) -> None:
        seen: set[str] = set()
        for factor in factors:
            names = set(factor[0]) if factor else set()
            clash = seen & names
            if clash:
                raise SpecError(f"parameters {sorted(clash)} come from two item sources", file=self.file,
                                key="items", expected="each parameter from exactly one of from, list, zip, grid (or sweep.params)")
            seen |= names


_SAFE_BUILTINS = {"len": len, "int": int, "float": float, "str": str, "abs": abs, "min": min, "max": max,
                  "round": round, "bool": bool, "any": any, "all": all, "True": True, "False": False, "None": None}


def _read_rows(path: Path, kind: str) -> list[dict[str, Any]]:
    if kind == "json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data.get("items", data.get("data"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError("a JSON item file holds a list of objects (or {items: [...]})")
        return data
    if kind == "jsonl":
        rows = []
        with path.open() as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"line {number} is not a JSON object")
                    rows.append(row)
        return rows
    with path.open(newline="") as handle:
        rows = []
        for number, row in enumerate(csv.DictReader(handle), 2):
            if None in row:
                raise ValueError(f"line {number} has more fields than the header names")
            rows.append({k: _number(v) for k, v in row.items()})
        return rows


def _size(values: Any) -> int:
    """The length of an axis, also of a range too long for ``len``."""
    if isinstance(values, range):
        step = values.step
        span = values.stop - values.start
        return max(0, (span + step - (1 if step > 0 else -1)) // step)
    return len(values)


def _number(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
        return value if math.isfinite(value) else text
    except ValueError:
        return text
