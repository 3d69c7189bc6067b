"""Validation: a parsed YAML rule checked against the fields, values converted to Python
types, and turned into the validated tree; every problem with its path and a fix."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from crm_tasks.segments.rules.tree import (
    _ALL_OPS,
    _ANNIVERSARY,
    _ANNIVERSARY_COMPARE,
    _COMPARE,
    _DAY_COMPARE,
    _EXPECTED,
    _ISO_DATE_RE,
    _LISTS,
    _OPS_BY_TYPE,
    _REFERENCE_RE,
    _SHAPES,
    _TEXT_OPS,
    MAX_ANNIVERSARY_DAYS,
    MAX_DAYS,
    MAX_DEPTH,
    MAX_NODES,
    MONEY_LIMIT,
    FieldInfo,
    _All,
    _Anniversary,
    _Any,
    _Bad,
    _closest,
    _Compare,
    _DayRange,
    _InSegment,
    _listing,
    _Node,
    _Not,
    _show,
    _suggest,
)

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

    # A node: within the limits, of exactly one shape, then checked as that shape.

    def node(self, node: object, path: str, depth: int = 1) -> _Node | None:
        """The validated node, or None once its problems are recorded."""
        if not self.count_within_limit(path) or not self.depth_within_limit(path, depth):
            return None
        shape = self.shape(node, path)
        if shape is None:
            return None
        if shape == "field":
            return self.condition(node, path)
        return self.combination(shape, node, path, depth)

    def count_within_limit(self, path: str) -> bool:
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:  # said once, at the first node too many
            self.problem(path, f"the rule has more than {MAX_NODES} parts; split it into segments "
                               "combined with in_segment")
        return self.nodes <= MAX_NODES

    def depth_within_limit(self, path: str, depth: int) -> bool:
        if depth > MAX_DEPTH:
            self.problem(path, f"nesting is deeper than {MAX_DEPTH} levels; simplify the rule or move "
                               "part of it into its own segment and use in_segment")
            return False
        return True

    def shape(self, node: object, path: str) -> str | None:
        """The node's one key among all, any, not, in_segment and field."""
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
        return shapes[0]

    def combination(self, shape: str, node: dict, path: str, depth: int) -> _Node | None:
        """all, any, not or in_segment: the shape's key is the node's only key."""
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

    # A field condition: a known field, one operator that applies to its type, a fitting value.

    def condition(self, node: dict, path: str) -> _Node | None:
        info = self.known_field(node["field"], path)
        if info is None:
            return None
        op = self.operator(info, node, path)
        if op is None:
            return None
        try:
            return _operand(info, op, node[op], f"{path}.{op}")
        except _Bad as bad:
            self.problem(bad.path or f"{path}.{op}", bad.message)
            return None

    def known_field(self, name: object, path: str) -> FieldInfo | None:
        info = self.fields.get(name) if isinstance(name, str) else None
        if info is None:
            close = _closest(name, self.fields)
            hint = f"did you mean '{close}'? " if close else ""
            self.problem(path, f"unknown field {_show(name)} ({hint}fields: {_listing(sorted(self.fields))})")
        return info

    def operator(self, info: FieldInfo, node: dict, path: str) -> str | None:
        """The condition's one operator, known and applying to the field's type."""
        name, allowed = info.name, _OPS_BY_TYPE[info.type]
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
        return op


# --- operands: one operator's YAML value as a condition node, or _Bad(message[, path]) -------------


def _operand(info: FieldInfo, op: str, raw: object, path: str) -> _Node:
    """The condition node for one operator and its YAML value; _Bad(message[, path]) if unfit."""
    if op in _COMPARE or op in _TEXT_OPS:
        return _comparison(info, op, raw)
    if op == "is_null":
        return _null_test(info, raw)
    if op == "between":
        return _Compare(info.name, info.type, op, _pair(raw, partial(_convert, info.type, info.name)))
    if op in _LISTS:
        return _membership(info, op, raw, path)
    if op == _ANNIVERSARY:
        return _anniversary(info, raw, path)
    return _day_range(info, op, raw, path)


def _comparison(info: FieldInfo, op: str, raw: object) -> _Compare:
    value = _convert(info.type, info.name, raw)
    if op in _TEXT_OPS and value == "":
        raise _Bad(f"'{op}' of an empty text matches every filled value; use is_null: false")
    return _Compare(info.name, info.type, op, value)


def _null_test(info: FieldInfo, raw: object) -> _Compare:
    if not isinstance(raw, bool):
        raise _Bad(f"expected true or false, got {_show(raw)}")
    return _Compare(info.name, info.type, "is_null", raw)


def _membership(info: FieldInfo, op: str, raw: object, path: str) -> _Compare:
    """in / not_in: every item of the list converted, a bad one named by its index."""
    if not isinstance(raw, list) or not raw:
        raise _Bad(f"expected a non-empty list of values, e.g. [IN, PK], got {_show(raw)}")
    values = []
    for i, item in enumerate(raw):
        try:
            values.append(_convert(info.type, info.name, item))
        except _Bad as bad:
            raise _Bad(bad.message, f"{path}[{i}]") from None
    return _Compare(info.name, info.type, op, tuple(values))


def _anniversary(info: FieldInfo, raw: object, path: str) -> _Anniversary:
    sub_op, sub_raw = _day_compare(raw, path, _ANNIVERSARY_COMPARE)
    low, high = _anniversary_window(sub_op, sub_raw, f"{path}.{sub_op}")
    return _Anniversary(info.name, low, high)


def _day_range(info: FieldInfo, op: str, raw: object, path: str) -> _DayRange:
    """days_ago / days_until: the comparison of a day count as an interval of day indices."""
    sub_op, sub_raw = _day_compare(raw, path, _DAY_COMPARE)
    interval = _day_interval(sub_op, _days(sub_raw, f"{path}.{sub_op}", sub_op))
    return _DayRange(info.name, info.type == "timestamp", *(_negate(interval) if op == "days_ago" else interval))


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


def check_rule(rule: object, fields: Mapping[str, FieldInfo]) -> tuple[_Node | None, _Checker]:
    checker = _Checker(fields)
    tree = checker.node(rule, "rule")
    return (None if checker.problems else tree), checker


