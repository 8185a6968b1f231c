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
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Union

import numpy as np

from .errors import MedColbertError

KINDS = ("number", "integer", "date", "text", "nested")
OPS = ("eq", "in", "gt", "ge", "lt", "le")
ID_FIELD = "id"
# Metadata keys the library writes itself (a split document's passage span; passages.SPAN_KEY): never a filter
# field, and refused in what users store.
RESERVED = ("_span", "medcolbert:passage")
# The key a corpus.jsonl row (or a record) may nest its metadata under; its fields are stored flat.
NESTED_METADATA = "metadata"
MISSING_DATE = np.iinfo(np.int64).min
MISSING_INT = np.iinfo(np.int64).min          # an integer column's missing value (never a stored integer)
INT_MIN, INT_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?)?$")
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
            # A bare word prints bare: it means more than the same word quoted (numbers, too, read it).
            return str(v) if isinstance(v, Bare) else json.dumps(v) if isinstance(v, str) else str(v)

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


def _bare(word: str) -> str:
    """A bare word: kept as written, marked so that number columns read it as a number (filters.Bare)."""
    return Bare(word)


MAX_NESTING = 8   # $and inside $and ...: deeper than this is refused (a request cannot exhaust the stack)


def _parse_mapping(where: Mapping[str, Any], depth: int = 0) -> Where:
    if depth > MAX_NESTING:
        raise FilterError(f"filter: nested deeper than {MAX_NESTING} levels of $and")
    conditions: list[Condition] = []
    for name, spec in where.items():
        if name in ("$and", "and") and isinstance(spec, Sequence) and not isinstance(spec, str):
            for part in spec:
                if not isinstance(part, Mapping):
                    raise FilterError(f"filter: every part of {name!r} must be a mapping of fields")
                conditions += _parse_mapping(part, depth + 1).conditions
            continue
        if isinstance(name, str) and name.lower() in ("$or", "or", "$not", "not", "$nor", "nor"):
            raise FilterError(f"filter: {name!r} is not supported (conditions are joined by and; to match any of "
                              "several values use in, e.g. {\"source\": [\"a\", \"b\"]})")
        if isinstance(name, str) and name.startswith("$") and name != "$and":
            raise FilterError(f"filter: {name!r} is not a field or a supported operator ($and at the top; $eq, $in, "
                              "$gt, $gte, $lt, $lte inside a field's condition)")
        if not isinstance(name, str) or not name:
            raise FilterError(f"filter: field names are non-empty strings, got {name!r}")
        if isinstance(spec, Mapping):
            if not spec:
                raise FilterError(f"filter: the condition on {name!r} is empty")
            for op, value in spec.items():
                if str(op).lower() in ("$not", "$ne", "$nin", "$or"):
                    raise FilterError(f"filter: {op!r} on {name!r} is not supported (negation and alternatives are "
                                      "not; accepted: $eq, $in, $gt, $gte, $lt, $lte)")
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

def value_kind(v: object) -> str | None:
    """The column kind one metadata value goes to: integer (exact to 64 bits; booleans as 1/0), number (other
    finite numbers), date (a valid ISO date or date-time, offsets normalised to UTC), text, nested (lists and
    objects: stored, not filterable), or None for a missing value."""
    if v is None:
        return None
    if isinstance(v, bool) or (isinstance(v, int) and INT_MIN < v <= INT_MAX):
        return "integer"
    if isinstance(v, (int, float)):
        return "number" if math.isfinite(float(v)) else None
    if isinstance(v, str):
        return "date" if date_seconds(v) is not None else "text"
    return "nested" if isinstance(v, (list, dict)) else "text"


def field_columns(metas: Sequence[dict | None]) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """A segment's metadata columns as (field, kind, arrays). A field whose documents hold values of several kinds
    gets one column per kind, each with the documents of that kind (the others missing there), so that a condition
    is answered over the documents whose values fit it, however documents are grouped into segments."""
    from .packing import pack_strings
    # Segments stored before nested metadata was flattened on the way in get their fields lifted here (at a
    # compaction, or for a segment without columns), so `where "patient = p1"` finds them.
    metas = [_lifted(m) for m in metas]
    names: dict[str, None] = {}
    for m in metas:
        for key in (m or {}):
            if key not in RESERVED and key != ID_FIELD:
                names.setdefault(key, None)
    out: list[tuple[str, str, dict[str, np.ndarray]]] = []
    for name in names:
        values = [None if not m else m.get(name) for m in metas]
        kinds = [value_kind(v) for v in values]
        for kind in ("integer", "number", "date", "text", "nested"):
            if kind not in kinds:
                continue
            mine = [v if k == kind else None for v, k in zip(values, kinds)]
            if kind == "integer":
                out.append((name, kind, {"data": np.array([MISSING_INT if v is None else int(v) for v in mine], np.int64)}))
            elif kind == "number":
                out.append((name, kind, {"data": np.array([np.nan if v is None else float(v) for v in mine], np.float64)}))
            elif kind == "date":
                out.append((name, kind, {"data": np.array([MISSING_DATE if v is None else date_seconds(v) for v in mine],
                                                          np.int64)}))
            elif kind == "text":
                texts = [None if v is None else _as_text(v) for v in mine]
                distinct = sorted({t for t in texts if t is not None})
                code = {t: i for i, t in enumerate(distinct)}
                packed, offsets = pack_strings([t.encode("utf-8") for t in distinct])
                out.append((name, kind, {"data": np.array([-1 if t is None else code[t] for t in texts], np.int32),
                                         "values": packed, "value_offsets": offsets}))
            else:  # lists and objects: recorded so that a filter on them is told why it cannot run
                out.append((name, kind, {"data": np.array([v is not None for v in mine], np.bool_)}))
    return out


def check_metadata(meta: object, doc: str, allow_reserved: bool = False) -> None:
    """Refuse metadata that cannot be stored and filtered as written: ValueError in one line naming the document
    and the field (a reserved key, a NaN or infinity, an ISO-shaped date that is no date, a value of another type)."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise ValueError(f"metadata of document '{doc}' must be an object of fields, got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"document '{doc}': metadata field names are non-empty strings, got {key!r}")
        if key in RESERVED and not allow_reserved:
            raise ValueError(f"document '{doc}': metadata key {key!r} is reserved (medcolbert writes it itself)")
        _check_value(value, doc, key)


def _check_value(v: object, doc: str, key: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"document '{doc}': field {key!r} is {v} (NaN and infinity are not stored: use null)")
    if isinstance(v, str) and looks_like_date(v) and date_seconds(v) is None:
        raise ValueError(f"document '{doc}': field {key!r}: {v!r} is not a valid date "
                         "(YYYY-MM-DD, optionally THH:MM[:SS] and an offset such as +02:00 or Z)")
    if isinstance(v, list):
        for item in v:
            _check_value(item, doc, key)
    elif isinstance(v, dict):
        for item in v.values():
            _check_value(item, doc, key)
    elif not (v is None or isinstance(v, (str, int, float, bool))):
        raise ValueError(f"document '{doc}': field {key!r} holds {type(v).__name__}; metadata values are text, "
                         "numbers, booleans, dates, lists or objects")


def flatten_metadata(meta: dict | None) -> dict | None:
    """Metadata with a nested 'metadata' object's fields lifted to the top (corpus.jsonl's documented row shape)."""
    if not meta or not isinstance(meta.get(NESTED_METADATA), dict):
        return meta
    inner = meta[NESTED_METADATA]
    clash = sorted(set(inner) & (set(meta) - {NESTED_METADATA}))
    if clash:
        raise ValueError(f"field {clash[0]!r} is both a top-level field and one of 'metadata': name it once")
    return {**{k: v for k, v in meta.items() if k != NESTED_METADATA}, **inner}


def _lifted(meta: dict | None) -> dict | None:
    try:
        return flatten_metadata(meta)
    except ValueError:   # a clash in an old store: the nested object stays as it was (not filterable)
        return meta


def _as_text(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def date_seconds(v: str) -> int | None:
    """Seconds since 1970 (UTC) of an ISO date or date-time (an offset or Z is applied; none means UTC), or None
    where the text is not one."""
    if not _ISO_DATE.match(v):
        return None
    text = v.replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)   # +0200 -> +02:00 (older Pythons need the colon)
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)              # more than microseconds: cut
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return (parsed - _EPOCH) // timedelta(seconds=1)


def looks_like_date(v: str) -> bool:
    """Whether a text has the shape of an ISO date (valid or not): a bad one is refused when stored."""
    return bool(_ISO_DATE.match(v))


# ------------------------------------------------------------------------------------------- columns (read)

@dataclass
class FieldColumn:
    """One segment's column of one field and kind: per-document data and, for text, the sorted distinct values."""

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


def columns_from(columns: Sequence[tuple[str, str, Mapping[str, np.ndarray]]]) -> dict[str, list[FieldColumn]]:
    """Per field, its FieldColumns (one per kind) from (field, kind, arrays)."""
    out: dict[str, list[FieldColumn]] = {}
    for name, kind, a in columns:
        out.setdefault(name, []).append(FieldColumn(kind, a["data"], a.get("values"), a.get("value_offsets")))
    return out


# ------------------------------------------------------------------------------------------------- matching

class Bare(str):
    """A bare word of a `where` expression: text exactly as written (00007 stays 00007 against text), read as a
    number where the column holds numbers. Quoted values are plain str: text (and dates) only."""


def _numeric(v: object, lenient: bool) -> int | float | Decimal | None:
    """A value as a number, or None where it is not one for this condition."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v if not isinstance(v, float) or math.isfinite(v) else None
    if isinstance(v, str) and (isinstance(v, Bare) or lenient):
        if v.lower() in ("true", "false"):
            return int(v.lower() == "true")
        if re.fullmatch(r"[+-]?\d+", v.strip()):
            return int(v)
        try:
            # Decimal keeps what was written (2**53 + 2.5 has no float64): integer columns round it exactly.
            number = Decimal(v.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _int_test(data: np.ndarray, op: str, values: list) -> np.ndarray:
    """An integer column against numbers, exactly (no float64 rounding of values past 2**53)."""
    present = data != MISSING_INT
    if op in ("eq", "in"):
        exact = [int(v) for v in values if isinstance(v, int) or v == int(v)]
        exact = [v for v in exact if INT_MIN < v <= INT_MAX]
        return np.isin(data, np.array(exact, np.int64)) & present if exact else np.zeros(len(data), bool)
    v = values[0]
    # The integer threshold equivalent to comparing with v: x > 2.5 iff x >= 3, x <= 2.5 iff x <= 2, and so on.
    bound = v if isinstance(v, int) else {"gt": math.floor, "le": math.floor, "ge": math.ceil, "lt": math.ceil}[op](v)
    if bound > INT_MAX:
        return np.zeros(len(data), bool) if op in ("gt", "ge") else present
    if bound <= INT_MIN:
        return present if op in ("gt", "ge") else np.zeros(len(data), bool)
    return _compare(np.asarray(data), op, [np.int64(bound)]) & present


def _compare(data: np.ndarray, op: str, values: list) -> np.ndarray:
    if op == "eq":
        return data == values[0]
    if op == "in":
        return np.isin(data, values)
    return {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}[op](data, values[0])


def fits(kind: str, c: Condition, lenient: bool = False) -> bool:
    """Whether a condition can be asked of a column of this kind (some value fits it, the operator applies)."""
    if kind in ("integer", "number"):
        return any(_numeric(v, lenient) is not None for v in c.values)
    if kind == "date":
        return any(isinstance(v, str) and date_seconds(v) is not None for v in c.values)
    if kind == "text":
        return c.op in ("eq", "in")
    return False


def column_mask(col: FieldColumn, c: Condition, lenient: bool = False) -> np.ndarray:
    """Which documents of one column meet the condition (none where no value of it fits the column's kind)."""
    none = np.zeros(len(col.data), dtype=bool)
    if not fits(col.kind, c, lenient):
        return none
    if col.kind == "integer":
        return _int_test(np.asarray(col.data), c.op, [x for x in (_numeric(v, lenient) for v in c.values) if x is not None])
    if col.kind == "number":
        nums = [float(x) for x in (_numeric(v, lenient) for v in c.values) if x is not None]
        return _compare(np.asarray(col.data), c.op, nums) & ~np.isnan(col.data)
    if col.kind == "date":
        secs = [date_seconds(v) for v in c.values if isinstance(v, str) and date_seconds(v) is not None]
        return _compare(np.asarray(col.data), c.op, secs) & (np.asarray(col.data) != MISSING_DATE)
    codes = [col.code(_as_text(v)) for v in c.values]
    codes = [x for x in codes if x >= 0]
    return np.isin(np.asarray(col.data), codes) if codes else none


def check_fields(where: Where, kinds: Mapping[str, set[str]]) -> None:
    """Refuse a condition on a field no segment has, or one that fits none of the field's kinds."""
    for c in where.conditions:
        if c.field == ID_FIELD:
            continue
        if c.field not in kinds:
            known = ", ".join(sorted(kinds)) or "none (the index stores no metadata)"
            raise FilterError(f"filter: unknown metadata field {c.field!r} (fields: {known}; and {ID_FIELD!r})")
        held = kinds[c.field] - {"nested"}
        if not held:
            raise FilterError(f"filter: field {c.field!r} holds lists or objects, which are stored but not filterable")
        lenient = "text" not in held
        if any(fits(kind, c, lenient) for kind in held):
            continue
        shown = c.values[0] if len(c.values) == 1 else list(c.values)
        if held == {"text"}:
            raise FilterError(f"filter: field {c.field!r} holds text: compare it with = or in, not a range")
        if held <= {"integer", "number"}:
            raise FilterError(f"filter: {shown!r} is not a number (field {c.field!r} holds numbers)")
        if held == {"date"}:
            raise FilterError(f"filter: {shown!r} is not a date YYYY-MM-DD (field {c.field!r} holds dates)")
        names = {"integer": "numbers", "number": "numbers", "date": "dates", "text": "text"}
        raise FilterError(f"filter: {shown!r} with {c.op!r} fits none of what field {c.field!r} holds "
                          f"({', '.join(sorted({names[k] for k in held}))}; text is compared with = or in only)")
