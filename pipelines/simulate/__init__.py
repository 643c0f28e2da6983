"""Realistic traffic for the lakehouse: a pure generator and a thin Kafka producer."""

from pipelines.simulate.generator import (
    KINDS,
    TOPIC_EVENT_TYPES,
    ManifestBuilder,
    SimRecord,
    build_manifest,
    generate,
)

__all__ = [
    "KINDS",
    "TOPIC_EVENT_TYPES",
    "ManifestBuilder",
    "SimRecord",
    "build_manifest",
    "generate",
]
