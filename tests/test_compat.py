"""The schema compatibility checker on inline schema pairs and on schemas/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.schemas.compat import check_all, check_files, compare
from pipelines.schemas.registry import SCHEMA_DIR


def obj(props: dict, required: tuple[str, ...] = (), **extra: object) -> dict:
    return {"type": "object", "properties": props, "required": list(required), **extra}


STR = {"type": "string"}
BASE = obj(
    {
        "id": STR,
        "kind": {"type": "string", "enum": ["a", "b"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "note": STR,
        "at": {"type": "string", "format": "date-time"},
        "amount": {"type": "number"},
    },
    ("id", "kind"),
)


def changed(**props: object) -> dict:
    new = json.loads(json.dumps(BASE))
    for name, prop in props.items():
        if prop is None:
            del new["properties"][name]
        else:
            new["properties"][name] = prop
    return new


def with_required(schema: dict, *names: str) -> dict:
    return {**schema, "required": list(names)}


BREAKING = [
    ("field_removed", changed(note=None)),
    ("field_renamed", changed(amount=None, total={"type": "number"})),
    ("type_changed", changed(note={"type": "integer"})),
    ("type_narrowed", changed(amount={"type": "integer"})),
    ("enum_narrowed", changed(kind={"type": "string", "enum": ["a"]})),
    ("field_made_required", with_required(BASE, "id", "kind", "note")),
    ("new_required_field", with_required(changed(extra=STR), "id", "kind", "extra")),
    ("bound_narrowed", changed(n={"type": "integer", "minimum": 1, "maximum": 10})),
    ("additional_properties_disallowed", {**BASE, "additionalProperties": False}),
    ("format_added", changed(note={"type": "string", "format": "email"})),
    ("const_changed", changed(id={"type": "string", "const": "x"})),
]

COMPATIBLE = [
    ("optional_field_added", changed(extra=STR)),
    ("enum_widened", changed(kind={"type": "string", "enum": ["a", "b", "c"]})),
    ("field_made_optional", with_required(BASE, "id")),
    ("bound_widened", changed(n={"type": "integer", "minimum": 0, "maximum": 100})),
    ("description_changed", {**BASE, "description": "now documented"}),
    ("type_widened", changed(n={"type": "number", "minimum": 0, "maximum": 10})),
]


@pytest.mark.parametrize(("kind", "new"), BREAKING, ids=[k for k, _ in BREAKING])
def test_breaking_changes_are_flagged(kind: str, new: dict) -> None:
    report = compare(BASE, new)
    assert report.kinds == [kind]
    assert report.breaking and not report.ok
    assert "BREAKING without a new major version" in report.summary()


@pytest.mark.parametrize(("kind", "new"), COMPATIBLE, ids=[k for k, _ in COMPATIBLE])
def test_compatible_changes_pass(kind: str, new: dict) -> None:
    report = compare(BASE, new)
    assert report.kinds == [kind]
    assert not report.breaking and report.ok


def test_finding_names_field_and_reason() -> None:
    report = compare(BASE, changed(kind={"type": "string", "enum": ["b", "c"]}))
    assert [(f.kind, f.field, f.breaking, f.reason) for f in report.findings] == [
        ("enum_narrowed", "kind", True, "values removed: ['a']"),
        ("enum_widened", "kind", False, "values added: ['c']"),
    ]


def test_nested_objects_are_compared_by_path() -> None:
    old = obj({"device": obj({"os": STR, "model": STR}, ("os",))})
    new = obj({"device": obj({"os": {"type": "integer"}}, ("os", "app"))})
    new["properties"]["device"]["properties"]["app"] = STR
    report = compare(old, new)
    assert [(f.kind, f.field) for f in report.findings] == [
        ("field_renamed", "device.model"),
        ("type_changed", "device.os"),
    ]


def test_breaking_change_is_ok_in_a_new_major_version() -> None:
    old = {**BASE, "properties": {**BASE["properties"], "schemaVersion": {"const": 1}}}
    new = changed(note=None)
    new["properties"]["schemaVersion"] = {"const": 2}
    report = compare(old, new)
    assert report.kinds == ["field_removed", "const_changed"]
    assert report.breaking and report.new_major and report.ok
    assert compare(BASE, changed(note=None), old_version=3, new_version=4).ok
    assert not compare(BASE, changed(note=None), old_version=4, new_version=4).ok


def test_identical_schemas_have_no_findings() -> None:
    report = compare(BASE, json.loads(json.dumps(BASE)))
    assert report.findings == [] and report.ok
    assert report.summary().endswith("no differences")


def test_user_action_v1_to_v2_is_breaking_but_a_new_major() -> None:
    report = check_files(SCHEMA_DIR / "user_action/v1.json", SCHEMA_DIR / "user_action/v2.json")
    assert sorted(report.kinds) == sorted(
        ["description_changed", "new_required_field", "new_required_field",
         "optional_field_added", "optional_field_added", "optional_field_added", "enum_widened"]
    )  # fmt: skip
    assert report.breaking and report.new_major and report.ok


def test_check_files_takes_the_version_from_the_file_name(tmp_path: Path) -> None:
    for name, schema in (("v1.json", BASE), ("v2.json", changed(note=None))):
        (tmp_path / name).write_text(json.dumps(schema))
    (tmp_path / "draft.json").write_text(json.dumps(changed(note=None)))
    assert check_files(tmp_path / "v1.json", tmp_path / "v2.json").ok
    assert not check_files(tmp_path / "v1.json", tmp_path / "draft.json").ok


def test_check_all_over_schemas_dir_is_ok() -> None:
    reports = check_all(SCHEMA_DIR)
    assert [(Path(r.old).parent.name, Path(r.old).name, Path(r.new).name) for r in reports] == [
        ("user_action", "v1.json", "v2.json")
    ]
    assert all(r.ok for r in reports)


def test_a_breaking_edit_in_place_is_not_ok(tmp_path: Path) -> None:
    """`lakehouse schemas check` of a file against its previous committed self."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "v1.json").write_text(json.dumps(BASE))
    (tmp_path / "new" / "v1.json").write_text(json.dumps(changed(n={"type": "string"})))
    report = check_files(tmp_path / "old" / "v1.json", tmp_path / "new" / "v1.json")
    assert report.kinds == ["type_changed", "bound_widened", "bound_widened"]
    assert not report.ok


def test_check_all_trusts_the_declared_schema_version(tmp_path: Path) -> None:
    folder = tmp_path / "thing"
    folder.mkdir()
    version_one = {"type": "integer", "const": 1}
    (folder / "v1.json").write_text(json.dumps(changed(schemaVersion=version_one)))
    # v2.json copied from v1 and edited, but still declaring schemaVersion 1
    bad = changed(kind={"type": "string", "enum": ["a"]}, schemaVersion=version_one)
    (folder / "v2.json").write_text(json.dumps(bad))
    (report,) = check_all(tmp_path)
    assert report.kinds == ["enum_narrowed"] and not report.ok
