"""Data-quality suites (Great Expectations) over the lakehouse tables: `lakehouse quality`.

The rules are data, in `conf/quality.yaml`; `suites` turns them into GX expectations,
`run` validates the current tables and records the results in ops.quality_results.
"""
