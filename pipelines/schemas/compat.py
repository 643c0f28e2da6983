"""Classify a JSON Schema change as compatible or breaking (CONTRACT section 2).

Compatible means every payload valid under the old schema is still valid under
the new one, so producers on the old version keep working. A breaking change
is acceptable only in a new major version file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_VERSION_NAME = re.compile(r"^v(\d+)$")
# JSON Schema: every integer is a number, so integer -> number only widens.
_WIDENS = {("integer", "number")}
# keyword -> True when a bigger value accepts more payloads (a lower bound is lowered to widen)
_BOUNDS = {
    "minimum": False,
    "exclusiveMinimum": False,
    "minLength": False,
    "minItems": False,
    "maximum": True,
    "exclusiveMaximum": True,
    "maxLength": True,
    "maxItems": True,
}
_DOCS = ("title", "description", "$comment", "examples")


@dataclass
class Finding:
    """One difference between two schemas."""

    kind: str
    field: str
    breaking: bool
    reason: str


@dataclass
class CompatReport:
    """All findings of one schema change and whether the change is allowed."""

    old: str
    new: str
    findings: list[Finding] = field(default_factory=list)
    new_major: bool = False

    @property
    def breaking(self) -> bool:
        return any(f.breaking for f in self.findings)

    @property
    def ok(self) -> bool:
        """Allowed: compatible, or breaking in a new major version."""
        return not self.breaking or self.new_major

    @property
    def kinds(self) -> list[str]:
        return [f.kind for f in self.findings]

    def summary(self) -> str:
        if not self.breaking:
            verdict = "compatible"
        elif self.new_major:
            verdict = "breaking, in a new major version: allowed"
        else:
            verdict = "BREAKING without a new major version: not allowed"
        lines = [f"{self.old} -> {self.new}: {verdict}"]
        for f in self.findings:
            mark = "BREAKING" if f.breaking else "ok"
            lines.append(f"  [{mark}] {f.kind} {f.field}: {f.reason}")
        if not self.findings:
            lines.append("  no differences")
        return "\n".join(lines)


def _types(prop: dict[str, Any]) -> frozenset[str]:
    kind = prop.get("type")
    if kind is None:
        return frozenset()  # any type
    return frozenset([kind] if isinstance(kind, str) else kind)


def _type_name(prop: dict[str, Any]) -> str:
    return "|".join(sorted(_types(prop))) or "any"


def _accepts(types: frozenset[str], kind: str) -> bool:
    return not types or kind in types or any((kind, t) in _WIDENS for t in types)


def _compare_types(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    before, after = _types(old), _types(new)
    if before == after:
        return
    change = f"{_type_name(old)} -> {_type_name(new)}"
    if not after or (before and all(_accepts(after, b) for b in before)):
        out.append(Finding("type_widened", path, False, change))
    elif not before or all(_accepts(before, a) for a in after):
        out.append(Finding("type_narrowed", path, True, change))
    else:
        out.append(Finding("type_changed", path, True, change))


def _compare_enum(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    before, after = old.get("enum"), new.get("enum")
    if before == after:
        return
    if after is None:
        out.append(Finding("enum_widened", path, False, "enum restriction removed"))
        return
    if before is None:
        out.append(Finding("enum_narrowed", path, True, f"now restricted to {after}"))
        return
    removed = [v for v in before if v not in after]
    added = [v for v in after if v not in before]
    if removed:
        out.append(Finding("enum_narrowed", path, True, f"values removed: {removed}"))
    if added:
        out.append(Finding("enum_widened", path, False, f"values added: {added}"))


def _compare_const(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    if "const" not in old and "const" not in new:
        return
    if "const" not in new:
        out.append(Finding("const_removed", path, False, f"was {old['const']!r}"))
    elif old.get("const", object()) != new["const"]:
        was = repr(old["const"]) if "const" in old else "any value"
        out.append(Finding("const_changed", path, True, f"{was} -> {new['const']!r}"))


def _compare_bounds(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    for key, bigger_widens in _BOUNDS.items():
        before, after = old.get(key), new.get(key)
        if before == after or isinstance(before, bool) or isinstance(after, bool):
            continue
        if after is None:
            widened = True
        elif before is None:
            widened = False
        else:
            widened = (after > before) == bigger_widens
        kind = "bound_widened" if widened else "bound_narrowed"
        out.append(Finding(kind, path, not widened, f"{key}: {before} -> {after}"))


def _compare_strings(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    for key in ("format", "pattern"):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if after is None:
            out.append(Finding(f"{key}_removed", path, False, f"was {before!r}"))
        elif before is None:
            out.append(Finding(f"{key}_added", path, True, f"now {after!r}"))
        else:
            out.append(Finding(f"{key}_changed", path, True, f"{before!r} -> {after!r}"))


def _compare_docs(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    changed = [k for k in _DOCS if old.get(k) != new.get(k)]
    if changed:
        out.append(Finding("description_changed", path, False, f"changed: {', '.join(changed)}"))


def _compare_node(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    """Compare two schema nodes (a property, or an object's root)."""
    _compare_docs(old, new, path, out)
    _compare_types(old, new, path, out)
    _compare_enum(old, new, path, out)
    _compare_const(old, new, path, out)
    _compare_bounds(old, new, path, out)
    _compare_strings(old, new, path, out)
    if "properties" in old or "properties" in new:
        _compare_object(old, new, path, out)
    if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
        _compare_node(old["items"], new["items"], f"{path}[]", out)


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _compare_object(old: dict, new: dict, path: str, out: list[Finding]) -> None:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    removed = [n for n in old_props if n not in new_props]
    added = [n for n in new_props if n not in old_props]

    # A removed and an added field of the same type read as a rename.
    for name in list(removed):
        twin = next((a for a in added if _types(new_props[a]) == _types(old_props[name])), None)
        if twin is not None:
            removed.remove(name)
            added.remove(twin)
            out.append(Finding("field_renamed", _child(path, name), True, f"renamed to {twin!r}?"))
    out.extend(
        Finding("field_removed", _child(path, n), True, f"{_type_name(old_props[n])} removed")
        for n in removed
    )
    for name in added:
        if name in new_req:
            out.append(Finding("new_required_field", _child(path, name), True, "required"))
        else:
            out.append(Finding("optional_field_added", _child(path, name), False, "optional"))

    for name, before in old_props.items():
        if name not in new_props:
            continue
        where = _child(path, name)
        if name in new_req and name not in old_req:
            out.append(Finding("field_made_required", where, True, "was optional"))
        elif name in old_req and name not in new_req:
            out.append(Finding("field_made_optional", where, False, "was required"))
        _compare_node(before, new_props[name], where, out)

    if old.get("additionalProperties", True) is not False and (
        new.get("additionalProperties", True) is False
    ):
        out.append(
            Finding("additional_properties_disallowed", path or "$", True, "unknown fields refused")
        )
    elif old.get("additionalProperties", True) is False and (
        new.get("additionalProperties", True) is not False
    ):
        out.append(Finding("additional_properties_allowed", path or "$", False, "now accepted"))


def schema_version(schema: dict[str, Any]) -> int | None:
    """The `schemaVersion` const of a schema, when it has one."""
    const = schema.get("properties", {}).get("schemaVersion", {}).get("const")
    return const if isinstance(const, int) and not isinstance(const, bool) else None


def compare(
    old: dict[str, Any],
    new: dict[str, Any],
    old_name: str = "old",
    new_name: str = "new",
    old_version: int | None = None,
    new_version: int | None = None,
) -> CompatReport:
    """Every difference between two schemas, each marked breaking or compatible.

    Versions come from the arguments, else the `schemaVersion` const, else 1
    (a payload without `schemaVersion` is version 1).
    """
    findings: list[Finding] = []
    _compare_node(old, new, "", findings)
    for f in findings:
        f.field = f.field or "$"
    before = old_version or schema_version(old) or 1
    after = new_version or schema_version(new) or 1
    return CompatReport(old_name, new_name, findings, new_major=after > before)


def _file_version(path: Path, schema: dict[str, Any]) -> int | None:
    m = _VERSION_NAME.match(path.stem)
    return schema_version(schema) or (int(m.group(1)) if m else None)


def check_files(old_path: str | Path, new_path: str | Path) -> CompatReport:
    """Compare two schema files; versions from `schemaVersion` or the `vN.json` name."""
    old_path, new_path = Path(old_path), Path(new_path)
    old, new = (json.loads(p.read_text()) for p in (old_path, new_path))
    return compare(
        old,
        new,
        old_name=str(old_path),
        new_name=str(new_path),
        old_version=_file_version(old_path, old),
        new_version=_file_version(new_path, new),
    )


def check_all(schema_dir: str | Path) -> list[CompatReport]:
    """Reports for every pair of consecutive versions of every event type."""
    reports = []
    for folder in sorted(p for p in Path(schema_dir).iterdir() if p.is_dir()):
        files = sorted(
            (int(m.group(1)), p)
            for p in folder.glob("v*.json")
            if (m := _VERSION_NAME.match(p.stem))
        )
        for (_, old), (_, new) in zip(files, files[1:], strict=False):
            reports.append(check_files(old, new))
    return reports
