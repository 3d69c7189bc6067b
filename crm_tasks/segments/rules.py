"""Custom segments: marketing's YAML rules, validated and compiled to SQL.

Marketing defines a segment without code, one YAML file per segment in
``segments/``::

    name: birthday_week_big_spenders        # [a-z][a-z0-9_]{0,62}, unique
    description: Spent 10,000 or more and have a birthday in the next 7 days
    rule:
      all:
        - {field: email_consent, eq: true}
        - {field: monetary, gte: 10000}
        - {field: birthday, anniversary_in_days: {lte: 7}}
        - any:
            - {field: country, in: [IN, PK]}
            - {in_segment: "rfm:champions"}
        - not: {field: last_purchase_at, days_ago: {gt: 90}}

A rule node is a mapping of exactly one shape:

``all: [node, ...]`` / ``any: [node, ...]``
    Every / at least one of the nodes (a non-empty list).
``not: node``
    The node is not true for the customer. A condition on an empty (NULL)
    field is never true, so ``not`` of it is true.
``in_segment: NAME``
    Member of another segment: a built-in one (``rfm:champions``,
    ``lifecycle:at_risk``, ``value:high_value``, ...) or a custom one by its
    name. Custom segments may build on each other, but not in a circle.
``field: NAME`` plus one operator
    A condition on one customer field (``describe_fields`` lists them):

    ===================================  =====================================
    ``eq, ne, lt, lte, gt, gte: V``      compare with one value
    ``between: [LOW, HIGH]``             LOW <= field <= HIGH
    ``in: [V, ...]``, ``not_in: [...]``  one of / none of the values
    ``is_null: true|false``              the field is empty / filled
    ``starts_with: S``, ``contains: S``  text only; case-sensitive
    ``days_ago: {OP: N}``                date and timestamp fields
    ``days_until: {OP: N}``              date and timestamp fields
    ``anniversary_in_days: {OP: N}``     date fields: birthdays and the like
    ===================================  =====================================

Values must suit the field's type: text (quote values YAML would read
otherwise, such as ``NO``, ``yes`` or ``007``), integer, number and money,
boolean (only ``eq``, ``ne`` and ``is_null``), date (``2026-03-01``) and
timestamp (a date, meaning midnight UTC, or ``2026-03-01T10:00:00+05:30``).
Text is compared by Unicode code point on every database.

Empty fields: every comparison, including ``ne`` and ``not_in``, is false on
an empty field; add ``{field: F, is_null: true}`` under ``any`` to include
such customers.

Day counts are whole days relative to the as-of day, the business day a
segment run is for. ``days_ago: {OP: N}`` takes one of ``eq, lt, lte, gt, gte``
or ``between: [A, B]``; ``days_ago`` of a date is as-of minus the date and
``days_until`` is the date minus as-of. A timestamp counts on the business day
it falls in: the as-of day runs from ``cutoff - 1 day`` up to, not including,
``cutoff``; a purchase in it is 0 days ago, one in the day before 1 day ago.
``anniversary_in_days`` (``lte: N``, ``eq: N`` or ``between: [A, B]``, with
0 <= A <= B <= 366) is true when the field's next yearly recurrence falls
within as-of + A .. as-of + B; a 29 February recurs on 28 February in years
without one.

Compilation builds a SQLAlchemy expression with every value a bound
parameter, never SQL text, and shifts day counts onto bound dates and instants
so that SQL compares plain columns on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy import Boolean, String, and_, false, func, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from crm_tasks.errors import RuleError

FieldType = Literal["text", "integer", "number", "money", "boolean", "date", "timestamp"]

MAX_DEPTH = 20
# A YAML alias can make a small file describe a huge tree; refuse before walking it.
MAX_NODES = 2000
MAX_DAYS = 100_000
MAX_ANNIVERSARY_DAYS = 366
MONEY_LIMIT = Decimal(10) ** 14

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Built-in segments are named family:segment; custom ones never contain ':'.
_REFERENCE_RE = re.compile(r"[a-z][a-z0-9_]{0,62}(?::[a-z][a-z0-9_]{0,62})?")
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DAY = timedelta(days=1)

_SHAPES = ("all", "any", "not", "in_segment", "field")
_TOP_KEYS = ("name", "description", "rule")
_COMPARE = ("eq", "ne", "lt", "lte", "gt", "gte")
_ORDERED = ("lt", "lte", "gt", "gte", "between")
_LISTS = ("in", "not_in")
_TEXT_OPS = ("starts_with", "contains")
_DAY_OPS = ("days_ago", "days_until")
_ANNIVERSARY = "anniversary_in_days"
_DAY_COMPARE = ("eq", "lt", "lte", "gt", "gte", "between")
_ANNIVERSARY_COMPARE = ("lte", "eq", "between")
_ALL_OPS = (*_COMPARE, "between", *_LISTS, "is_null", *_TEXT_OPS, *_DAY_OPS, _ANNIVERSARY)

_BASIC = (*_COMPARE, "between", *_LISTS, "is_null")
_OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "text": (*_BASIC, *_TEXT_OPS),
    "integer": _BASIC,
    "number": _BASIC,
    "money": _BASIC,
    "boolean": ("eq", "ne", "is_null"),
    "date": (*_BASIC, *_DAY_OPS, _ANNIVERSARY),
    "timestamp": (*_BASIC, *_DAY_OPS),
}
_EXPECTED = {
    "text": "text",
    "integer": "a whole number",
    "number": "a number",
    "money": "a number",
    "boolean": "true or false",
    "date": "a date like 2026-03-01",
    "timestamp": "a date or a date-time with offset like 2026-03-01T10:00:00+05:30",
}


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: FieldType
    description: str


@dataclass(frozen=True)
class SegmentDefinition:
    name: str
    description: str
    rule: dict  # as parsed from YAML, validated
    source: str  # e.g. "segments/vip.yaml"
    depends_on: tuple[str, ...]  # in_segment names, sorted, unique


@dataclass(frozen=True)
class DefinitionProblem:
    source: str
    name: str | None  # the segment's name when it could be read
    path: str  # "rule.all[2].gte", or "" for file-level problems
    message: str

    def __str__(self) -> str:
        if self.path:
            return f"{self.source}: {self.path}: {self.message}"
        return f"{self.source}: {self.message}"


# --- the validated rule tree --------------------------------------------------------------
# Validation turns the YAML into these nodes, with values converted to Python types;
# compilation only ever sees them.


@dataclass(frozen=True)
class _All:
    children: tuple[_Node, ...]


@dataclass(frozen=True)
class _Any:
    children: tuple[_Node, ...]


@dataclass(frozen=True)
class _Not:
    child: _Node


@dataclass(frozen=True)
class _InSegment:
    name: str
    path: str


@dataclass(frozen=True)
class _Compare:
    field: str
    type: str
    op: str
    value: Any


@dataclass(frozen=True)
class _DayRange:
    """Day index relative to as-of (0 = the as-of day, 1 = tomorrow) within low..high; None: open."""

    field: str
    timestamp: bool
    low: int | None
    high: int | None


@dataclass(frozen=True)
class _Anniversary:
    field: str
    low: int
    high: int


_Node = _All | _Any | _Not | _InSegment | _Compare | _DayRange | _Anniversary


# --- helpers for messages -------------------------------------------------------------------


def _suggest(word: object, choices: Collection[str]) -> str:
    """" (did you mean 'x'?)" or ""."""
    close = _closest(word, choices)
    return f" (did you mean '{close}'?)" if close else ""


def _closest(word: object, choices: Collection[str]) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _show(value: object) -> str:
    """A YAML value as the author wrote it, for messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return repr(value) if isinstance(value, str) else str(value)


def _listing(names: Collection[str]) -> str:
    return ", ".join(names) if names else "none"


class _Bad(Exception):
    """A value that does not fit; the message says why, the path (if given) where."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


# --- values ---------------------------------------------------------------------------------


def _convert(ftype: str, field: str, raw: object) -> Any:
    """The YAML value as the Python value to bind for a field of this type; _Bad if it does not fit."""
    try:
        value = _CONVERTERS[ftype](raw)
    except (_Bad, ValueError, ArithmeticError):
        value = None
    if value is not None:
        return value
    hint = ""
    if ftype == "text" and isinstance(raw, (bool, int, float, date)):
        hint = " (YAML reads unquoted yes/no/on/off, numbers and dates as such: put the value in quotes)"
    elif ftype == "timestamp" and _is_naive_time(raw):
        hint = " (add the offset, e.g. +05:30 or Z)"
    raise _Bad(f"expected {_EXPECTED[ftype]} for field '{field}', got {_show(raw)}{hint}")


def _is_naive_time(raw: object) -> bool:
    """A date-time without offset: which instant it means is a guess, so it is refused."""
    if isinstance(raw, str) and "T" in raw:
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            return False
    return isinstance(raw, datetime) and raw.tzinfo is None


def _to_text(raw: object) -> str | None:
    return raw if isinstance(raw, str) else None


def _to_integer(raw: object) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    # Beyond a 64-bit integer the query itself would fail, on every run.
    return raw if -(2**63) <= raw < 2**63 else None


def _to_number(raw: object) -> int | float | Decimal | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, Decimal)):
        return None
    return raw if math.isfinite(raw) else None


def _to_money(raw: object) -> Decimal | None:
    number = _to_number(raw)
    # Through str(): Decimal(0.1) would carry the float's binary error into an exact column.
    money = None if number is None else Decimal(str(number))
    # Money is NUMERIC(18, 4): larger values would fail the query rather than match nothing.
    return money if money is not None and abs(money) < MONEY_LIMIT else None


def _to_boolean(raw: object) -> bool | None:
    return raw if isinstance(raw, bool) else None


def _to_date(raw: object) -> date | None:
    if isinstance(raw, datetime):
        return None
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and _ISO_DATE_RE.fullmatch(raw):
        return date.fromisoformat(raw)
    return None


def _to_timestamp(raw: object) -> datetime | None:
    day = _to_date(raw)
    if day is not None:
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    if isinstance(raw, str):
        raw = datetime.fromisoformat(raw)
    if isinstance(raw, datetime) and raw.tzinfo is not None:
        return raw.astimezone(UTC)
    return None


_CONVERTERS: dict[str, Callable[[object], Any]] = {
    "text": _to_text,
    "integer": _to_integer,
    "number": _to_number,
    "money": _to_money,
    "boolean": _to_boolean,
    "date": _to_date,
    "timestamp": _to_timestamp,
}


def _day_interval(op: str, value: int | tuple[int, int]) -> tuple[int | None, int | None]:
    """Integers n with `n OP value`, as an inclusive interval (None: unbounded)."""
    match op:
        case "eq":
            return value, value
        case "lt":
            return None, value - 1
        case "lte":
            return None, value
        case "gt":
            return value + 1, None
        case "gte":
            return value, None
        case "between":
            return value
    raise AssertionError(op)


def _negate(interval: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    """The interval of -n for n in the interval: days ago are negative day indices."""
    low, high = interval
    return (None if high is None else -high), (None if low is None else -low)


# --- validation -----------------------------------------------------------------------------


class _Checker:
    """Walks one rule, collecting (path, message) problems and the in_segment references."""

    def __init__(self, fields: Mapping[str, FieldInfo]) -> None:
        self.fields = fields
        self.problems: list[tuple[str, str]] = []
        self.references: list[tuple[str, str]] = []  # (name, path)
        self.nodes = 0

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def node(self, node: object, path: str, depth: int = 1) -> _Node | None:
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:
            self.problem(path, f"the rule has more than {MAX_NODES} parts; split it into segments "
                               "combined with in_segment")
        if self.nodes > MAX_NODES:
            return None
        if depth > MAX_DEPTH:
            self.problem(path, f"nesting is deeper than {MAX_DEPTH} levels; simplify the rule or move "
                               "part of it into its own segment and use in_segment")
            return None
        if not isinstance(node, dict) or not node:
            self.problem(path, "expected a mapping with one of all, any, not, in_segment or field, e.g. "
                               f"{{field: monetary, gte: 10000}}; got {_show(node)}")
            return None
        shapes = [k for k in node if k in _SHAPES]
        if not shapes:
            key = next(iter(node))
            self.problem(path, f"unknown key '{key}'{_suggest(key, _SHAPES + _ALL_OPS)}; a rule node is "
                               f"one of {', '.join(_SHAPES)}")
            return None
        if len(shapes) > 1:
            self.problem(path, f"'{shapes[0]}' and '{shapes[1]}' in one node; a node has exactly one of "
                               f"{', '.join(_SHAPES)}: put them as separate items under all: or any:")
            return None
        shape = shapes[0]
        if shape == "field":
            return self.condition(node, path)
        extra = [k for k in node if k != shape]
        if extra:
            self.problem(path, f"unexpected key '{extra[0]}' beside '{shape}'; a node has exactly one key "
                               "unless it is a field condition")
            return None
        value = node[shape]
        if shape in ("all", "any"):
            return self.group(shape, value, f"{path}.{shape}", depth)
        if shape == "not":
            child = self.node(value, f"{path}.not", depth + 1)
            return None if child is None else _Not(child)
        return self.in_segment(value, f"{path}.in_segment")

    def group(self, shape: str, items: object, path: str, depth: int) -> _Node | None:
        if not isinstance(items, list) or not items:
            self.problem(path, f"expected a non-empty list of rule nodes, got {_show(items)}")
            return None
        children = [self.node(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        if any(child is None for child in children):
            return None
        return (_All if shape == "all" else _Any)(tuple(children))

    def in_segment(self, name: object, path: str) -> _Node | None:
        if not isinstance(name, str) or not _REFERENCE_RE.fullmatch(name):
            self.problem(path, f"expected a segment name like 'rfm:champions' or 'my_segment', got {_show(name)}")
            return None
        self.references.append((name, path))
        return _InSegment(name, path)

    def condition(self, node: dict, path: str) -> _Node | None:
        name = node["field"]
        info = self.fields.get(name) if isinstance(name, str) else None
        if info is None:
            close = _closest(name, self.fields)
            hint = f"did you mean '{close}'? " if close else ""
            self.problem(path, f"unknown field {_show(name)} ({hint}fields: {_listing(sorted(self.fields))})")
            return None
        allowed = _OPS_BY_TYPE[info.type]
        ops = [k for k in node if k != "field"]
        if not ops:
            self.problem(path, f"no operator for field '{name}'; add one of {', '.join(allowed)}")
            return None
        if len(ops) > 1:
            self.problem(path, f"more than one operator ({', '.join(map(str, ops))}) in one condition; use "
                               "between: [low, high], or one condition per operator under all:")
            return None
        op = ops[0]
        if op not in _ALL_OPS:
            self.problem(f"{path}.{op}", f"unknown operator '{op}'{_suggest(op, allowed)}; operators for "
                                         f"{info.type} field '{name}': {', '.join(allowed)}")
            return None
        if op not in allowed:
            self.problem(f"{path}.{op}", f"operator '{op}' does not apply to {info.type} field '{name}'; use one "
                                         f"of {', '.join(allowed)}")
            return None
        try:
            return self.operand(info, op, node[op], f"{path}.{op}")
        except _Bad as bad:
            self.problem(bad.path or f"{path}.{op}", bad.message)
            return None

    def operand(self, info: FieldInfo, op: str, raw: object, path: str) -> _Node:
        """The condition node for one operator and its YAML value; _Bad(message[, path]) if unfit."""
        field, ftype = info.name, info.type
        if op in _COMPARE or op in _TEXT_OPS:
            value = _convert(ftype, field, raw)
            if op in _TEXT_OPS and value == "":
                raise _Bad(f"'{op}' of an empty text matches every filled value; use is_null: false")
            return _Compare(field, ftype, op, value)
        if op == "is_null":
            if not isinstance(raw, bool):
                raise _Bad(f"expected true or false, got {_show(raw)}")
            return _Compare(field, ftype, op, raw)
        if op == "between":
            return _Compare(field, ftype, op, _pair(raw, lambda v: _convert(ftype, field, v)))
        if op in _LISTS:
            if not isinstance(raw, list) or not raw:
                raise _Bad(f"expected a non-empty list of values, e.g. [IN, PK], got {_show(raw)}")
            values = []
            for i, item in enumerate(raw):
                try:
                    values.append(_convert(ftype, field, item))
                except _Bad as bad:
                    raise _Bad(bad.message, f"{path}[{i}]") from None
            return _Compare(field, ftype, op, tuple(values))
        compare = _day_compare(raw, path, _ANNIVERSARY_COMPARE if op == _ANNIVERSARY else _DAY_COMPARE)
        sub_op, sub_raw = compare
        if op == _ANNIVERSARY:
            low, high = _anniversary_window(sub_op, sub_raw, f"{path}.{sub_op}")
            return _Anniversary(field, low, high)
        value = _days(sub_raw, f"{path}.{sub_op}", sub_op)
        interval = _day_interval(sub_op, value)
        return _DayRange(field, ftype == "timestamp", *(_negate(interval) if op == "days_ago" else interval))


def _pair(raw: object, convert: Callable[[object], Any]) -> tuple[Any, Any]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise _Bad(f"expected [low, high], got {_show(raw)}")
    low, high = convert(raw[0]), convert(raw[1])
    if low > high:
        raise _Bad(f"low {_show(raw[0])} is above high {_show(raw[1])}, so nothing would match; swap them")
    return low, high


def _day_compare(raw: object, path: str, allowed: tuple[str, ...]) -> tuple[str, object]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _Bad(f"expected one comparison of a day count, e.g. {{lte: 7}}; one of {', '.join(allowed)}")
    (sub_op, value), = raw.items()
    if sub_op not in allowed:
        raise _Bad(f"unknown comparison '{sub_op}'{_suggest(sub_op, allowed)}; use one of {', '.join(allowed)}",
                   f"{path}.{sub_op}")
    return sub_op, value


def _day_count(raw: object, path: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _Bad(f"expected a whole number of days, got {_show(raw)}", path)
    if not low <= raw <= high:
        raise _Bad(f"expected a number of days from {low} to {high}, got {raw}", path)
    return raw


def _days(raw: object, path: str, op: str) -> int | tuple[int, int]:
    count = partial(_day_count, path=path, low=-MAX_DAYS, high=MAX_DAYS)
    try:
        return _pair(raw, count) if op == "between" else count(raw)
    except _Bad as bad:
        raise _Bad(bad.message, path) from None


def _anniversary_window(op: str, raw: object, path: str) -> tuple[int, int]:
    count = partial(_day_count, path=path, low=0, high=MAX_ANNIVERSARY_DAYS)
    try:
        if op == "between":
            return _pair(raw, count)
        days = count(raw)
    except _Bad as bad:
        raise _Bad(bad.message, path) from None
    return (0, days) if op == "lte" else (days, days)


def _check_rule(rule: object, fields: Mapping[str, FieldInfo]) -> tuple[_Node | None, _Checker]:
    checker = _Checker(fields)
    tree = checker.node(rule, "rule")
    return (None if checker.problems else tree), checker


# --- one file -------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice: plain YAML would silently keep the last one."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found the key '{key}' twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


def _construct_checked_timestamp(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> date | datetime:
    # PyYAML lets a ValueError without a line escape for dates such as 2026-02-30.
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"'{node.value}' is not a valid date ({exc})",
                                                node.start_mark) from None


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_checked_timestamp)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark:
        # Where the parser noticed is often after the mistake; where the construct began helps more.
        what += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"invalid YAML{where}: {what}"
    return (f"invalid YAML{where}: {what}; check the indentation, and quote values that contain ': ' "
            "or start with a special character")


@dataclass(frozen=True)
class _Parsed:
    definition: SegmentDefinition
    references: tuple[tuple[str, str], ...]  # (name, path of the in_segment)


def _parse(text: str, source: str, fields: Mapping[str, FieldInfo],
           builtin_segments: Collection[str]) -> tuple[_Parsed | None, str | None, list[DefinitionProblem]]:
    """The parsed file, the segment name if it could be read, and the file's problems."""
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        return None, None, [DefinitionProblem(source, None, "", _yaml_problem(exc))]
    if not isinstance(doc, dict):
        got = "an empty file" if doc is None else _show(doc)
        return None, None, [DefinitionProblem(source, None, "", "expected a mapping with name, description "
                                                                f"and rule, got {got}")]
    problems: list[tuple[str, str]] = []
    raw_name = doc.get("name")
    name = raw_name if isinstance(raw_name, str) else None
    for key in doc:
        if key not in _TOP_KEYS:
            message = f"unknown key '{key}'{_suggest(key, _TOP_KEYS)}; a segment file has {', '.join(_TOP_KEYS)}"
            problems.append((str(key), message))
    problems.extend(_name_problems(raw_name, builtin_segments))
    description = doc.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        problems.append(("description", f"expected text, got {_show(description)}"))
    tree, checker = None, None
    if "rule" not in doc:
        problems.append(("", "missing 'rule': add e.g. rule: {field: monetary, gte: 10000}"))
    else:
        tree, checker = _check_rule(doc["rule"], fields)
        problems.extend(checker.problems)
    out = [DefinitionProblem(source, name, path, message) for path, message in problems]
    if out or tree is None:
        return None, name, out
    references = tuple(checker.references)
    definition = SegmentDefinition(name=name, description=description, rule=_json_safe(doc["rule"]), source=source,
                                   depends_on=tuple(sorted({n for n, _ in references})))
    return _Parsed(definition, references), name, []


def _json_safe(value: Any) -> Any:
    """The rule with YAML dates and times as ISO text, so that it can be stored as JSON; it
    compiles the same, since ISO text is accepted wherever a date or timestamp is."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    return value


def _name_problems(name: object, builtin_segments: Collection[str]) -> list[tuple[str, str]]:
    if name is None:
        return [("", "missing 'name': add e.g. name: big_spenders")]
    if not isinstance(name, str):
        return [("name", f"expected a name like big_spenders, got {_show(name)}")]
    if ":" in name:
        return [("name", (f"'{name}' contains ':', which is reserved for built-in segments such as "
                          "rfm:champions; use letters, digits and _"))]
    if not NAME_RE.fullmatch(name):
        return [("name", (f"'{name}' is not a valid name: start with a lower-case letter, then up to 62 "
                          "lower-case letters, digits or _"))]
    if name in builtin_segments:
        return [("name", f"'{name}' is the name of a built-in segment; choose another")]
    return []


def parse_definition(text: str, source: str, fields: Mapping[str, FieldInfo],
                     builtin_segments: Collection[str]) -> tuple[SegmentDefinition | None, list[DefinitionProblem]]:
    """Validate one file's text: the definition, or None and its problems.

    Only the syntax of in_segment names is checked here; whether they exist, duplicate
    names and cycles are checks across files, done by load_definitions.
    """
    parsed, _, problems = _parse(text, source, fields, builtin_segments)
    return (parsed.definition if parsed else None), problems


# --- all files ------------------------------------------------------------------------------


def _segment_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    # Dot files are editors' and macOS's litter (._vip.yaml), not definitions.
    return sorted((p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
                   and p.is_file()), key=lambda p: p.name)


def _read(path: Path, source: str) -> tuple[str | None, DefinitionProblem | None]:
    try:
        return path.read_bytes().decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return None, DefinitionProblem(source, None, "", "the file is not UTF-8 text; save it as UTF-8")
    except OSError as exc:
        return None, DefinitionProblem(source, None, "", f"cannot read the file: {exc.strerror}")


def _find_cycle(start: str, graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """The shortest path start -> ... -> start in the graph, or None."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in graph.get(node, ()):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in previous and nxt in graph:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


def _reference_path(parsed: _Parsed, name: str) -> str:
    return next(path for ref, path in parsed.references if ref == name)


def load_definitions(folder: Path, fields: Mapping[str, FieldInfo], builtin_segments: Collection[str],
                     label: str = "segments") -> tuple[list[SegmentDefinition], list[DefinitionProblem]]:
    """Read folder/*.yaml and *.yml in sorted order: the valid definitions and the problems.

    Definitions come in dependency order (a segment after every custom segment it
    references). A problem in one file never stops the others; a segment that
    references an invalid one is invalid too. A missing folder means no custom segments.
    """
    builtin = set(builtin_segments)
    problems: dict[str, list[DefinitionProblem]] = {}
    parsed: dict[str, _Parsed] = {}  # by name, the first file in sorted order that claims it
    owner: dict[str, str] = {}  # segment name -> source of the first file with that name
    order: list[str] = []
    for path in _segment_files(Path(folder)):
        source = f"{label}/{path.name}"
        order.append(source)
        text, unreadable = _read(path, source)
        if unreadable:
            problems[source] = [unreadable]
            continue
        result, name, file_problems = _parse(text, source, fields, builtin)
        problems[source] = file_problems
        if name is None:
            continue
        if name in owner:
            problems[source].append(DefinitionProblem(
                source, name, "name", f"'{name}' is already the name of {owner[name]}; give each segment its "
                                      "own name"))
            continue
        owner[name] = source
        if result is not None:
            parsed[name] = result

    def fail(name: str, path: str, message: str) -> None:
        source = parsed[name].definition.source
        problems[source].append(DefinitionProblem(source, name, path, message))

    graph = {name: tuple(d for d in p.definition.depends_on if d in owner) for name, p in parsed.items()}
    invalid = {name for name in owner if name not in parsed}
    for name, p in parsed.items():
        for ref, path in p.references:
            if ref not in builtin and ref not in owner:
                known = sorted(builtin) if ":" in ref else sorted(owner)
                kind = "built-in" if ":" in ref else "custom"
                fail(name, path, f"unknown segment '{ref}'{_suggest(ref, [*builtin, *owner])}; {kind} segments: "
                                 f"{_listing(known)}")
                invalid.add(name)
        cycle = _find_cycle(name, graph)
        if cycle:
            fail(name, _reference_path(p, cycle[1]), f"in_segment cycle {' -> '.join(cycle)}: a segment cannot "
                                                     "include itself, directly or through others; remove one of "
                                                     "these references")
            invalid.add(name)
    # Invalidity spreads to every segment built on an invalid one, however indirectly.
    changed = True
    while changed:
        changed = False
        for name, p in parsed.items():
            bad = [d for d in graph[name] if d in invalid]
            if name in invalid or not bad:
                continue
            for dep in bad:
                fail(name, _reference_path(p, dep), f"depends on invalid segment '{dep}' ({owner[dep]}); fix "
                                                    "that file first")
            invalid.add(name)
            changed = True

    valid = [n for n in parsed if n not in invalid]  # file order: parsed was filled in it
    return _dependency_order(valid, graph, parsed), [p for source in order for p in problems[source]]


def _dependency_order(names: list[str], graph: Mapping[str, tuple[str, ...]],
                      parsed: Mapping[str, _Parsed]) -> list[SegmentDefinition]:
    """Depth first, in file order: each segment after the custom segments it references (no cycles left)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in graph[name]:
            visit(dep)
        done.append(name)

    for name in names:
        visit(name)
    return [parsed[name].definition for name in done]


# --- compilation ----------------------------------------------------------------------------


def compile_rule(rule: dict, columns: Mapping[str, ColumnElement], fields: Mapping[str, FieldInfo], *,
                 as_of: date, cutoff: datetime, dialect: str,
                 member_of: Callable[[str], ColumnElement[bool]]) -> ColumnElement[bool]:
    """The rule as a SQLAlchemy boolean expression over the given columns (one per field name).

    ``cutoff`` is the aware end of the as-of day (exclusive); ``member_of(name)`` gives the
    membership expression of another segment. Use the result in WHERE: where the rule is
    not true it may be NULL rather than false. Raises RuleError for an invalid rule.
    """
    if dialect not in ("sqlite", "postgresql"):
        raise RuleError(f"segment rules support the sqlite and postgresql dialects, not {dialect!r}")
    if cutoff.tzinfo is None:
        raise RuleError("cutoff must be an aware datetime (UTC)")
    tree, checker = _check_rule(rule, fields)
    if tree is None:
        raise RuleError("; ".join(f"{path}: {message}" for path, message in checker.problems))
    return _Compiler(columns, as_of, cutoff.astimezone(UTC), dialect, member_of).build(tree)


@dataclass(frozen=True)
class _Compiler:
    columns: Mapping[str, ColumnElement]
    as_of: date
    cutoff: datetime
    dialect: str
    member_of: Callable[[str], ColumnElement[bool]]

    def column(self, field: str) -> ColumnElement:
        try:
            return self.columns[field]
        except KeyError:
            raise RuleError(f"no column given for field '{field}'") from None

    def build(self, node: _Node) -> ColumnElement[bool]:
        match node:
            case _All(children):
                return and_(*(self.build(c) for c in children))
            case _Any(children):
                return or_(*(self.build(c) for c in children))
            case _Not(child):
                # NOT of an unknown (NULL) comparison is unknown, which drops the customer; the
                # rule language promises "not true", so an unknown inner condition counts as false.
                return not_(func.coalesce(self.build(child), false(), type_=Boolean))
            case _InSegment(name):
                return self.member_of(name)
            case _Compare():
                return self.compare(node)
            case _DayRange():
                return self.day_range(node)
            case _Anniversary():
                return self.anniversary(node)
        raise AssertionError(node)

    def compare(self, node: _Compare) -> ColumnElement[bool]:
        # Comparing the column with a plain value binds it with the column's type, which matters
        # for Money on SQLite (stored as 1/10000 units) and UtcDateTime.
        col, value = self.column(node.field), node.value
        if node.type == "text" and node.op in _ORDERED and self.dialect == "postgresql":
            # PostgreSQL orders text by the database's locale; "C" gives code point order, as on SQLite.
            col = col.collate("C")
        match node.op:
            case "eq":
                return col == value
            case "ne":
                return col != value
            case "lt":
                return col < value
            case "lte":
                return col <= value
            case "gt":
                return col > value
            case "gte":
                return col >= value
            case "between":
                return col.between(*value)
            case "in":
                return col.in_(value)
            case "not_in":
                return col.not_in(value)
            case "is_null":
                return col.is_(None) if value else col.is_not(None)
            case "starts_with" | "contains":
                return self.text_match(col, node.op, value)
        raise AssertionError(node.op)

    def text_match(self, col: ColumnElement, op: str, value: str) -> ColumnElement[bool]:
        if self.dialect == "sqlite":
            # SQLite's LIKE ignores ASCII case; instr() is case-sensitive, as PostgreSQL's LIKE is.
            position = func.instr(col, value)
            return position == 1 if op == "starts_with" else position > 0
        return col.startswith(value, autoescape=True) if op == "starts_with" else col.contains(value, autoescape=True)

    def day_range(self, node: _DayRange) -> ColumnElement[bool]:
        col = self.column(node.field)
        conditions = []
        if not node.timestamp:
            first = None if node.low is None else self.as_of + node.low * _DAY
            last = None if node.high is None else self.as_of + node.high * _DAY
            if first is not None and first == last:
                return col == first
            if first is not None:
                conditions.append(col >= first)
            if last is not None:
                conditions.append(col <= last)
        else:
            # Day k runs from start + k days up to, not including, start + k + 1 days.
            start = self.cutoff - _DAY
            if node.low is not None:
                conditions.append(col >= start + node.low * _DAY)
            if node.high is not None:
                conditions.append(col < start + (node.high + 1) * _DAY)
        return and_(*conditions)

    def anniversary(self, node: _Anniversary) -> ColumnElement[bool]:
        col = self.column(node.field)
        if self.dialect == "sqlite":
            month_day = func.strftime("%m-%d", col, type_=String)
        else:
            month_day = func.to_char(col, "MM-DD", type_=String)
        return month_day.in_(sorted(_anniversary_month_days(self.as_of, node.low, node.high)))


def _anniversary_month_days(as_of: date, low: int, high: int) -> set[str]:
    """'MM-DD' of every day from as_of + low to as_of + high, with '02-29' where a 28 February of a
    year without a 29th is among them: that is when those born on 29 February celebrate."""
    return set().union(*(recurring_month_days(as_of + k * _DAY, "feb28") for k in range(low, high + 1)))


def recurring_month_days(day: date, feb29: str = "feb28") -> set[str]:
    """'MM-DD' of the yearly dates that recur on ``day``: its own, and '02-29' where a year without a
    29 February moves it here (to 28 February with ``feb28``, to 1 March with ``mar1``)."""
    days = {day.strftime("%m-%d")}
    if not is_leap(day.year) and (
        (feb29 == "feb28" and (day.month, day.day) == (2, 28))
        or (feb29 == "mar1" and (day.month, day.day) == (3, 1))
    ):
        days.add("02-29")
    return days


def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# --- documentation --------------------------------------------------------------------------


def describe_fields(fields: Mapping[str, FieldInfo]) -> str:
    """A Markdown table of field name, type and description (for docs and --help)."""
    lines = ["| field | type | description |", "|---|---|---|"]
    for info in fields.values():
        description = info.description.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{info.name}` | {info.type} | {description} |")
    return "\n".join(lines)

