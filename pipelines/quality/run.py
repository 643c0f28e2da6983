"""`lakehouse quality`: validate the current tables against the suites of
`conf/quality.yaml` with Great Expectations, and record the results.

One ephemeral GX context per run, one Spark data source on in-memory DataFrames
(each table is read from Delta once and cached while its suite runs).

**ops.quality_results** (Delta, appended once per run): `run_id` (string, one per
run), `run_at` (timestamp), `table` (`<layer>.<table>`), `expectation` (GX type
name), `kwargs` (JSON of the rule's resolved arguments), `success` (boolean; null
when the table does not exist yet), `unexpected_count` (bigint; null for
expectations that do not count rows, skips and errors), `observed` (short text),
`severity` (`critical`, `warning`, `info`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core import ExpectationValidationResult
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.datasource.fluent import SparkDatasource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from pipelines import catalog
from pipelines.io.delta import table_exists
from pipelines.quality.suites import Rule, build_suite, load_suites
from pipelines.settings import Settings

RESULTS = catalog.OPS_QUALITY_RESULTS
CRITICAL = "critical"
DATASOURCE = "lakehouse"
EXAMPLES = 3  # unexpected values quoted in `observed`
OBSERVED_MAX_CHARS = 200
# BASIC gives unexpected_count plus a few examples; SUMMARY/COMPLETE cost more Spark jobs.
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": EXAMPLES}

RESULTS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("run_at", T.TimestampType(), False),
    T.StructField("table", T.StringType(), False),
    T.StructField("expectation", T.StringType(), False),
    T.StructField("kwargs", T.StringType(), False),
    T.StructField("success", T.BooleanType(), True),
    T.StructField("unexpected_count", T.LongType(), True),
    T.StructField("observed", T.StringType(), False),
    T.StructField("severity", T.StringType(), False),
])


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= OBSERVED_MAX_CHARS else text[: OBSERVED_MAX_CHARS - 3] + "..."


def _exception_message(info: Any) -> str | None:
    """GX nests exception info per metric; the first raised exception's message."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception raised")
    for value in info.values():
        if (message := _exception_message(value)) is not None:
            return message
    return None


def _observed(result: Mapping[str, Any], error: str | None) -> str:
    if error is not None:
        return _shorten(f"error: {error}")
    if "observed_value" in result:
        return _shorten(f"observed {json.dumps(result['observed_value'], default=str)}")
    if "unexpected_count" in result:
        count = result["unexpected_count"]
        text = f"{count} of {result.get('element_count')} unexpected"
        examples = result.get("partial_unexpected_list") or []
        if count and examples:
            text += f", e.g. {json.dumps(examples[:EXAMPLES], default=str)}"
        return _shorten(text)
    return ""


def result_row(rule: Rule, validation: ExpectationValidationResult) -> dict[str, Any]:
    """One GX result as the row `lakehouse quality` reports."""
    result = validation.result or {}
    error = _exception_message(validation.exception_info)
    count = result.get("unexpected_count")
    return {
        "table": rule.table,
        "expectation": rule.expectation,
        "kwargs": rule.kwargs_json,
        "success": bool(validation.success) and error is None,
        "unexpected_count": None if error is not None or count is None else int(count),
        "observed": _observed(result, error),
        "severity": rule.severity,
    }


def skipped_row(rule: Rule, reason: str) -> dict[str, Any]:
    return {
        "table": rule.table,
        "expectation": rule.expectation,
        "kwargs": rule.kwargs_json,
        "success": None,
        "unexpected_count": None,
        "observed": _shorten(f"skipped: {reason}"),
        "severity": rule.severity,
    }


def critical_failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that make `lakehouse quality` exit 1 (a skip is not a failure)."""
    return [r for r in results if r["severity"] == CRITICAL and r["success"] is False]


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """GX logs every metric error and warns about its own internals; the results
    already carry the errors, so keep the console for the report."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"great_expectations(\.|$)")
            # GX's Spark engine imports pyspark.pandas, which warns about an env var
            # that only matters to pandas-on-Spark.
            warnings.filterwarnings("ignore", message=".*PYARROW_IGNORE_TIMEZONE")
            yield
    finally:
        logger.setLevel(level)


def _spark_source() -> SparkDatasource:
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.analytics_enabled = False
    # persist=False: GX would persist every batch and never unpersist it; the
    # caller caches and releases each table itself.
    return context.data_sources.add_spark(DATASOURCE, persist=False)


def _rule_index(validation: ExpectationValidationResult) -> int:
    """The index `build_suite` put in the meta of the result's expectation."""
    config = validation.expectation_config
    assert config is not None  # a suite's validation gives each result its expectation
    return int(config.meta["rule"])


def validate_table(
    source: SparkDatasource, table: str, rules: list[Rule], df: DataFrame
) -> list[dict[str, Any]]:
    """Run the suite of `table` on `df`; one row per rule, in rule order."""
    batch = (
        source.add_dataframe_asset(name=table)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": df})
    )
    outcome = batch.validate(build_suite(table, rules), result_format=RESULT_FORMAT)
    by_rule = {_rule_index(r): r for r in outcome.results}
    if missing := set(range(len(rules))) - set(by_rule):
        raise RuntimeError(f"{table}: GX returned no result for rules {sorted(missing)}")
    return [result_row(rule, by_rule[i]) for i, rule in enumerate(rules)]


def write_results(
    spark: SparkSession, path: str, results: list[dict[str, Any]], run_id: str, run_at: datetime
) -> None:
    columns = RESULTS_SCHEMA.fieldNames()
    rows = [tuple({**r, "run_id": run_id, "run_at": run_at}[c] for c in columns) for r in results]
    spark.createDataFrame(rows, RESULTS_SCHEMA).write.format("delta").mode("append").save(path)


def run_quality(
    spark: SparkSession,
    settings: Settings,
    suites_path: str | Path | None = None,
    record: bool = True,
) -> list[dict[str, Any]]:
    """Validate every table that has a suite; a missing table gives skipped rows.

    Returns one dict per (table, rule) with table, expectation, kwargs (JSON), success
    (None when skipped), unexpected_count, observed and severity; with `record` the
    rows are also appended to ops.quality_results under a fresh run_id.
    """
    suites = load_suites(settings, suites_path)
    run_id, run_at = uuid.uuid4().hex, datetime.now(UTC)
    results: list[dict[str, Any]] = []
    with _quiet_gx():
        source = _spark_source()
        for table, rules in suites.items():
            path = catalog.table(table).path(settings)
            if not table_exists(spark, path):
                results += [skipped_row(rule, f"no table at {path}") for rule in rules]
                continue
            # Every expectation is at least one Spark job: read the files once.
            df = spark.read.format("delta").load(path).cache()
            try:
                results += validate_table(source, table, rules, df)
            finally:
                df.unpersist()
    if record and results:
        write_results(spark, RESULTS.path(settings), results, run_id, run_at)
    return results
