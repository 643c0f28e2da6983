"""The event contracts in `schemas/`: loading, Spark types, validation and upcasting.

`schemas/<event_type>/v<N>.json` (JSON Schema draft-07) is the single source;
Spark `StructType`s are derived from it and the `.avsc` files are tested
against it.
"""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema  # generated-code validator, ~10x faster than jsonschema
import jsonschema
from pyspark.sql import types as T

from pipelines.settings import PROJECT_ROOT

SCHEMA_DIR = PROJECT_ROOT / "schemas"

# Fixed forever: changing it would change the id of every v1 event already in silver.
V1_EVENT_ID_NAMESPACE = uuid.UUID("6f1c2b8e-3d4a-5e9f-8a7b-0c1d2e3f4a5b")

# Upcast v1 user actions carry a device no v2 producer may send, so they stay recognisable.
UNKNOWN_DEVICE = "unknown"

ERROR_CODES = ("invalid_json", "schema_violation", "unknown_version", "oversize")

_VERSION_FILE = re.compile(r"^v(\d+)\.json$")
# RFC 3339 date-time (JSON Schema's `date-time`): a time zone is mandatory.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def parse_date_time(value: str) -> datetime | None:
    """An RFC 3339 date-time as an aware datetime, or None when it is not one."""
    if not _RFC3339.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.upper())
        # Year 1 just after midnight east of UTC, or 9999 just before it west of
        # UTC, has no UTC time in Python's range.
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # also month 13, hour 25, leap second
        return None
    return parsed


# A valid date-time already in UTC with `Z` and at most microseconds: normalised by
# padding the fraction, without parsing it again.
_UTC_Z = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?Z$")


def _normalize_valid(value: str) -> str:
    """`normalize_timestamp` of a value the schema check has already accepted."""
    match = _UTC_Z.match(value)
    if match is None:
        return normalize_timestamp(value)
    return f"{match[1]}.{(match[2] or '').ljust(6, '0')}Z"


def is_date_time(value: object) -> bool:
    """Format check for `date-time`; non-strings pass (the `type` keyword catches them)."""
    return not isinstance(value, str) or parse_date_time(value) is not None


def normalize_timestamp(value: str) -> str:
    """A valid date-time as UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the form Spark parses."""
    dt = parse_date_time(value)
    if dt is None:
        raise ValueError(f"{value!r} is not a date-time")
    d = dt.astimezone(UTC)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{d.microsecond:06d}Z"
    )


# ---------------------------------------------------------------- loading


@cache
def event_types() -> list[str]:
    """Event types that have at least one schema version, sorted."""
    return sorted(p.name for p in SCHEMA_DIR.iterdir() if p.is_dir() and _versions_of(p))


def _versions_of(folder: Path) -> list[int]:
    found = (_VERSION_FILE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def _check_type(event_type: str) -> Path:
    folder = SCHEMA_DIR / event_type
    if event_type not in event_types():
        raise ValueError(f"unknown event type {event_type!r}; known: {event_types()}")
    return folder


@cache
def _versions(event_type: str) -> tuple[int, ...]:
    return tuple(_versions_of(_check_type(event_type)))


def versions(event_type: str) -> list[int]:
    """Schema versions of an event type, ascending."""
    return list(_versions(event_type))


def latest_version(event_type: str) -> int:
    return _versions(event_type)[-1]


def _path(event_type: str, version: int, suffix: str) -> Path:
    if version not in _versions(event_type):
        raise ValueError(
            f"{event_type} has no version {version}; known: {list(_versions(event_type))}"
        )
    return SCHEMA_DIR / event_type / f"v{version}{suffix}"


@cache
def _json_schema(event_type: str, version: int) -> dict[str, Any]:
    return json.loads(_path(event_type, version, ".json").read_text())


def load_schema(event_type: str, version: int) -> dict[str, Any]:
    """The JSON Schema of one version (a copy: callers may mutate it)."""
    return copy.deepcopy(_json_schema(event_type, version))


def load_avro(event_type: str, version: int) -> dict[str, Any]:
    """The Avro schema (`.avsc`) kept in step with the JSON Schema of one version."""
    return json.loads(_path(event_type, version, ".avsc").read_text())


# ---------------------------------------------------------------- Spark


def _spark_type(prop: dict[str, Any], where: str) -> T.DataType:
    kind = prop.get("type")
    if kind == "string":
        return T.TimestampType() if prop.get("format") == "date-time" else T.StringType()
    if kind == "integer":
        return T.LongType()
    if kind == "number":
        return T.DoubleType()
    if kind == "boolean":
        return T.BooleanType()
    if kind == "object":
        return _struct(prop, where)
    if kind == "array":
        return T.ArrayType(_spark_type(prop.get("items", {}), f"{where}[]"), True)
    raise ValueError(f"{where}: JSON Schema type {kind!r} has no Spark mapping")


def _struct(schema: dict[str, Any], where: str) -> T.StructType:
    required = set(schema.get("required", []))
    return T.StructType(
        [
            T.StructField(name, _spark_type(prop, f"{where}.{name}"), name not in required)
            for name, prop in schema.get("properties", {}).items()
        ]
    )


def spark_schema(event_type: str, version: int | None = None) -> T.StructType:
    """The Spark schema of a version (latest by default), derived from its JSON Schema.

    Field names stay camelCase as on the wire; a field is nullable unless required.
    """
    version = latest_version(event_type) if version is None else version
    return _struct(_json_schema(event_type, version), event_type)


# ---------------------------------------------------------------- upcasting


def v1_event_id(payload: dict[str, Any]) -> str:
    """Deterministic id of a v1 user action, from its content as received.

    The timestamp string is used untouched, so a byte-identical resend gets the same id.
    """
    key = f"{payload['userId']}|{payload['mediaId']}|{payload['action']}|{payload['timestamp']}"
    return str(uuid.uuid5(V1_EVENT_ID_NAMESPACE, key))


def _user_action_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    out = dict(payload)
    out.update(
        schemaVersion=2,
        eventId=v1_event_id(payload),
        sessionId=None,
        positionMs=None,
        device=UNKNOWN_DEVICE,
    )
    return out


# (event_type, from_version) -> step to from_version + 1
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("user_action", 1): _user_action_v1_to_v2,
}


def upcast(event_type: str, payload: dict[str, Any], from_version: int) -> dict[str, Any]:
    """A payload of `from_version` raised step by step to the latest version.

    The result is not re-validated: an upcast v1 user action has device "unknown".
    """
    latest = latest_version(event_type)
    out = dict(payload)
    for version in range(from_version, latest):
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise ValueError(f"no upcaster for {event_type} v{version} -> v{version + 1}")
        out = step(out)
    return out


# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class Verdict:
    """What silver does with one record: an error code, or the upcast event."""

    event_type: str
    error_code: str | None
    error_detail: str | None
    schema_version: int | None
    event: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.error_code is None


_FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(is_date_time)


@cache
def _detail_validator(event_type: str, version: int) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        _json_schema(event_type, version), format_checker=_FORMAT_CHECKER
    )


@cache
def _fast_check(event_type: str, version: int) -> Callable[[dict[str, Any]], bool]:
    """A compiled yes/no validator; details are computed only for the rare failures."""
    schema = _json_schema(event_type, version)
    compiled = fastjsonschema.compile(schema, formats={"date-time": is_date_time})

    def check(payload: dict[str, Any]) -> bool:
        try:
            compiled(payload)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return check


@cache
def _date_time_fields(event_type: str, version: int) -> tuple[str, ...]:
    props = _json_schema(event_type, version).get("properties", {})
    return tuple(n for n, p in props.items() if p.get("format") == "date-time")


def _json_type(value: object) -> str:
    # bool comes before int in _JSON_TYPES: True is an int to Python, not to JSON.
    kind = next((t for t in _JSON_TYPES if isinstance(value, t)), None)
    return _JSON_TYPES[kind] if kind is not None else type(value).__name__


def _describe(error: jsonschema.ValidationError) -> str:
    """One validation error as `<field path>: <what was found vs expected>`."""
    path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error.absolute_path)
    path = path.replace(".[", "[")
    value, rule = error.instance, error.validator_value
    if error.validator == "required":
        missing = []
        if isinstance(rule, list) and isinstance(value, dict):
            missing = [f for f in rule if f not in value]
        if not missing:
            return f"{path or '$'}: {error.message}"
        field = f"{path}.{missing[0]}" if path else missing[0]
        return f"{field}: required field missing"
    where = path or "$"
    if error.validator == "enum":
        return f"{where}: {value!r} is not one of {rule!r}"
    if error.validator == "type":
        return f"{where}: expected {rule}, found {_json_type(value)} {value!r}"
    if error.validator == "format":
        return f"{where}: {value!r} is not a {rule}"
    if error.validator == "const":
        return f"{where}: expected {rule!r}, found {value!r}"
    if error.validator == "minimum":
        return f"{where}: {value!r} is below the minimum {rule!r}"
    if error.validator == "maximum":
        return f"{where}: {value!r} is above the maximum {rule!r}"
    if error.validator == "pattern":
        return f"{where}: {value!r} does not match {rule!r}"
    return f"{where}: {error.message}"


def violations(event_type: str, version: int, payload: dict[str, Any]) -> list[str]:
    """Every way a payload breaks a schema version, human-readable, in field order."""
    errors = _detail_validator(event_type, version).iter_errors(payload)
    return [_describe(e) for e in sorted(errors, key=lambda e: (list(e.path), e.validator))]


class _NotStrictJson(ValueError):
    """Text Python's json module reads but that is not one unambiguous JSON value."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            # RFC 8259 leaves a repeated name's meaning open: taking the last one (as
            # Python does) or the first (as others do) would store a guess.
            raise _NotStrictJson(f"{key}: the key appears twice in one object")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise _NotStrictJson(f"not JSON: {name} is not a JSON number")


class _HugeNumber(float):
    """A JSON number beyond a double's range (it reads as infinity), with its text."""

    text: str

    def __repr__(self) -> str:
        return self.text


def _number(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    huge = _HugeNumber(value)
    huge.text = text
    return huge


_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_number
)


def _strict_loads(text: str) -> Any:
    """`json.loads`, minus what Python accepts beyond JSON: NaN and Infinity, and
    objects with a repeated key."""
    return _STRICT_DECODER.decode(text)


def _lone_surrogate(value: Any, where: str = "$") -> str | None:
    """Where a string (or key) holds an unpaired UTF-16 surrogate, which a `\\ud800`
    escape gives and no Unicode text can: such a string cannot be stored as sent."""
    if isinstance(value, str):
        return (
            None if not _SURROGATE.search(value)
            else f"{where}: not valid Unicode (a lone surrogate escape)"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            path = key if where == "$" else f"{where}.{key}"
            found = _lone_surrogate(key, path) or _lone_surrogate(item, path)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")
# The typed columns of silver: LongType for JSON integers, DoubleType for numbers.
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _unfit_numbers(schema: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    """Numbers of the schema's properties that their silver column (LongType for an
    integer, DoubleType for a number) cannot hold as sent, which would be stored as
    null or changed: an integer beyond 64 bits, a number beyond a double's range,
    an integer a double would round. An integer field written as `5.0` (an integer
    to JSON Schema) is set to the int 5 in `payload`, the same JSON number."""
    found = []
    for name, prop in schema.get("properties", {}).items():
        value = payload.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        shown = getattr(value, "text", value)
        if prop.get("type") == "integer":
            if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_DOUBLE:
                payload[name] = value = int(value)
            is_big_float = isinstance(value, float) and (value.is_integer() or math.isinf(value))
            if isinstance(value, int) and not _LONG_MIN <= value <= _LONG_MAX or is_big_float:
                found.append(f"{name}: {shown} does not fit a 64-bit integer")
        elif prop.get("type") == "number" and not _fits_double(value):
            found.append(f"{name}: {shown} does not fit a double")
    return found


# Integers up to 2**53 are exact as doubles; beyond, `1e17` may not be the number sent.
_EXACT_DOUBLE = 2**53


def _fits_double(value: int | float) -> bool:
    try:
        as_double = float(value)
    except OverflowError:
        return False
    return math.isfinite(as_double) and (not isinstance(value, int) or int(as_double) == value)


def _reject(event_type: str, code: str, detail: str, version: int | None = None) -> Verdict:
    # A detail quotes what was sent, which may hold a lone surrogate: escaped, so the
    # detail itself is valid Unicode.
    safe = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return Verdict(event_type, code, safe, version, None)


def classify(event_type: str, raw: bytes | str | None, max_bytes: int) -> Verdict:
    """Validate one raw record and upcast it, or say precisely why it goes to quarantine.

    Order: oversize, invalid_json, unknown_version, schema_violation.
    On success `event` is the latest version with every date-time in UTC
    `...ffffffZ` and `schema_version` is the version as received.
    """
    versions_known = _versions(event_type)
    if raw is None:
        return _reject(event_type, "invalid_json", "empty record (null value)")
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        return _reject(
            event_type, "oversize", f"record is {len(data)} bytes, the limit is {max_bytes}"
        )
    try:
        payload = _strict_loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return _reject(event_type, "invalid_json", f"not UTF-8: {exc}")
    except json.JSONDecodeError as exc:
        return _reject(event_type, "invalid_json", f"not JSON: {exc}")
    except _NotStrictJson as exc:
        return _reject(event_type, "invalid_json", str(exc))
    if not isinstance(payload, dict):
        return _reject(
            event_type, "invalid_json", f"expected a JSON object, found {_json_type(payload)}"
        )
    lone = _lone_surrogate(payload)
    if lone is not None:
        return _reject(event_type, "invalid_json", lone)

    version = payload.get("schemaVersion", 1)
    # bool is an int in Python but not in JSON.
    if not isinstance(version, int) or isinstance(version, bool):
        return _reject(
            event_type,
            "schema_violation",
            f"schemaVersion: expected integer, found {_json_type(version)} {version!r}",
        )
    if version not in versions_known:
        return _reject(
            event_type,
            "unknown_version",
            f"schemaVersion: {version} is not a known version of {event_type} "
            f"(known: {list(versions_known)})",
            version,
        )
    too_wide = _unfit_numbers(_json_schema(event_type, version), payload)
    if too_wide:
        return _reject(event_type, "schema_violation", "; ".join(too_wide), version)
    if not _fast_check(event_type, version)(payload):
        found = violations(event_type, version, payload) or ["does not match the schema"]
        return _reject(event_type, "schema_violation", "; ".join(found), version)

    event = upcast(event_type, payload, version) if version != versions_known[-1] else payload
    for field in _date_time_fields(event_type, versions_known[-1]):
        value = event.get(field)
        if isinstance(value, str):
            event[field] = _normalize_valid(value)
    return Verdict(event_type, None, None, version, event)
