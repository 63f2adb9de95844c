"""Metadata filters in the OpenAI vector-store search shape, evaluated over chunk attributes.

    {"type": "eq" | "ne" | "gt" | "gte" | "lt" | "lte", "key": str, "value": str | number | bool}
    {"type": "in" | "nin", "key": str, "value": [str | number | bool, ...]}
    {"type": "and" | "or", "filters": [filter, ...]}

Semantics: a comparison on a key the chunk lacks is false, `ne` and `nin` included (SQL's
NULL rule: "ne" means "has the key, with another value"). Values compare only with values of
their own type: numbers numerically, strings lexicographically (so ISO dates order
correctly), booleans only with eq/ne/in/nin. `and` of no filters is true, `or` of none false.

`evaluate` is the plain definition for one attributes dict; `AttributeStore` keeps the
attributes of every chunk in columns so that a filter over 100k chunks is a few numpy
comparisons instead of 100k Python calls.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conduit.rag.snapshot import read_manifest, write_files

Scalar = str | int | float | bool
Filter = Mapping[str, Any]

COMPARISONS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"})
COMPOUNDS = frozenset({"and", "or"})
_ORDERED = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}
_MISSING, _NUMBER, _STRING, _BOOL = 0, 1, 2, 3
FORMAT = 1


def _kind(value: object) -> int:
    if isinstance(value, bool):  # before int: bool is an int subclass in Python
        return _BOOL
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    raise ValueError(f"attribute values are strings, numbers or booleans, not {value!r}")


def validate(filter_: Filter) -> None:
    """Raise ValueError, with a message fit for an API client, if the filter is malformed."""
    if not isinstance(filter_, Mapping):
        # ValueError, not TypeError: callers map exactly one exception to a 400.
        raise ValueError(f"a filter is an object, not {filter_!r}")  # noqa: TRY004
    kind = filter_.get("type")
    if kind in COMPOUNDS:
        filters = filter_.get("filters")
        if not isinstance(filters, list):
            raise ValueError(f"a {kind!r} filter needs a list 'filters'")
        for inner in filters:
            validate(inner)
    elif kind in COMPARISONS:
        if not isinstance(filter_.get("key"), str):
            raise ValueError(f"a {kind!r} filter needs a string 'key'")
        value = filter_.get("value")
        values = value if kind in ("in", "nin") else [value]
        if not isinstance(values, list):
            raise ValueError(f"a {kind!r} filter needs a list 'value'")
        for v in values:
            if isinstance(v, bool) and kind in _ORDERED:
                raise ValueError(f"{kind!r} does not order booleans")
            _kind(v)
    else:
        raise ValueError(f"unknown filter type {kind!r}; expected one of "
                         f"{sorted(COMPARISONS | COMPOUNDS)}")


def evaluate(filter_: Filter, attributes: Mapping[str, Scalar]) -> bool:
    """Whether one chunk's attributes match (the reference for `AttributeStore`)."""
    kind = filter_["type"]
    if kind == "and":
        return all(evaluate(f, attributes) for f in filter_["filters"])
    if kind == "or":
        return any(evaluate(f, attributes) for f in filter_["filters"])
    key, target = filter_["key"], filter_["value"]
    if key not in attributes:
        return False
    value = attributes[key]
    if kind in ("in", "nin"):
        found = any(_kind(value) == _kind(t) and value == t for t in target)
        return found if kind == "in" else not found
    same_kind = _kind(value) == _kind(target)
    if kind == "eq":
        return same_kind and value == target
    if kind == "ne":
        return not (same_kind and value == target)
    return same_kind and bool(_ORDERED[kind](value, target))


class _Column:
    """One attribute key over all rows: its kind per row, and the value in a typed array."""

    def __init__(self, capacity: int) -> None:
        self.kinds = np.zeros(capacity, np.int8)
        self.numbers = np.zeros(capacity, np.float64)  # numbers, and booleans as 0/1
        self.strings = np.full(capacity, "", object)  # "" where not a string: never None

    def grow(self, capacity: int) -> None:
        for name, fill in (("kinds", 0), ("numbers", 0.0), ("strings", "")):
            old = getattr(self, name)
            new = np.full(capacity, fill, old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def set(self, row: int, value: Scalar | None) -> None:
        kind = _MISSING if value is None else _kind(value)
        self.kinds[row] = kind
        self.numbers[row] = float(value) if kind in (_NUMBER, _BOOL) else 0.0
        self.strings[row] = value if kind == _STRING else ""

    def equal(self, value: Scalar) -> np.ndarray:
        kind = _kind(value)
        same = self.strings == value if kind == _STRING else self.numbers == float(value)
        return (self.kinds == kind) & same


class AttributeStore:
    """Chunk id -> (document id, attributes), answering "which chunk ids match this filter"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[int, tuple[int, dict[str, Scalar]]] = {}
        self._reset_rows()
        self.saved_meta: dict[str, object] = {}

    def _reset_rows(self) -> None:
        self._row_of: dict[int, int] = {}
        self._row_ids = np.zeros(0, np.int64)
        self._documents = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._columns: dict[str, _Column] = {}
        self._rows = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, chunk_id: int) -> tuple[int, dict[str, Scalar]] | None:
        return self._records.get(chunk_id)

    def add(self, ids: Sequence[int], document_ids: Sequence[int],
            attributes: Sequence[Mapping[str, Scalar] | None]) -> None:
        """Record chunks (an id already present is replaced)."""
        if not len(ids) == len(document_ids) == len(attributes):
            raise ValueError("ids, document_ids and attributes differ in length")
        if len(set(ids)) != len(ids):
            raise ValueError("the same id twice in one add")
        records = [(int(d), dict(a or {})) for d, a in zip(document_ids, attributes, strict=True)]
        for _, attrs in records:
            for value in attrs.values():
                _kind(value)
        with self._lock:
            self._delete(ids)
            if self._rows - len(self._records) > max(1024, len(self._records)):
                self._compact()  # mostly dead rows: every filter would pay for them
            self._append(zip((int(i) for i in ids), records))

    def delete(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._delete(ids)

    def matching_ids(self, filter_: Filter | None = None,
                     document_ids: Iterable[int] | None = None) -> np.ndarray:
        """Sorted chunk ids of live chunks matching the filter and in one of the documents."""
        with self._lock:
            rows = self._rows
            mask = self._alive[:rows].copy()
            if document_ids is not None:
                mask &= np.isin(self._documents[:rows], np.fromiter(document_ids, np.int64))
            if filter_ is not None:
                mask &= self._mask(filter_)[:rows]
            return np.sort(self._row_ids[:rows][mask])

    def save(self, directory: str | Path, **meta: object) -> None:
        with self._lock:
            records = [[i, d, a] for i, (d, a) in self._records.items()]

        def write(path: Path) -> None:
            path.write_text(json.dumps(records, ensure_ascii=False))

        write_files(Path(directory), {"attributes.json": write},
                    {"kind": "attributes", "format": FORMAT, "count": len(records), **meta})

    @classmethod
    def load(cls, directory: str | Path) -> AttributeStore:
        directory = Path(directory)
        manifest = read_manifest(directory, "attributes", FORMAT)
        records = json.loads((directory / "attributes.json").read_text())
        store = cls()
        store.add([r[0] for r in records], [r[1] for r in records], [r[2] for r in records])
        store.saved_meta = manifest
        return store

    def _mask(self, filter_: Filter) -> np.ndarray:
        kind, capacity = filter_["type"], len(self._alive)
        if kind in COMPOUNDS:
            masks = [self._mask(f) for f in filter_["filters"]]
            combine = np.logical_and.reduce if kind == "and" else np.logical_or.reduce
            return combine(masks) if masks else np.full(capacity, kind == "and")
        column = self._columns.get(filter_["key"])
        if column is None:
            return np.zeros(capacity, bool)
        value = filter_["value"]
        if kind in ("in", "nin"):
            found = np.logical_or.reduce([column.equal(v) for v in value]) if value \
                else np.zeros(capacity, bool)
            return found if kind == "in" else (column.kinds != _MISSING) & ~found
        if kind == "eq":
            return column.equal(value)
        if kind == "ne":
            return (column.kinds != _MISSING) & ~column.equal(value)
        if isinstance(value, str):
            return (column.kinds == _STRING) & _ORDERED[kind](column.strings, value).astype(bool)
        return (column.kinds == _NUMBER) & _ORDERED[kind](column.numbers, float(value))

    def _append(self, items: Iterable[tuple[int, tuple[int, dict[str, Scalar]]]]) -> None:
        for chunk_id, (document_id, attrs) in items:
            row = self._rows
            self._reserve(row + 1)
            self._rows += 1
            self._row_of[chunk_id] = row
            self._records[chunk_id] = (document_id, attrs)
            self._row_ids[row], self._documents[row], self._alive[row] = chunk_id, document_id, True
            for key, value in attrs.items():
                if key not in self._columns:
                    self._columns[key] = _Column(len(self._alive))
                self._columns[key].set(row, value)

    def _compact(self) -> None:
        records = list(self._records.items())
        self._reset_rows()
        self._append(records)

    def _delete(self, ids: Iterable[int]) -> None:
        for chunk_id in ids:
            row = self._row_of.pop(int(chunk_id), None)
            if row is not None:
                del self._records[int(chunk_id)]
                self._alive[row] = False
                for column in self._columns.values():
                    column.set(row, None)

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._alive):
            return
        capacity = max(rows, 2 * len(self._alive), 1024)
        for name in ("_row_ids", "_documents", "_alive"):
            old = getattr(self, name)
            new = np.zeros(capacity, old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)
        for column in self._columns.values():
            column.grow(capacity)
