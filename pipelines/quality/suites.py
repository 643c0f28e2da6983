"""Quality suites as data: `conf/quality.yaml` -> rules -> Great Expectations suites.

The file maps `<layer>.<table>` to a list of rules. A rule names a GX expectation
without its `expect_` prefix (`column_values_to_not_be_null` is
`gx.expectations.ExpectColumnValuesToNotBeNull`), an optional `severity`
(`critical`, `warning` - the default - or `info`: GX's own levels) and otherwise the
expectation's own arguments. Any argument may be a *reference*, resolved here so that
no enum or threshold is retyped from its source:

- `{schema: <event_type>.<wireField>, keyword: enum}`: a keyword (default `enum`) of
  a field of the latest JSON Schema in `schemas/`;
- `{setting: <section>.<key>}`: a value of the typed settings;
- `{constant: pipelines.<module>.<NAME>}`: a constant of this code base;

each optionally with `plus: [...]` (more values appended to the list it resolves to).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import great_expectations as gx
import yaml
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.metadata_types import FailureSeverity

from pipelines.schemas.registry import latest_version, load_schema
from pipelines.settings import Settings

DEFAULT_SEVERITY = FailureSeverity.WARNING.value
SEVERITIES = tuple(s.value for s in FailureSeverity)
_REFERENCE_KEYS = frozenset({"schema", "setting", "constant"})
_CONSTANT_PACKAGE = "pipelines."


class SuiteError(ValueError):
    """A quality suite that cannot be built; the message names the table and the rule."""


@dataclass(frozen=True)
class Rule:
    """One expectation on one table, its arguments resolved to plain values."""

    table: str  # "<layer>.<table>"
    expectation: str  # GX type name, e.g. "expect_column_values_to_not_be_null"
    kwargs: Mapping[str, Any]
    severity: str

    @property
    def kwargs_json(self) -> str:
        return json.dumps(dict(self.kwargs), sort_keys=True, default=str)

    def build(self, meta: dict[str, Any] | None = None) -> Expectation:
        """A fresh GX expectation (one belongs to at most one suite)."""
        cls = expectation_class(self.expectation)
        return cls(**self.kwargs, severity=FailureSeverity(self.severity), meta=meta)


@cache
def _expectation_classes() -> dict[str, type[Expectation]]:
    # Keyed case-insensitively: CamelCase of a snake name cannot know that GX spells
    # e.g. ExpectColumnKLDivergenceToBeLessThan with a capital L.
    found = {}
    for attr in dir(gx.expectations):
        cls = getattr(gx.expectations, attr)
        if isinstance(cls, type) and issubclass(cls, Expectation) and attr.startswith("Expect"):
            found[attr.lower()] = cls
    return found


def expectation_class(name: str) -> type[Expectation]:
    """`column_values_to_be_unique` (or `expect_column_values_to_be_unique`) ->
    gx.expectations.ExpectColumnValuesToBeUnique."""
    snake = "expect_" + name.removeprefix("expect_")
    cls = _expectation_classes().get(snake.replace("_", ""))
    if cls is None:
        raise SuiteError(f"unknown expectation {name!r} (no gx.expectations class for {snake})")
    return cls


def _schema_ref(spec: Mapping[str, Any], settings: Settings) -> Any:
    target, keyword = str(spec["schema"]), str(spec.get("keyword", "enum"))
    event_type, _, field = target.partition(".")
    try:
        schema = load_schema(event_type, latest_version(event_type))
    except ValueError as exc:
        raise SuiteError(f"schema reference {target!r}: {exc}") from exc
    prop = schema.get("properties", {}).get(field)
    if prop is None or keyword not in prop:
        raise SuiteError(f"schema reference {target!r}: no {keyword!r} for that field")
    return prop[keyword]


def _setting_ref(spec: Mapping[str, Any], settings: Settings) -> Any:
    node: Any = settings
    for part in str(spec["setting"]).split("."):
        node = node[part] if isinstance(node, Mapping) else getattr(node, part, None)
        if node is None:
            raise SuiteError(f"setting reference {spec['setting']!r}: no such setting")
    return node


def _constant_ref(spec: Mapping[str, Any], settings: Settings) -> Any:
    target = str(spec["constant"])
    module, _, attr = target.rpartition(".")
    # Only this code base: a conf file must not be a way to import arbitrary modules.
    if not module.startswith(_CONSTANT_PACKAGE):
        raise SuiteError(f"constant reference {target!r}: must be under {_CONSTANT_PACKAGE}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SuiteError(f"constant reference {target!r}: {exc}") from exc


_RESOLVERS = {"schema": _schema_ref, "setting": _setting_ref, "constant": _constant_ref}


def resolve(value: Any, settings: Settings) -> Any:
    """An argument with every reference replaced by its value (tuples become lists,
    as JSON and GX expect)."""
    if isinstance(value, list | tuple):
        return [resolve(v, settings) for v in value]
    if not isinstance(value, Mapping):
        return value
    kinds = _REFERENCE_KEYS & value.keys()
    if not kinds:
        return {k: resolve(v, settings) for k, v in value.items()}
    if len(kinds) > 1:
        raise SuiteError(f"reference {dict(value)!r}: name only one of {sorted(kinds)}")
    kind = next(iter(kinds))
    allowed = {kind, "plus"} | ({"keyword"} if kind == "schema" else set())
    if extra := set(value) - allowed:
        raise SuiteError(f"reference {dict(value)!r}: unexpected keys {sorted(extra)}")
    resolved = resolve(_RESOLVERS[kind](value, settings), settings)
    if "plus" in value:
        if not isinstance(resolved, list):
            raise SuiteError(f"reference {dict(value)!r}: `plus` needs a list to extend")
        resolved = resolved + resolve(value["plus"], settings)
    return resolved


def _parse_rule(table: str, raw: Any, settings: Settings) -> Rule:
    if not isinstance(raw, Mapping) or "expect" not in raw:
        raise SuiteError(f"{table}: a rule must be a mapping with `expect`, got {raw!r}")
    args = dict(raw)
    name = str(args.pop("expect"))
    severity = str(args.pop("severity", DEFAULT_SEVERITY))
    if severity not in SEVERITIES:
        raise SuiteError(f"{table}: {name}: severity {severity!r} is not one of {SEVERITIES}")
    cls = expectation_class(name)
    rule = Rule(table, "expect_" + name.removeprefix("expect_"), resolve(args, settings), severity)
    try:
        rule.build()  # GX validates the arguments now, not in the middle of a run
    except Exception as exc:  # pydantic's errors are not all ValueErrors
        message = " ".join(str(exc).split())
        raise SuiteError(f"{table}: {name}: bad arguments for {cls.__name__}: {message}") from exc
    return rule


def parse_suites(tree: Mapping[str, Any], settings: Settings) -> dict[str, list[Rule]]:
    """The parsed YAML document -> rules per `<layer>.<table>`, in file order."""
    suites: dict[str, list[Rule]] = {}
    for table, raw_rules in tree.items():
        layer, dot, name = str(table).partition(".")
        if not (layer and dot and name) or "." in name:
            raise SuiteError(f"suite key {table!r}: expected <layer>.<table>")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise SuiteError(f"{table}: expected a non-empty list of rules")
        rules = [_parse_rule(str(table), raw, settings) for raw in raw_rules]
        # GX silently keeps one of two equal expectations in a suite: refuse them here.
        seen: set[tuple[str, str]] = set()
        for rule in rules:
            key = (rule.expectation, rule.kwargs_json)
            if key in seen:
                raise SuiteError(f"{table}: duplicate rule {rule.expectation} {rule.kwargs_json}")
            seen.add(key)
        suites[str(table)] = rules
    return suites


def load_suites(settings: Settings, path: str | Path | None = None) -> dict[str, list[Rule]]:
    """Read and resolve the suites file (by default `quality.suites` of the settings)."""
    path = Path(path or settings.quality.suites)
    if not path.is_file():
        raise FileNotFoundError(f"quality suites file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(tree, Mapping):
        raise SuiteError(f"{path}: expected a mapping of <layer>.<table> to rules")
    return parse_suites(tree, settings)


def build_suite(table: str, rules: list[Rule]) -> gx.ExpectationSuite:
    """A GX suite of `rules`; each expectation's meta carries its rule index, because
    GX does not return results in suite order."""
    suite = gx.ExpectationSuite(name=table)
    for index, rule in enumerate(rules):
        suite.add_expectation(rule.build(meta={"rule": index}))
    return suite
