"""Event contracts: JSON Schemas in `schemas/`, their Spark/Avro forms, validation,
upcasting and the compatibility checker."""

from pipelines.schemas.registry import (
    SCHEMA_DIR,
    Verdict,
    classify,
    event_types,
    latest_version,
    load_avro,
    load_schema,
    spark_schema,
    upcast,
    v1_event_id,
    versions,
)

__all__ = [
    "SCHEMA_DIR",
    "Verdict",
    "classify",
    "event_types",
    "latest_version",
    "load_avro",
    "load_schema",
    "spark_schema",
    "upcast",
    "v1_event_id",
    "versions",
]
