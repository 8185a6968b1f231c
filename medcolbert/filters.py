"""Metadata filters: a `where` expression, the per-field columns it runs on, and the documents it matches.

An expression is a conjunction of conditions on metadata fields (or on `id`, the document id):

    source = medlineplus
    source in {medlineplus, ghr} and year >= 2015
    date >= 2020-01-01 and date < 2021-01-01 and id in {d1, d2, d3}

or the same as a mapping, as LangChain's and the service's JSON filters are written:
`{"source": ["medlineplus", "ghr"], "year": {"$gte": 2015}, "id": ["d1", "d2"]}`. Values are bare words,
numbers, ISO dates or quoted strings. Each segment of an index keeps one column per metadata field (numbers as
float64, ISO dates as int64 seconds, text as int32 codes into its sorted distinct values), written with the
segment by the build, updates and compaction; a filter is evaluated on these memory-mapped columns, never by
reading documents' metadata, and respects deletions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .errors import MedColbertError

KINDS = ("number", "date", "text")
OPS = ("eq", "in", "gt", "ge", "lt", "le")
ID_FIELD = "id"
# Metadata keys the library writes itself (a split document's passage span): never a filter field.
RESERVED = ("_span",)
MISSING_DATE = np.iinfo(np.int64).min
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
_SYMBOLS = {"=": "eq", "==": "eq", ">": "gt", ">=": "ge", "<": "lt", "<=": "le"}
_MAPPING_OPS = {"eq": "eq", "in": "in", "gt": "gt", "gte": "ge", "ge": "ge", "lt": "lt", "lte": "le", "le": "le"}
_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>>=|<=|==|=|>|<)|(?P<punct>[{}\[\](),])|"""
                    r"""(?P<word>[^\s"'{}\[\](),=<>]+))""")


class FilterError(MedColbertError):
    """A filter expression that cannot be parsed or does not fit the index's metadata."""


@dataclass(frozen=True)
class Condition:
    """One condition: field, operator (one of OPS) and its values (one, or several for `in`)."""

    field: str
    op: str
    values: tuple


@dataclass(frozen=True)
class Where:
    """A conjunction of conditions on metadata fields and document ids."""

    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        def show(v: object) -> str:
            return json.dumps(v) if isinstance(v, str) else str(v)

        parts = []
        for c in self.conditions:
            if c.op == "in":
                parts.append(f"{c.field} in {{{', '.join(show(v) for v in c.values)}}}")
            else:
                sym = {"eq": "=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}[c.op]
                parts.append(f"{c.field} {sym} {show(c.values[0])}")
        return " and ".join(parts)


WhereLike = Union[str, Mapping[str, Any], Where, None]


def parse_where(where: WhereLike) -> Where | None:
    """A Where from an expression string, a mapping, or a Where (None and "" give None: no filter)."""
    if where is None or isinstance(where, Where):
        return where
    if isinstance(where, str):
        return _parse_text(where) if where.strip() else None
    if isinstance(where, Mapping):
        return _parse_mapping(where)
    raise FilterError(f"a filter is an expression string or a mapping of fields, got {type(where).__name__}")


def _parse_text(text: str) -> Where:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise FilterError(f"filter: cannot read {text[pos:pos + 20]!r} at character {pos + 1}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value, m.start(kind) + 1))
        pos = m.end()
    conditions: list[Condition] = []
    i = 0

    def expect_value(at: int) -> tuple[str | float, int]:
        if at >= len(tokens) or tokens[at][0] not in ("word", "str"):
            where = f"at character {tokens[at][2]}" if at < len(tokens) else "at the end"
            raise FilterError(f"filter {text!r}: a value is missing {where}")
        kind, value, _ = tokens[at]
        return (value if kind == "str" else _bare(value)), at + 1

    while i < len(tokens):
        kind, name, at = tokens[i]
        if kind not in ("word", "str"):
            raise FilterError(f"filter {text!r}: expected a field name at character {at}, got {name!r}")
        if i + 1 >= len(tokens):
            raise FilterError(f"filter {text!r}: the condition on {name!r} has no operator (=, in, <, <=, >, >=)")
        okind, op, oat = tokens[i + 1]
        if okind == "op":
            value, i = expect_value(i + 2)
            conditions.append(Condition(name, _SYMBOLS[op], (value,)))
        elif okind == "word" and op.lower() == "in":
            if i + 2 >= len(tokens) or tokens[i + 2][1] not in "{[(":
                raise FilterError(f"filter {text!r}: 'in' takes a set of values in braces, e.g. {name} in {{a, b}}")
            closing = {"{": "}", "[": "]", "(": ")"}[tokens[i + 2][1]]
            values: list = []
            i += 3
            while True:
                if i < len(tokens) and tokens[i][1] == closing and tokens[i][0] == "punct":
                    i += 1
                    break
                value, i = expect_value(i)
                values.append(value)
                if i < len(tokens) and tokens[i] == ("punct", ",", tokens[i][2]):
                    i += 1
                elif not (i < len(tokens) and tokens[i][1] == closing):
                    raise FilterError(f"filter {text!r}: the set of values for {name!r} is not closed with {closing!r}")
            if not values:
                raise FilterError(f"filter {text!r}: the set of values for {name!r} is empty")
            conditions.append(Condition(name, "in", tuple(values)))
        else:
            raise FilterError(f"filter {text!r}: unknown operator {op!r} at character {oat} "
                              "(=, in, <, <=, >, >=; conditions joined by 'and')")
        if i < len(tokens):
            kind, word, at = tokens[i]
            if not ((kind == "word" and word.lower() == "and") or (kind == "punct" and word == ",")):
                raise FilterError(f"filter {text!r}: expected 'and' at character {at}, got {word!r} "
                                  "(conditions are joined by 'and'; 'or' is not supported)")
            i += 1
            if i >= len(tokens):
                raise FilterError(f"filter {text!r}: ends with 'and'")
    return Where(tuple(conditions))


def _bare(word: str) -> str | float:
    """A bare word: a number where it reads as one (ids and dates stay text)."""
    try:
        number = float(word)
    except ValueError:
        return word
    return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", word) else number


def _parse_mapping(where: Mapping[str, Any]) -> Where:
    conditions: list[Condition] = []
    for name, spec in where.items():
        if name in ("$and", "and") and isinstance(spec, Sequence) and not isinstance(spec, str):
            for part in spec:
                if not isinstance(part, Mapping):
                    raise FilterError(f"filter: every part of {name!r} must be a mapping of fields")
                conditions += _parse_mapping(part).conditions
            continue
        if not isinstance(name, str) or not name:
            raise FilterError(f"filter: field names are non-empty strings, got {name!r}")
        if isinstance(spec, Mapping):
            if not spec:
                raise FilterError(f"filter: the condition on {name!r} is empty")
            for op, value in spec.items():
                key = str(op).lstrip("$").lower()
                if key not in _MAPPING_OPS:
                    raise FilterError(f"filter: unknown operator {op!r} for {name!r} "
                                      f"(accepted: {', '.join('$' + k for k in ('eq', 'in', 'gt', 'gte', 'lt', 'lte'))})")
                conditions.append(_condition(name, _MAPPING_OPS[key], value))
        else:
            conditions.append(_condition(name, "in" if isinstance(spec, (list, tuple, set, frozenset)) else "eq", spec))
    return Where(tuple(conditions))


def _condition(name: str, op: str, value: Any) -> Condition:
    if op == "in":
        if not isinstance(value, (list, tuple, set, frozenset)) or not value:
            raise FilterError(f"filter: 'in' on {name!r} takes a non-empty list of values, got {value!r}")
        values = tuple(value)
    else:
        values = (value,)
    for v in values:
        if not isinstance(v, (str, int, float)):
            raise FilterError(f"filter: values are text, numbers or dates; {name!r} got {v!r}")
    return Condition(name, op, values)


# ------------------------------------------------------------------------------------------ columns (write)

def field_columns(metas: Sequence[dict | None]) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """Per metadata field: (kind, arrays) for a segment's documents. Fields holding lists or objects are left out
    (not filterable); a field of numbers and text mixed is text."""
    from .indexing.storage import pack_strings   # here: storage reads columns through this module
    names: dict[str, None] = {}
    for m in metas:
        for key in (m or {}):
            if key not in RESERVED and key != ID_FIELD:
                names.setdefault(key, None)
    out: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
    for name in names:
        values = [None if not m else m.get(name) for m in metas]
        present = [v for v in values if v is not None]
        if any(isinstance(v, (list, dict)) for v in present):
            continue
        if all(isinstance(v, (int, float)) for v in present):
            out[name] = ("number", {"data": np.array([np.nan if v is None else float(v) for v in values], np.float64)})
        elif all(isinstance(v, str) and _ISO_DATE.match(v) for v in present):
            out[name] = ("date", {"data": np.array([MISSING_DATE if v is None else _seconds(v) for v in values],
                                                   np.int64)})
        else:
            texts = [None if v is None else _as_text(v) for v in values]
            distinct = sorted({t for t in texts if t is not None})
            code = {t: i for i, t in enumerate(distinct)}
            packed, offsets = pack_strings([t.encode("utf-8") for t in distinct])
            out[name] = ("text", {"data": np.array([-1 if t is None else code[t] for t in texts], np.int32),
                                  "values": packed, "value_offsets": offsets})
    return out


def _as_text(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _seconds(v: str) -> int:
    return int(np.datetime64(v.replace(" ", "T"), "s").astype(np.int64))


# ------------------------------------------------------------------------------------------- columns (read)

@dataclass
class FieldColumn:
    """One segment's column of one field: kind, per-document data and, for text, the sorted distinct values."""

    kind: str
    data: np.ndarray
    values: np.ndarray | None = None
    value_offsets: np.ndarray | None = None
    _codes: dict[str, int] | None = None

    def code(self, text: str) -> int:
        """The code of a text value (-1 where no document of the segment has it)."""
        if self._codes is None:
            assert self.values is not None and self.value_offsets is not None
            raw = bytes(self.values)
            o = self.value_offsets
            self._codes = {raw[o[i]:o[i + 1]].decode("utf-8"): i for i in range(len(o) - 1)}
        return self._codes.get(text, -1)


def columns_from(arrays: Mapping[str, tuple[str, Mapping[str, np.ndarray]]]) -> dict[str, FieldColumn]:
    """FieldColumns from (kind, arrays) per field."""
    return {name: FieldColumn(kind, a["data"], a.get("values"), a.get("value_offsets")) for name, (kind, a) in arrays.items()}


# ------------------------------------------------------------------------------------------------- matching

def _number(c: Condition, v: object) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return float(v.lower() == "true")
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise FilterError(f"filter: {v!r} is not a number (field {c.field!r} holds numbers)") from None


def _date(c: Condition, v: object) -> int:
    if isinstance(v, str) and _ISO_DATE.match(v):
        try:
            return _seconds(v)
        except ValueError:
            pass
    raise FilterError(f"filter: {v!r} is not a date YYYY-MM-DD (field {c.field!r} holds dates)")


def _compare(data: np.ndarray, op: str, values: list) -> np.ndarray:
    if op == "eq":
        return data == values[0]
    if op == "in":
        return np.isin(data, values)
    return {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}[op](data, values[0])


def column_mask(col: FieldColumn, c: Condition) -> np.ndarray:
    """Which documents of one segment's column meet the condition."""
    if col.kind == "number":
        got = _compare(np.asarray(col.data), c.op, [_number(c, v) for v in c.values])
        return got & ~np.isnan(col.data)
    if col.kind == "date":
        got = _compare(np.asarray(col.data), c.op, [_date(c, v) for v in c.values])
        return got & (np.asarray(col.data) != MISSING_DATE)
    if c.op not in ("eq", "in"):
        raise FilterError(f"filter: field {c.field!r} holds text: compare it with = or in, not a range")
    codes = [col.code(_as_text(v)) for v in c.values]
    codes = [x for x in codes if x >= 0]
    return np.isin(np.asarray(col.data), codes) if codes else np.zeros(len(col.data), dtype=bool)


def check_fields(where: Where, kinds: Mapping[str, set[str]]) -> None:
    """Refuse a condition on a field no segment has, and values or operators that do not fit its kind."""
    for c in where.conditions:
        if c.field == ID_FIELD:
            continue
        if c.field not in kinds:
            known = ", ".join(sorted(kinds)) or "none (the index stores no metadata)"
            raise FilterError(f"filter: unknown metadata field {c.field!r} (fields: {known}; and {ID_FIELD!r})")
        for kind in kinds[c.field]:
            col = FieldColumn(kind, np.zeros(0, {"number": np.float64, "date": np.int64, "text": np.int32}[kind]),
                              np.zeros(0, np.uint8), np.zeros(1, np.int64))
            column_mask(col, c)   # raises on a wrong type or operator
