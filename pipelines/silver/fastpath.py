"""The silver classifier's JVM fast path: records that are certainly valid are typed
(and upcast) by Spark built-ins; only the rest go to the Python classifier.

A record of event type E takes the fast path under version V when
- its bytes are UTF-8 and within the size limit;
- it round-trips: `to_json(from_json(value, wire(V))) == value`, where wire(V) is
  V's fields in schema order, date-times kept as strings. Spark re-serialises
  compactly, in schema order, dropping nulls, so equality means the record is a
  JSON object with no other keys, no duplicate or null keys, and every value of
  exactly its JSON type (a number in a string field comes back quoted, 5.0 in an
  integer field does not parse, 45 in a number field comes back as 45.0);
- the remaining keywords of V's JSON Schema hold, as SQL predicates derived from
  the schema file (required, const, enum, minimum, maximum, anchored pattern,
  and date-time restricted to `T`, at most 6 fraction digits, `Z` or `+hh:mm`).

Everything the derivation does not understand (another keyword, another
date-time form, another serialisation, an upcast step without a SQL twin) sends
the record to the Python classifier, which stays the definition: the fast path
may only decline, never decide differently. `tests/test_silver_fastpath.py`
checks that differentially on generated and hand-made records.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import cache, reduce
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.schemas.registry import (
    UNKNOWN_DEVICE,
    V1_EVENT_ID_NAMESPACE,
    _json_schema,
    latest_version,
    versions,
)
from pipelines.silver.tables import event_columns
from pipelines.silver.transforms import as_silver_rows

BRONZE_COLUMNS = ["topic", "partition", "offset", "value", "value_utf8"]

# Keywords that describe rather than constrain.
_ANNOTATIONS = {"$schema", "title", "description"}
_PROPERTY_KEYWORDS = {"type", "const", "enum", "minimum", "maximum", "pattern", "format"}
_WIRE_TYPES = {"string": T.StringType(), "integer": T.LongType(), "number": T.DoubleType()}
# The only date-time form taken here: upper-case `T`, up to microseconds, `Z` or an
# offset.
_DATE_TIME = (
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\z"
)
# Reading NaN/Infinity would round-trip; Python's json reads them too, but leave
# them to the Python classifier.
_JSON_OPTIONS = {"allowNonNumericNumbers": "false"}


def _java_anchored(pattern: str) -> str | None:
    """An ECMA `^...$` pattern as a Java regex anchored at the very end (`$` in Java,
    as in Python, also matches before a final newline); None for other shapes."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        return None
    return pattern[:-1] + r"\z"


def _supported(prop: dict[str, Any]) -> bool:
    """Whether every keyword of a property has a derivation below."""
    return (
        not set(prop) - _PROPERTY_KEYWORDS - _ANNOTATIONS
        and prop.get("type") in _WIRE_TYPES
        and ("pattern" not in prop or _java_anchored(prop["pattern"]) is not None)
        and prop.get("format", "date-time") == "date-time"
    )


def _property_check(value: Column, prop: dict[str, Any]) -> Column:
    """Predicate of one (`_supported`) property's keywords on its non-null value."""
    checks = [F.lit(True)]
    if prop["type"] == "number":
        checks.append(~F.isnan(value))
    if "const" in prop:
        checks.append(value == F.lit(prop["const"]))
    if "enum" in prop:
        checks.append(value.isin(list(prop["enum"])))
    if "minimum" in prop:
        checks.append(value >= F.lit(prop["minimum"]))
    if "maximum" in prop:
        checks.append(value <= F.lit(prop["maximum"]))
    if "pattern" in prop:
        checks.append(value.rlike(_java_anchored(prop["pattern"])))
    if "format" in prop:
        instant = value.try_cast("timestamp")
        # Python's datetime holds years 1 to 9999 only, in UTC too.
        checks.append(value.rlike(_DATE_TIME) & F.year(instant).between(1, 9999))
    return reduce(operator.and_, checks)


def _wire_schema(schema: dict[str, Any]) -> T.StructType:
    return T.StructType([
        T.StructField(name, _WIRE_TYPES[prop["type"]], True)
        for name, prop in schema["properties"].items()
    ])


def _version_is_implied(schema: dict[str, Any], version: int) -> bool:
    """The Python classifier takes a record's version from `schemaVersion`, 1 when
    absent; the fast path must land on the same version."""
    prop = schema["properties"].get("schemaVersion")
    if prop is None:
        return version == 1
    return prop.get("const") == version and "schemaVersion" in schema.get("required", [])


def _v1_event_id(fields: dict[str, Column]) -> Column:
    """`registry.v1_event_id` in SQL: uuid5 = SHA-1 of namespace + name, with the
    version nibble set to 5 and the variant bits to 10."""
    name = F.concat_ws("|", fields["userId"], fields["mediaId"], fields["action"],
                       fields["timestamp"])
    digest = F.sha1(F.concat(F.unhex(F.lit(V1_EVENT_ID_NAMESPACE.hex)), F.encode(name, "UTF-8")))
    variant = F.translate(F.substring(digest, 17, 1), "0123456789abcdef", "89ab89ab89ab89ab")
    return F.concat_ws(
        "-",
        F.substring(digest, 1, 8),
        F.substring(digest, 9, 4),
        F.concat(F.lit("5"), F.substring(digest, 14, 3)),
        F.concat(variant, F.substring(digest, 18, 3)),
        F.substring(digest, 21, 12),
    )


def _user_action_v1_to_v2(fields: dict[str, Column]) -> dict[str, Column]:
    """`registry._user_action_v1_to_v2` in SQL."""
    return {
        **fields,
        "schemaVersion": F.lit(2).cast("long"),
        "eventId": _v1_event_id(fields),
        "sessionId": F.lit(None).cast("string"),
        "positionMs": F.lit(None).cast("long"),
        "device": F.lit(UNKNOWN_DEVICE),
    }


# SQL twins of the registry's upcasters; a version whose steps are not all here
# stays with the Python classifier.
_SQL_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Column]], dict[str, Column]]] = {
    ("user_action", 1): _user_action_v1_to_v2,
}


@cache
def fast_versions(event_type: str) -> tuple[int, ...]:
    """The versions of an event type the fast path can decide."""
    latest = latest_version(event_type)
    found = []
    for version in versions(event_type):
        schema = _json_schema(event_type, version)
        props = schema.get("properties", {})
        shape_ok = (
            not set(schema) - _ANNOTATIONS - {"type", "properties", "required"}
            and schema.get("type") == "object"
            and all(_supported(p) for p in props.values())
            and _version_is_implied(schema, version)
        )
        steps_ok = all((event_type, v) in _SQL_UPCASTERS for v in range(version, latest))
        if shape_ok and steps_ok:
            found.append(version)
    return tuple(found)


def _accepted(parsed: Column, value: Column, schema: dict[str, Any]) -> Column:
    required = set(schema.get("required", []))
    condition = F.to_json(parsed) == value
    for name, prop in schema["properties"].items():
        field = parsed[name]
        check = _property_check(field, prop)
        condition = condition & (
            (field.isNotNull() & check) if name in required else (field.isNull() | check)
        )
    return condition


def _typed_event(parsed: Column, event_type: str, version: int) -> Column:
    """The accepted record as a struct of its silver event columns (latest version)."""
    schema = _json_schema(event_type, version)
    fields = {name: parsed[name] for name in schema["properties"]}
    for step in range(version, latest_version(event_type)):
        fields = _SQL_UPCASTERS[(event_type, step)](fields)
    columns = [
        (fields[wire].try_cast("timestamp") if isinstance(field.dataType, T.TimestampType)
         else fields[wire].cast(field.dataType)).alias(field.name)
        for wire, field in event_columns(event_type)
    ]
    return F.struct(*columns, F.lit(version).alias("schema_version"))


def _may_round_trip(value: Column, schema: dict[str, Any]) -> Column:
    """A cheap necessary condition of the round trip, checked before parsing: when the
    first property is required, the record must start with it (so a v2 record is not
    also parsed as v1, nor the other way round)."""
    first = next(iter(schema["properties"]))
    if first not in schema.get("required", []):
        return F.lit(True)
    return value.startswith(f'{{"{first}":')


def _parsed_column(event_type: str, version: int) -> str:
    return f"_parsed_{event_type}_v{version}"


def fast_classify(
    bronze: DataFrame, topic_event_types: dict[str, str], max_bytes: int
) -> DataFrame:
    """Bronze rows plus one struct column per event type (see `fast_column`): the typed
    event when the record took the fast path, else null; `_event_type` and
    `_event_id` of a record that took it; `_suspect` is true for the records left to
    the Python classifier, and only they keep their `value`."""
    eligible = F.col("value_utf8") & (F.octet_length("value") <= max_bytes)
    value = F.col("value")
    by_type = {
        event_type: [t for t, e in topic_event_types.items() if e == event_type]
        for event_type in sorted(set(topic_event_types.values()))
    }
    # Parsed once, in a projection of its own: referenced from inside CASE and AND
    # branches, a from_json would otherwise be evaluated again for every reference
    # (Spark only shares subexpressions on always-evaluated paths).
    parsed = bronze.select(*BRONZE_COLUMNS, *(
        F.when(
            eligible & F.col("topic").isin(topics) & _may_round_trip(value, schema),
            F.from_json(value, _wire_schema(schema), _JSON_OPTIONS),
        ).alias(_parsed_column(event_type, version))
        for event_type, topics in by_type.items()
        for version in fast_versions(event_type)
        for schema in [_json_schema(event_type, version)]
    ))
    structs = []
    for event_type in by_type:
        typed: Column = F.lit(None)
        for version in fast_versions(event_type):
            schema = _json_schema(event_type, version)
            struct = F.col(_parsed_column(event_type, version))
            typed = F.when(
                struct.isNotNull() & _accepted(struct, value, schema),
                _typed_event(struct, event_type, version),
            ).otherwise(typed)
        structs.append(typed.alias(fast_column(event_type)))
    # The event type and id again as plain columns: the dedup reads only them, and a
    # cached struct column is decoded whole.
    event_type = F.coalesce(*(
        F.when(F.col(fast_column(t)).isNotNull(), F.lit(t)) for t in by_type
    ))
    event_id = F.coalesce(*(F.col(fast_column(t))["event_id"] for t in by_type))
    # The raw value is kept for suspects only: the typed rows are all that is needed
    # of the others, and they are most of a batch that is cached.
    return (
        parsed.select(*BRONZE_COLUMNS, *structs)
        .withColumn("_event_type", event_type)
        .withColumn("_event_id", event_id)
        .withColumn("_suspect", F.col("_event_type").isNull())
        .withColumn("value", F.when(F.col("_suspect"), F.col("value")))
    )


def fast_column(event_type: str) -> str:
    return f"_fast_{event_type}"


def fast_events(fast: DataFrame, event_type: str) -> DataFrame:
    """Rows that took the fast path as their silver table's rows (shape of
    `transforms.to_events`)."""
    column = fast_column(event_type)
    typed = fast.filter(F.col(column).isNotNull())
    return as_silver_rows(typed, [F.col(f"{column}.*")], event_type)


def fast_keys(fast: DataFrame) -> DataFrame:
    """(event_type, event_id, source coordinates) of every record that took the fast
    path: what the dedup needs of them."""
    return fast.filter(F.col("_event_type").isNotNull()).select(
        F.col("_event_type").alias("event_type"),
        F.col("_event_id").alias("event_id"),
        F.col("topic").alias("source_topic"),
        F.col("partition").alias("source_partition"),
        F.col("offset").alias("source_offset"),
    )


def suspects(fast: DataFrame) -> DataFrame:
    """The records left to the Python classifier, as bronze rows."""
    return fast.filter("_suspect").select(*BRONZE_COLUMNS)
