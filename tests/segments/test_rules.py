"""Custom segment rules: validation messages, and what compiled rules match on SQLite and PostgreSQL.

The database tests run rules against a small probe table whose rows sit on the boundaries
that matter (the first and last instant of a day, 29 February, NULLs, 1/10000 of money).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Boolean, Column, Date, Integer, MetaData, String, Table, insert, select
from sqlalchemy.dialects import postgresql

from crm_tasks.errors import RuleError
from crm_tasks.segments.rules import (
    DefinitionProblem,
    FieldInfo,
    compile_rule,
    describe_fields,
    load_definitions,
    parse_definition,
)
from crm_tasks.store.types import Money, UtcDateTime

FIELDS = {f.name: f for f in [
    FieldInfo("name", "text", "First name"),
    FieldInfo("qty", "integer", "Orders"),
    FieldInfo("spent", "money", "Net revenue"),
    FieldInfo("consent", "boolean", "E-mail consent"),
    FieldInfo("joined", "date", "Sign-up day"),
    FieldInfo("birthday", "date", "Birthday"),
    FieldInfo("last_at", "timestamp", "Last purchase"),
]}
BUILTIN = {"rfm:champions", "lifecycle:at_risk", "value:high_value"}

AS_OF = date(2026, 3, 10)
# The end of 10 March in Asia/Kolkata: the as-of day is [START, CUTOFF).
CUTOFF = datetime(2026, 3, 10, 18, 30, tzinfo=UTC)
START = CUTOFF - timedelta(days=1)
D = timedelta(days=1)
US = timedelta(microseconds=1)

ROWS: dict[int, dict] = {
    1: {"name": "Asha", "qty": 5, "spent": Decimal(10000), "consent": True, "joined": date(2026, 3, 10),
        "birthday": date(1990, 3, 10), "last_at": CUTOFF - US},  # last instant of the as-of day
    2: {"name": "asha", "qty": 0, "spent": Decimal("9999.9999"), "consent": False, "joined": date(2026, 3, 3),
        "birthday": date(1985, 12, 31), "last_at": START},  # first instant of the as-of day
    3: {"name": "50%_off", "qty": 10, "spent": Decimal("10000.0001"), "joined": date(2026, 3, 2),
        "birthday": date(2000, 1, 1), "last_at": START - US},  # last instant of yesterday
    4: {"name": "Bharat", "qty": -3, "spent": Decimal(0), "consent": True, "joined": date(2026, 3, 17),
        "birthday": date(2000, 2, 29), "last_at": START - 7 * D},  # first instant of day -7
    5: {},  # every field empty
    6: {"name": "Zoë", "qty": 7, "spent": Decimal(10000), "consent": False, "joined": date(2026, 3, 18),
        "birthday": date(1999, 2, 28), "last_at": START - 7 * D - US},  # last instant of day -8
    7: {"name": "50_off", "qty": 1, "spent": Decimal("5.5"), "consent": True, "joined": date(2026, 3, 9),
        "birthday": date(1999, 3, 1), "last_at": CUTOFF},  # first instant of tomorrow
    8: {"last_at": START - 6 * D - US},  # last instant of day -7
    9: {"last_at": START - 6 * D},  # first instant of day -6
    10: {"last_at": START + 7 * D},  # first instant of day +7
    11: {"last_at": START + 8 * D - US},  # last instant of day +7
    12: {"last_at": START + 8 * D},  # first instant of day +8
}
ALL = set(ROWS)

meta = MetaData()
probe_table = Table(
    "rule_probe", meta,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
    Column("qty", Integer),
    Column("spent", Money),
    Column("consent", Boolean),
    Column("joined", Date),
    Column("birthday", Date),
    Column("last_at", UtcDateTime),
)
members_table = Table(
    "rule_probe_members", meta,
    Column("segment", String(64), primary_key=True),
    Column("id", Integer, primary_key=True),
)
MEMBERS = {"vip": {1, 3}, "rfm:champions": {2}}


def member_of(name: str):
    return probe_table.c.id.in_(select(members_table.c.id).where(members_table.c.segment == name))


@pytest.fixture
def match(engine):
    """match(rule, as_of=...) -> the ids of the probe rows the compiled rule selects."""
    meta.create_all(engine)
    columns = [c.name for c in probe_table.c if c.name != "id"]
    with engine.begin() as conn:
        conn.execute(insert(probe_table), [{"id": i, **{c: row.get(c) for c in columns}} for i, row in ROWS.items()])
        conn.execute(insert(members_table), [{"segment": s, "id": i} for s, ids in MEMBERS.items() for i in ids])

    def run(rule: dict, as_of: date = AS_OF, cutoff: datetime = CUTOFF) -> set[int]:
        expr = compile_rule(rule, {c: probe_table.c[c] for c in columns}, FIELDS, as_of=as_of, cutoff=cutoff,
                            dialect=engine.dialect.name, member_of=member_of)
        with engine.connect() as conn:
            return set(conn.scalars(select(probe_table.c.id).where(expr)))

    return run


def check(match, cases, **kwargs) -> None:
    """Run every (rule, expected ids) case; report all mismatches at once."""
    wrong = []
    for rule, expected in cases:
        got = match(rule, **kwargs)
        if got != set(expected):
            wrong.append(f"{rule}: got {sorted(got)}, expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


# --- compiled rules on both databases -------------------------------------------------------


def test_comparisons_bind_values_with_the_column_type(match):
    check(match, [
        # text: exact, case-sensitive, code point order on both databases
        ({"field": "name", "eq": "Asha"}, {1}),
        ({"field": "name", "ne": "Asha"}, {2, 3, 4, 6, 7}),
        ({"field": "name", "lt": "B"}, {1, 3, 7}),
        ({"field": "name", "between": ["A", "Z"]}, {1, 4}),
        ({"field": "name", "in": ["asha", "Zoë"]}, {2, 6}),
        ({"field": "name", "starts_with": "As"}, {1}),
        ({"field": "name", "starts_with": "a"}, {2}),
        ({"field": "name", "starts_with": "50%"}, {3}),  # '%' is literal, not a wildcard
        ({"field": "name", "contains": "_"}, {3, 7}),
        ({"field": "name", "contains": "0_o"}, {7}),
        ({"field": "name", "contains": "ë"}, {6}),
        # SQL in a value is bound as text, so it matches nothing instead of everything
        ({"field": "name", "eq": "x' OR 1=1 --"}, set()),
        ({"field": "name", "in": ["x' OR 1=1 --"]}, set()),
        ({"field": "name", "contains": "' OR '1'='1"}, set()),
        # integer
        ({"field": "qty", "eq": 5}, {1}),
        ({"field": "qty", "lt": 1}, {2, 4}),
        ({"field": "qty", "lte": 1}, {2, 4, 7}),
        ({"field": "qty", "gt": 7}, {3}),
        ({"field": "qty", "gte": 7}, {3, 6}),
        ({"field": "qty", "between": [0, 5]}, {1, 2, 7}),
        ({"field": "qty", "in": [0, 10]}, {2, 3}),
        ({"field": "qty", "is_null": False}, {1, 2, 3, 4, 6, 7}),
        # money: on SQLite stored as 1/10000 units, so an unconverted bind would be off 10,000-fold
        ({"field": "spent", "gte": 10000}, {1, 3, 6}),
        ({"field": "spent", "gt": 9999.9999}, {1, 3, 6}),
        ({"field": "spent", "eq": 10000}, {1, 6}),
        ({"field": "spent", "lt": 10000}, {2, 4, 7}),
        ({"field": "spent", "gte": 9999.99}, {1, 2, 3, 6}),
        ({"field": "spent", "between": [9999.9999, 10000]}, {1, 2, 6}),
        ({"field": "spent", "in": [0, 5.5]}, {4, 7}),
        # boolean
        ({"field": "consent", "eq": True}, {1, 4, 7}),
        ({"field": "consent", "eq": False}, {2, 6}),
        ({"field": "consent", "is_null": True}, ALL - {1, 2, 4, 6, 7}),
        # date, from a YAML date or an ISO string
        ({"field": "joined", "gte": "2026-03-10"}, {1, 4, 6}),
        ({"field": "joined", "eq": date(2026, 3, 3)}, {2}),
        ({"field": "joined", "in": ["2026-03-02", "2026-03-09"]}, {3, 7}),
        # timestamp, from an instant with offset or a date (midnight UTC)
        ({"field": "last_at", "eq": "2026-03-11T00:00:00+05:30"}, {7}),
        ({"field": "last_at", "eq": datetime(2026, 3, 10, 18, 30, tzinfo=UTC)}, {7}),
        ({"field": "last_at", "gte": "2026-03-10T00:00:00+05:30"}, {1, 2, 7, 10, 11, 12}),
        ({"field": "last_at", "lt": "2026-03-09"}, {4, 6, 8, 9}),
    ])


def _day_index(row: dict, field: str) -> int | None:
    """Reference day counts, straight from the definition: days after the as-of day."""
    value = row.get(field)
    if value is None:
        return None
    if field == "last_at":
        return (value - START) // D
    return (value - AS_OF).days


def _holds(op: str, n: int, value: int | None) -> bool:
    if value is None:
        return False
    if op == "between":
        return n - 1 <= value <= n
    return {"eq": value == n, "lt": value < n, "lte": value <= n, "gt": value > n, "gte": value >= n}[op]


def test_day_counts_at_the_exact_day_boundaries(match):
    check(match, [
        # a date: days_ago = as-of minus the date
        ({"field": "joined", "days_ago": {"eq": 7}}, {2}),
        ({"field": "joined", "days_ago": {"lte": 7}}, {1, 2, 4, 6, 7}),
        ({"field": "joined", "days_ago": {"gt": 7}}, {3}),
        ({"field": "joined", "days_until": {"between": [7, 8]}}, {4, 6}),
        ({"field": "joined", "days_until": {"lt": 8}}, {1, 2, 3, 4, 7}),
        # a timestamp counts on the day [START + k days, START + k + 1 days) it falls in
        ({"field": "last_at", "days_ago": {"eq": 0}}, {1, 2}),
        ({"field": "last_at", "days_ago": {"eq": 1}}, {3}),
        ({"field": "last_at", "days_ago": {"eq": 7}}, {4, 8}),
        ({"field": "last_at", "days_ago": {"gt": 7}}, {6}),
        ({"field": "last_at", "days_ago": {"gte": 7}}, {4, 6, 8}),
        ({"field": "last_at", "days_ago": {"lte": 7}}, {1, 2, 3, 4, 7, 8, 9, 10, 11, 12}),
        ({"field": "last_at", "days_until": {"eq": 1}}, {7}),
        ({"field": "last_at", "days_until": {"eq": 7}}, {10, 11}),
        ({"field": "last_at", "days_until": {"gt": 7}}, {12}),
    ])
    # Every comparison around the boundaries, against the definition computed in Python.
    cases = []
    for field in ("joined", "last_at"):
        for kind, sign in (("days_ago", -1), ("days_until", 1)):
            for op in ("eq", "lt", "lte", "gt", "gte", "between"):
                for n in (-1, 0, 1, 7, 8):
                    value = [n - 1, n] if op == "between" else n
                    expected = {i for i, row in ROWS.items()
                                if _holds(op, n, None if _day_index(row, field) is None
                                          else sign * _day_index(row, field))}
                    cases.append(({"field": field, kind: {op: value}}, expected))
    check(match, cases)


def test_anniversaries_across_the_year_end_and_29_february(match):
    # Birthdays: 1 10 Mar, 2 31 Dec, 3 1 Jan, 4 29 Feb, 6 28 Feb, 7 1 Mar.
    check(match, [
        ({"field": "birthday", "anniversary_in_days": {"eq": 0}}, {1}),
        ({"field": "birthday", "anniversary_in_days": {"lte": 366}}, {1, 2, 3, 4, 6, 7}),
    ])
    check(match, [
        ({"field": "birthday", "anniversary_in_days": {"lte": 2}}, {2, 3}),
        ({"field": "birthday", "anniversary_in_days": {"eq": 1}}, {2}),
        ({"field": "birthday", "anniversary_in_days": {"between": [2, 2]}}, {3}),
    ], as_of=date(2026, 12, 30))
    # 2027 has no 29 February: those born on it celebrate on the 28th.
    check(match, [
        ({"field": "birthday", "anniversary_in_days": {"lte": 1}}, {4, 6}),
        ({"field": "birthday", "anniversary_in_days": {"eq": 1}}, {4, 6}),
        ({"field": "birthday", "anniversary_in_days": {"eq": 2}}, {7}),
    ], as_of=date(2027, 2, 27))
    # 2028 has one: 28 February is only for those born on the 28th.
    check(match, [
        ({"field": "birthday", "anniversary_in_days": {"lte": 1}}, {6}),
        ({"field": "birthday", "anniversary_in_days": {"eq": 2}}, {4}),
        ({"field": "birthday", "anniversary_in_days": {"between": [1, 3]}}, {4, 6, 7}),
    ], as_of=date(2028, 2, 27))


def test_null_fields_never_match_and_not_means_not_true(match):
    check(match, [
        ({"field": "consent", "ne": True}, {2, 6}),
        ({"field": "qty", "ne": 5}, {2, 3, 4, 6, 7}),
        ({"field": "qty", "not_in": [5, 0]}, {3, 4, 6, 7}),
        ({"not": {"field": "consent", "eq": True}}, ALL - {1, 4, 7}),
        ({"not": {"field": "qty", "ne": 5}}, ALL - {2, 3, 4, 6, 7}),
        ({"not": {"field": "qty", "not_in": [5, 0]}}, ALL - {3, 4, 6, 7}),
        ({"not": {"not": {"field": "qty", "eq": 5}}}, {1}),
        # row 3: qty 10, consent empty: the inner rule is unknown, so "not" holds
        ({"not": {"all": [{"field": "qty", "gte": 0}, {"field": "consent", "eq": True}]}}, ALL - {1, 7}),
        ({"any": [{"field": "qty", "ne": 5}, {"field": "name", "is_null": True}]}, ALL - {1}),
        ({"all": [{"field": "consent", "eq": True}, {"field": "qty", "gte": 1}]}, {1, 7}),
    ])


def test_in_segment_uses_the_callers_membership(match):
    check(match, [
        ({"in_segment": "vip"}, {1, 3}),
        ({"any": [{"in_segment": "vip"}, {"in_segment": "rfm:champions"}]}, {1, 2, 3}),
        ({"not": {"in_segment": "vip"}}, ALL - {1, 3}),
        ({"all": [{"in_segment": "vip"}, {"field": "qty", "gte": 6}]}, {3}),
    ])


# --- compile_rule without a database --------------------------------------------------------


def _compile(rule: dict, dialect: str = "sqlite"):
    return compile_rule(rule, {c.name: c for c in probe_table.c}, FIELDS, as_of=AS_OF, cutoff=CUTOFF,
                        dialect=dialect, member_of=member_of)


def test_compile_rule_refuses_invalid_rules_and_dialects():
    with pytest.raises(RuleError, match=r"rule\.gte: expected a whole number for field 'qty', got 'ten'"):
        _compile({"field": "qty", "gte": "ten"})
    with pytest.raises(RuleError, match="mysql"):
        _compile({"field": "qty", "gte": 1}, dialect="mysql")
    with pytest.raises(RuleError, match="no column given for field 'qty'"):
        compile_rule({"field": "qty", "gte": 1}, {}, FIELDS, as_of=AS_OF, cutoff=CUTOFF, dialect="sqlite",
                     member_of=member_of)


def test_values_are_bound_parameters_never_sql_text():
    expr = _compile({"field": "name", "eq": "x' OR 1=1 --"}, dialect="postgresql")
    compiled = expr.compile(dialect=postgresql.dialect())
    assert "OR 1=1" not in str(compiled)
    assert "x' OR 1=1 --" in compiled.params.values()


def test_text_order_is_code_point_order_on_postgresql():
    # The test database's collation may already be C; the rule must not depend on it.
    sql = str(_compile({"field": "name", "lt": "B"}, dialect="postgresql").compile(dialect=postgresql.dialect()))
    assert 'COLLATE "C"' in sql


# --- validation -----------------------------------------------------------------------------


def _problems(rule_yaml: str, name: str = "x") -> list[str]:
    text = f"name: {name}\nrule:\n" + "".join(f"  {line}\n" for line in rule_yaml.splitlines())
    definition, problems = parse_definition(text, "segments/x.yaml", FIELDS, BUILTIN)
    assert (definition is None) == bool(problems)
    return [str(p) for p in problems]


@pytest.mark.parametrize("rule, expected", [
    ("all:\n  - {field: qty, gte: 1}\n  - {field: spnt, gte: 1}",
     ("rule.all[1]: unknown field 'spnt' (did you mean 'spent'? fields: birthday, consent, joined, last_at, name,"
      " qty, spent)")),
    ("any: [{field: qty, gte: ten}]", "rule.any[0].gte: expected a whole number for field 'qty', got 'ten'"),
    ("{field: spent, gte: true}", "rule.gte: expected a number for field 'spent', got true"),
    ("{field: spent, gte: 1e20}", "rule.gte: expected a number for field 'spent', got '1e20'"),
    ("{field: spent, gte: 1.0e+20}", "rule.gte: expected a number for field 'spent', got 1e+20"),
    ("{field: name, in: [IN, NO]}", "rule.in[1]: expected text for field 'name', got false (YAML reads"),
    ("{field: name, in: []}", "rule.in: expected a non-empty list of values"),
    ("all: []", "rule.all: expected a non-empty list of rule nodes, got an empty list"),
    ("{field: qty, gt: 1, lt: 5}", "rule: more than one operator (gt, lt) in one condition"),
    ("{field: qty, gtee: 1}", "rule.gtee: unknown operator 'gtee' (did you mean 'gte'?)"),
    ("{field: qty}", "rule: no operator for field 'qty'"),
    ("{field: consent, gt: true}", "rule.gt: operator 'gt' does not apply to boolean field 'consent'"),
    ("{field: qty, starts_with: '1'}", "rule.starts_with: operator 'starts_with' does not apply to integer"),
    ("{field: qty, between: [5, 1]}", "rule.between: low 5 is above high 1, so nothing would match"),
    ("{field: qty, is_null: 'yes'}", "rule.is_null: expected true or false, got 'yes'"),
    ("{field: last_at, gte: '2026-03-01T10:00:00'}", "rule.gte: expected a date or a date-time with offset"),
    ("{field: joined, eq: '2026-02-30'}",
     "rule.eq: expected a date like 2026-03-01 for field 'joined', got '2026-02-30'"),
    ("{field: last_at, days_ago: {lte: x}}", "rule.days_ago.lte: expected a whole number of days, got 'x'"),
    ("{field: last_at, days_ago: {le: 3}}", "rule.days_ago.le: unknown comparison 'le' (did you mean 'lte'?)"),
    ("{field: last_at, anniversary_in_days: {lte: 3}}",
     "rule.anniversary_in_days: operator 'anniversary_in_days' does not apply to timestamp field 'last_at'"),
    ("{field: birthday, anniversary_in_days: {lte: 400}}",
     "rule.anniversary_in_days.lte: expected a number of days from 0 to 366, got 400"),
    ("{field: birthday, anniversary_in_days: {gt: 3}}", "rule.anniversary_in_days.gt: unknown comparison 'gt'"),
    ("{in_segment: 'Not A Name'}", "rule.in_segment: expected a segment name like 'rfm:champions'"),
    ("{all: [], any: []}", "rule: 'all' and 'any' in one node"),
    ("{alll: []}", "rule: unknown key 'alll' (did you mean 'all'?)"),
    ("not: [1]", "rule.not: expected a mapping"),
    ("not: " + "{not: " * 20 + "{field: qty, eq: 1}" + "}" * 20,
     "rule" + ".not" * 20 + ": nesting is deeper than 20 levels"),
])
def test_invalid_rules_name_the_place_and_the_fix(rule, expected):
    problems = _problems(rule)
    assert any(p.startswith(f"segments/x.yaml: {expected}") for p in problems), problems


def test_twenty_levels_are_allowed():
    assert _problems("not: " + "{not: " * 18 + "{field: qty, eq: 1}" + "}" * 18) == []


@pytest.mark.parametrize("text, expected", [
    ("name: a\nrule: {field: qty, eq: 1\n",
     ("segments/x.yaml: invalid YAML at line 3, column 1: expected ',' or '}', but got '<stream end>' (while "
      "parsing a flow mapping at line 2, column 7)")),
    ("name: a\nname: b\nrule: {field: qty, eq: 1}\n",
     "segments/x.yaml: invalid YAML at line 2, column 1: found the key 'name' twice"),
    ("name: a\nrule: {field: joined, eq: 2026-02-30}\n",
     "segments/x.yaml: invalid YAML at line 2, column 27: '2026-02-30' is not a valid date"),
    ("- a\n", "segments/x.yaml: expected a mapping with name, description and rule, got a list"),
    ("", "segments/x.yaml: expected a mapping with name, description and rule, got an empty file"),
    ("name: a\n", "segments/x.yaml: missing 'rule'"),
    ("name: a\ndescripton: b\nrule: {field: qty, eq: 1}\n",
     "segments/x.yaml: descripton: unknown key 'descripton' (did you mean 'description'?)"),
    ("name: rfm:x\nrule: {field: qty, eq: 1}\n", "segments/x.yaml: name: 'rfm:x' contains ':'"),
    ("name: Big\nrule: {field: qty, eq: 1}\n", "segments/x.yaml: name: 'Big' is not a valid name"),
])
def test_invalid_files_are_explained(text, expected):
    definition, problems = parse_definition(text, "segments/x.yaml", FIELDS, BUILTIN)
    assert definition is None
    assert any(str(p).startswith(expected) for p in problems), [str(p) for p in problems]


def test_a_valid_file_parses_with_its_dependencies():
    text = (
        "name: birthday_week_big_spenders\n"
        "description: Spent 10,000 or more and have a birthday in the next 7 days\n"
        "rule:\n"
        "  all:\n"
        "    - {field: consent, eq: true}\n"
        "    - {field: spent, gte: 10000}\n"
        "    - {field: birthday, anniversary_in_days: {lte: 7}}\n"
        "    - any:\n"
        "        - {in_segment: vip}\n"
        "        - {in_segment: \"rfm:champions\"}\n"
        "        - {in_segment: vip}\n"
        "    - not: {field: last_at, days_ago: {gt: 90}}\n"
        "    - {field: joined, gte: 2026-01-01}\n"
        "    - {field: last_at, lt: 2026-03-01T10:00:00+05:30}\n"
    )
    definition, problems = parse_definition(text, "segments/b.yaml", FIELDS, BUILTIN)
    assert problems == []
    assert definition.name == "birthday_week_big_spenders"
    assert definition.depends_on == ("rfm:champions", "vip")
    assert definition.rule["all"][1] == {"field": "spent", "gte": 10000}
    assert definition.source == "segments/b.yaml"
    # YAML dates become ISO text, so the rule can be stored as JSON and still compiles the same.
    assert json.loads(json.dumps(definition.rule)) == definition.rule
    assert definition.rule["all"][-1] == {"field": "last_at", "lt": "2026-03-01T10:00:00+05:30"}
    _compile(definition.rule)


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _segment(name: str, rule: str = "{field: qty, gte: 1}") -> str:
    return f"name: {name}\ndescription: test\nrule: {rule}\n"


def test_load_definitions_orders_by_dependency_and_reports_every_problem(tmp_path):
    folder = _write(tmp_path / "segments", {
        "a_uses_zeta.yaml": _segment("uses_zeta", "{all: [{in_segment: zeta}, {in_segment: 'value:high_value'}]}"),
        "zeta.yml": _segment("zeta"),
        "b_typo.yaml": _segment("typo", "{all: [{field: qty, gte: 1}, {field: spnt, gte: 1}]}"),
        "zz_dup.yaml": _segment("zeta"),
        "d_cycle1.yaml": _segment("cycle_a", "{in_segment: cycle_b}"),
        "e_cycle2.yaml": _segment("cycle_b", "{any: [{field: qty, eq: 1}, {in_segment: cycle_a}]}"),
        "f_self.yaml": _segment("selfish", "{not: {in_segment: selfish}}"),
        "g_on_cycle.yaml": _segment("on_cycle", "{in_segment: cycle_a}"),
        "h_on_typo.yaml": _segment("on_typo", "{in_segment: typo}"),
        "i_on_on_typo.yaml": _segment("on_on_typo", "{in_segment: on_typo}"),
        "j_unknown.yaml": _segment("unknown_refs", "{any: [{in_segment: zetta}, {in_segment: 'rfm:champion'}]}"),
        "k_bad.yaml": "name: [oops\n",
        "notes.txt": "not a segment",
    })
    definitions, problems = load_definitions(folder, FIELDS, BUILTIN)
    assert [d.name for d in definitions] == ["zeta", "uses_zeta"]
    assert definitions[1].depends_on == ("value:high_value", "zeta")
    assert all(isinstance(p, DefinitionProblem) for p in problems)
    text = [str(p) for p in problems]
    expected = [
        "segments/b_typo.yaml: rule.all[1]: unknown field 'spnt' (did you mean 'spent'? fields: ",
        "segments/d_cycle1.yaml: rule.in_segment: in_segment cycle cycle_a -> cycle_b -> cycle_a: ",
        "segments/e_cycle2.yaml: rule.any[1].in_segment: in_segment cycle cycle_b -> cycle_a -> cycle_b: ",
        "segments/f_self.yaml: rule.not.in_segment: in_segment cycle selfish -> selfish: ",
        "segments/g_on_cycle.yaml: rule.in_segment: depends on invalid segment 'cycle_a' (segments/d_cycle1.yaml)",
        "segments/h_on_typo.yaml: rule.in_segment: depends on invalid segment 'typo' (segments/b_typo.yaml)",
        "segments/i_on_on_typo.yaml: rule.in_segment: depends on invalid segment 'on_typo'",
        ("segments/j_unknown.yaml: rule.any[0].in_segment: unknown segment 'zetta' (did you mean 'zeta'?); custom"
         " segments: "),
        ("segments/j_unknown.yaml: rule.any[1].in_segment: unknown segment 'rfm:champion' (did you mean"
         " 'rfm:champions'?); built-in segments: lifecycle:at_risk, rfm:champions, value:high_value"),
        "segments/k_bad.yaml: invalid YAML at line 2",
        "segments/zz_dup.yaml: name: 'zeta' is already the name of segments/zeta.yml; give each segment its own name",
    ]
    assert len(text) == len(expected), text
    for line, start in zip(text, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert {p.name for p in problems if p.source == "segments/d_cycle1.yaml"} == {"cycle_a"}
    assert next(p for p in problems if p.source == "segments/k_bad.yaml").name is None


def test_load_definitions_without_a_folder_has_no_segments(tmp_path):
    assert load_definitions(tmp_path / "missing", FIELDS, BUILTIN) == ([], [])


def test_load_definitions_labels_sources_and_refuses_builtin_names(tmp_path):
    folder = _write(tmp_path / "custom", {"vip.yaml": _segment("vip"), "clash.yaml": _segment("x")})
    definitions, problems = load_definitions(folder, FIELDS, BUILTIN | {"x"}, label="conf/segments")
    assert [d.source for d in definitions] == ["conf/segments/vip.yaml"]
    assert [str(p) for p in problems] == [
        "conf/segments/clash.yaml: name: 'x' is the name of a built-in segment; choose another"]


def test_describe_fields_is_a_markdown_table():
    table = describe_fields({"a": FieldInfo("a", "money", "Net | gross"), "b": FieldInfo("b", "date", "Day")})
    assert table.splitlines() == [
        "| field | type | description |",
        "|---|---|---|",
        "| `a` | money | Net \\| gross |",
        "| `b` | date | Day |",
    ]
