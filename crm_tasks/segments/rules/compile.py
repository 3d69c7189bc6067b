"""Compilation: a validated rule to one SQLAlchemy expression with every value a bound
parameter, day counts shifted onto bound dates and instants, the same on both dialects."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Boolean, String, and_, false, func, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from crm_tasks.errors import RuleError
from crm_tasks.segments.rules.check import check_rule
from crm_tasks.segments.rules.tree import (
    _DAY,
    _ORDERED,
    _TEXT_OPS,
    FieldInfo,
    _All,
    _Anniversary,
    _Any,
    _Compare,
    _DayRange,
    _InSegment,
    _Node,
    _Not,
)

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
    tree, checker = check_rule(rule, fields)
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
                return self.negation(child)
            case _InSegment(name):
                return self.member_of(name)
            case _Compare():
                return self.compare(node)
            case _DayRange():
                return self.day_range(node)
            case _Anniversary():
                return self.anniversary(node)
        raise AssertionError(node)

    def negation(self, child: _Node) -> ColumnElement[bool]:
        # NOT of an unknown (NULL) comparison is unknown, which drops the customer; the
        # rule language promises "not true", so an unknown inner condition counts as false.
        return not_(func.coalesce(self.build(child), false(), type_=Boolean))

    def compare(self, node: _Compare) -> ColumnElement[bool]:
        col = self.comparable_column(node)
        if node.op in _TEXT_OPS:
            return self.text_match(col, node.op, node.value)
        return _SQL_OPERATORS[node.op](col, node.value)

    def comparable_column(self, node: _Compare) -> ColumnElement:
        col = self.column(node.field)
        if node.type == "text" and node.op in _ORDERED and self.dialect == "postgresql":
            # PostgreSQL orders text by the database's locale; "C" gives code point order, as on SQLite.
            return col.collate("C")
        return col

    def text_match(self, col: ColumnElement, op: str, value: str) -> ColumnElement[bool]:
        if self.dialect == "sqlite":
            # SQLite's LIKE ignores ASCII case; instr() is case-sensitive, as PostgreSQL's LIKE is.
            position = func.instr(col, value)
            return position == 1 if op == "starts_with" else position > 0
        return col.startswith(value, autoescape=True) if op == "starts_with" else col.contains(value, autoescape=True)

    def day_range(self, node: _DayRange) -> ColumnElement[bool]:
        col = self.column(node.field)
        if node.timestamp:
            return self.instants_on_days(col, node.low, node.high)
        return self.dates_on_days(col, node.low, node.high)

    def dates_on_days(self, col: ColumnElement, low: int | None, high: int | None) -> ColumnElement[bool]:
        """A date column within the days as_of + low .. as_of + high (None: open)."""
        first = None if low is None else self.as_of + low * _DAY
        last = None if high is None else self.as_of + high * _DAY
        if first is not None and first == last:
            return col == first
        conditions = []
        if first is not None:
            conditions.append(col >= first)
        if last is not None:
            conditions.append(col <= last)
        return and_(*conditions)

    def instants_on_days(self, col: ColumnElement, low: int | None, high: int | None) -> ColumnElement[bool]:
        """A timestamp column within those days, each a half-open span of instants; day 0 ends at the cutoff."""
        # Day k runs from start + k days up to, not including, start + k + 1 days.
        start = self.cutoff - _DAY
        conditions = []
        if low is not None:
            conditions.append(col >= start + low * _DAY)
        if high is not None:
            conditions.append(col < start + (high + 1) * _DAY)
        return and_(*conditions)

    def anniversary(self, node: _Anniversary) -> ColumnElement[bool]:
        col = self.column(node.field)
        if self.dialect == "sqlite":
            month_day = func.strftime("%m-%d", col, type_=String)
        else:
            month_day = func.to_char(col, "MM-DD", type_=String)
        return month_day.in_(sorted(_anniversary_month_days(self.as_of, node.low, node.high)))


# Each comparison of a _Compare node in SQL. Comparing the column with a plain value binds it with the
# column's type, which matters for Money on SQLite (stored as 1/10000 units) and UtcDateTime.
_SQL_OPERATORS: dict[str, Callable[[ColumnElement, Any], ColumnElement[bool]]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "between": lambda col, value: col.between(*value),
    "in": lambda col, value: col.in_(value),
    "not_in": lambda col, value: col.not_in(value),
    "is_null": lambda col, value: col.is_(None) if value else col.is_not(None),
}


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


