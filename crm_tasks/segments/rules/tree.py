"""The rule language's vocabulary: its limits and operators, the validated tree that
compilation reads, the definitions and problems it reports, message helpers, and the fields
described for marketing."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

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


# --- documentation --------------------------------------------------------------------------


def describe_fields(fields: Mapping[str, FieldInfo]) -> str:
    """A Markdown table of field name, type and description (for docs and --help)."""
    lines = ["| field | type | description |", "|---|---|---|"]
    for info in fields.values():
        description = info.description.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{info.name}` | {info.type} | {description} |")
    return "\n".join(lines)

