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

The package, in the order a rule passes through it: ``parse`` reads segment files,
``check`` validates a rule into the tree of ``tree``, ``compile`` turns that tree into
SQL; ``tree`` also describes the fields for marketing. Names with a leading underscore are
shared between these modules and private to the package; the public API is below.
"""

from crm_tasks.segments.rules.check import check_rule
from crm_tasks.segments.rules.compile import compile_rule, is_leap, recurring_month_days
from crm_tasks.segments.rules.parse import load_definitions, parse_definition
from crm_tasks.segments.rules.tree import (
    NAME_RE,
    DefinitionProblem,
    FieldInfo,
    FieldType,
    SegmentDefinition,
    describe_fields,
)

__all__ = [
    "NAME_RE", "DefinitionProblem", "FieldInfo", "FieldType", "SegmentDefinition", "check_rule", "compile_rule",
    "describe_fields", "is_leap", "load_definitions", "parse_definition", "recurring_month_days",
]
