"""The silver classifier's fast half (`classify` runs both halves): records that are
certainly valid are typed (and upcast) in the JVM; only the rest go to the Python
classifier (`classify.classify_records`).

A record of event type E takes the fast path under version V when its bytes are
UTF-8 and within the size limit and `JsonSchemaFastPath` (Java, in `jvm/`) accepts
them for V: one pass of Jackson's streaming parser checks that the record is a JSON
object whose keys are all V's, none twice, none null, every value of exactly its
JSON type, and that V's keywords hold (required, const, enum, minimum, maximum,
anchored pattern, and date-time in one strict form: `T`, at most 6 fraction
digits, `Z` or `+hh:mm`). Its rules come from a spec derived here from the schema
file. The same pass returns each date-time's instant (read by hand, not by a regex
and java.time's parser), so the timestamp columns are not parsed again by a cast.
Upcasts to the latest version are SQL (`_SQL_UPCASTERS`).

Everything the derivation does not understand (another keyword, another
date-time form, an upcast step without a SQL twin) and everything the Java side
finds unusual sends the record to the Python classifier, which stays the
definition: the fast path may only decline, never decide differently.
`tests/test_silver_fastpath.py` checks that differentially on generated and
hand-made records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.schemas.registry import (
    UNKNOWN_DEVICE,
    V1_EVENT_ID_NAMESPACE,
    _json_schema,
    latest_version,
    versions,
)
from pipelines.silver.tables import (
    SOURCE,
    as_silver_rows,
    coordinates,
    event_columns,
    renamed_coordinates,
)

BRONZE_COLUMNS = [*coordinates(), "value"]

# Keywords that describe rather than constrain.
_ANNOTATIONS = {"$schema", "title", "description"}
_PROPERTY_KEYWORDS = {"type", "const", "enum", "minimum", "maximum", "pattern", "format"}
_WIRE_TYPES = {"string": T.StringType(), "integer": T.LongType(), "number": T.DoubleType()}


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


def _spec(schema: dict[str, Any]) -> str:
    """What `JsonSchemaFastPath` checks of a (`fast_versions`) schema, as JSON: its
    properties in schema order (the order of the row it returns)."""
    required = set(schema.get("required", []))
    properties = []
    for name, prop in schema["properties"].items():
        rules: dict[str, Any] = {"name": name, "type": prop["type"], "required": name in required}
        rules.update({k: prop[k] for k in ("const", "enum", "minimum", "maximum") if k in prop})
        if "pattern" in prop:
            rules["pattern"] = _java_anchored(prop["pattern"])
        rules["date_time"] = name in _date_times(schema)
        properties.append(rules)
    return json.dumps({"properties": properties})


_JAVA_CLASS = "lakehouse.silver.JsonSchemaFastPath"


def _register(spark: SparkSession, event_type: str, version: int) -> str:
    """Registers the fast path of one version as a SQL function; returns its name."""
    from py4j.java_gateway import JavaClass

    fast_path = spark._jvm
    for part in _JAVA_CLASS.split("."):
        fast_path = getattr(fast_path, part)
    if not isinstance(fast_path, JavaClass):
        raise RuntimeError(
            f"{_JAVA_CLASS} is not on Spark's classpath: silver's fast path is the "
            "project's own jar; with fetch_jars: false give it to spark-submit as "
            "--jars \"$(python -m pipelines.runtime.prefetch --project-jar)\""
        )
    schema = _json_schema(event_type, version)
    spec = _spec(schema)
    # Named by its rules: registered once per session, a new name if the schema changes.
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    name = f"lakehouse_fast_path_{event_type}_v{version}_{digest}"
    if not spark.catalog.functionExists(name):
        fast_path.register(spark._jsparkSession, name, spec, _wire_schema(schema).json())
    return name


def _wire_schema(schema: dict[str, Any]) -> T.StructType:
    """The row `JsonSchemaFastPath` returns: the properties as their wire types, then
    the instant (microseconds since the epoch) of each date-time property."""
    return T.StructType([
        *(T.StructField(name, _WIRE_TYPES[prop["type"]], True)
          for name, prop in schema["properties"].items()),
        *(T.StructField(_instant_field(name), T.LongType(), True)
          for name in _date_times(schema)),
    ])


def _date_times(schema: dict[str, Any]) -> list[str]:
    """The date-time properties of a schema, in schema order (the order of their
    instants in the Java row)."""
    return [name for name, prop in schema["properties"].items()
            if prop.get("format") == "date-time"]


def _instant_field(name: str) -> str:
    return f"{name}__micros"


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


def _typed_event(parsed: Column, event_type: str, version: int) -> Column:
    """The accepted record as a struct of its silver event columns (latest version)."""
    schema = _json_schema(event_type, version)
    received = {name: parsed[name] for name in schema["properties"]}
    # Date-times the Java pass has read: their instant, not a second parse by a cast.
    instants = {
        name: F.timestamp_micros(parsed[_instant_field(name)]) for name in _date_times(schema)
    }
    fields = dict(received)
    for step in range(version, latest_version(event_type)):
        fields = _SQL_UPCASTERS[(event_type, step)](fields)

    def typed(wire: str, field: T.StructField) -> Column:
        if not isinstance(field.dataType, T.TimestampType):
            return fields[wire].cast(field.dataType)
        # An upcast that set the field anew is cast like any other.
        unchanged = wire in instants and fields[wire] is received[wire]
        return instants[wire] if unchanged else fields[wire].try_cast("timestamp")

    columns = [typed(wire, field).alias(field.name) for wire, field in event_columns(event_type)]
    return F.struct(*columns, F.lit(version).alias("schema_version"))


def _parsed_column(event_type: str, version: int) -> str:
    return f"_parsed_{event_type}_v{version}"


def fast_classify(
    bronze: DataFrame, topic_event_types: dict[str, str], max_bytes: int
) -> DataFrame:
    """Bronze rows plus one struct column per event type (see `fast_column`): the typed
    event when the record took the fast path, else null; `_event_type` and
    `_event_id` of a record that took it; `_suspect` is true for the records left to
    the Python classifier."""
    # Spark's binary -> string cast does not check the bytes; is_valid_utf8 does.
    eligible = F.is_valid_utf8(F.col("value").cast("string")) & (
        F.octet_length("value") <= max_bytes
    )
    value = F.col("value")
    by_type = {
        event_type: [t for t, e in topic_event_types.items() if e == event_type]
        for event_type in sorted(set(topic_event_types.values()))
    }
    spark = bronze.sparkSession
    # Parsed once, in a projection of its own: referenced from inside CASE branches,
    # the function would otherwise be called again for every reference (Spark only
    # shares subexpressions on always-evaluated paths).
    parsed = bronze.select(*BRONZE_COLUMNS, *(
        F.when(
            eligible & F.col("topic").isin(topics),
            F.call_function(_register(spark, event_type, version), value),
        ).alias(_parsed_column(event_type, version))
        for event_type, topics in by_type.items()
        for version in fast_versions(event_type)
    ))
    structs = []
    for event_type in by_type:
        typed: Column = F.lit(None)
        for version in fast_versions(event_type):
            struct = F.col(_parsed_column(event_type, version))
            typed = F.when(
                struct.isNotNull(), _typed_event(struct, event_type, version),
            ).otherwise(typed)
        structs.append(typed.alias(fast_column(event_type)))
    # The event type and id again as plain columns: the dedup reads only them, and a
    # cached struct column is decoded whole.
    type_of_event = F.coalesce(*(
        F.when(F.col(fast_column(t)).isNotNull(), F.lit(t)) for t in by_type
    ))
    event_id = F.coalesce(*(F.col(fast_column(t))["event_id"] for t in by_type))
    event_time = F.coalesce(*(F.col(fast_column(t))["event_time"] for t in by_type))
    # Every record keeps its raw value: suspects go to the Python classifier with it,
    # duplicates to quarantine (cheaper here than reading the batch a second time).
    return (
        parsed.select(*BRONZE_COLUMNS, *structs)
        .withColumn("_event_type", type_of_event)
        .withColumn("_event_id", event_id)
        .withColumn("_event_time", event_time)
        .withColumn("_event_date", F.to_date("_event_time"))
        .withColumn("_suspect", F.col("_event_type").isNull())
    )


def fast_column(event_type: str) -> str:
    return f"_fast_{event_type}"


def fast_events(fast: DataFrame, event_type: str) -> DataFrame:
    """Rows that took the fast path as their silver table's rows (shape of
    `classify.to_events`)."""
    column = fast_column(event_type)
    typed = fast.filter(F.col(column).isNotNull())
    return as_silver_rows(typed, [F.col(f"{column}.*")], event_type)


def fast_keys(fast: DataFrame) -> DataFrame:
    """(event_type, event_id, event_time, event_date, source coordinates) of every
    record that took the fast path: what the dedup needs of them."""
    return fast.filter(F.col("_event_type").isNotNull()).select(
        F.col("_event_type").alias("event_type"),
        F.col("_event_id").alias("event_id"),
        F.col("_event_time").alias("event_time"),
        F.col("_event_date").alias("event_date"),
        *renamed_coordinates("", SOURCE),
    )


def suspects(fast: DataFrame) -> DataFrame:
    """The records left to the Python classifier, as bronze rows."""
    return fast.filter("_suspect").select(*BRONZE_COLUMNS)
