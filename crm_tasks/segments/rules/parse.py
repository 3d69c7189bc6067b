"""Segment files read: one YAML file parsed strictly (unique keys, checked timestamps), its
name and rule validated, and a folder of them loaded in dependency order with cycles refused."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from crm_tasks.segments.rules.check import check_rule
from crm_tasks.segments.rules.tree import (
    _TOP_KEYS,
    NAME_RE,
    DefinitionProblem,
    FieldInfo,
    SegmentDefinition,
    _listing,
    _show,
    _suggest,
)

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
        tree, checker = check_rule(doc["rule"], fields)
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
    order, parsed, owner, problems = _read_folder(Path(folder), fields, builtin, label)

    def fail(name: str, path: str, message: str) -> None:
        source = parsed[name].definition.source
        problems[source].append(DefinitionProblem(source, name, path, message))

    graph = {name: tuple(d for d in p.definition.depends_on if d in owner) for name, p in parsed.items()}
    invalid = {name for name in owner if name not in parsed}
    invalid |= _bad_references(parsed, owner, graph, builtin, fail)
    _spread_invalidity(parsed, owner, graph, invalid, fail)
    valid = [n for n in parsed if n not in invalid]  # file order: parsed was filled in it
    return _dependency_order(valid, graph, parsed), [p for source in order for p in problems[source]]


def _read_folder(folder: Path, fields: Mapping[str, FieldInfo], builtin: set[str], label: str):
    """Every file parsed on its own. Returns the sources in order, the parsed definitions by name
    (the first file in sorted order that claims a name), each name's owning source, and each
    source's problems."""
    problems: dict[str, list[DefinitionProblem]] = {}
    parsed: dict[str, _Parsed] = {}
    owner: dict[str, str] = {}
    order: list[str] = []
    for path in _segment_files(folder):
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
    return order, parsed, owner, problems


def _bad_references(parsed: dict[str, _Parsed], owner: dict[str, str], graph: Mapping[str, tuple[str, ...]],
                    builtin: set[str], fail: Callable[[str, str, str], None]) -> set[str]:
    """The segments that name an unknown segment or sit on an in_segment cycle, each problem reported."""
    invalid = set()
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
    return invalid


def _spread_invalidity(parsed: dict[str, _Parsed], owner: dict[str, str], graph: Mapping[str, tuple[str, ...]],
                       invalid: set[str], fail: Callable[[str, str, str], None]) -> None:
    """Invalidity spreads to every segment built on an invalid one, however indirectly."""
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


