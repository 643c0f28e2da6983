"""`lakehouse`: the command line of the media-streaming lakehouse."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from pipelines.settings import Settings, load_settings

if TYPE_CHECKING:  # pyspark is imported lazily: `status`, `up`, `schemas` start no JVM
    from pyspark.sql import SparkSession

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
schemas_app = typer.Typer(no_args_is_help=True, help="Event schema tools.")
app.add_typer(schemas_app, name="schemas")
console = Console(stderr=True)

ConfOption = typer.Option(
    None, "--conf", help="config file (default conf/local.yaml, or $LAKEHOUSE_CONF)"
)


class UserError(Exception):
    """A failure the user can fix; printed as one line, exit code 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipelines.io.delta import TableLayoutError
    from pipelines.quality.suites import SuiteError
    from pipelines.runtime.jars import JarFetchError
    from pipelines.runtime.jvm import JvmBuildError
    from pipelines.runtime.kafka.embedded import BrokerError
    from pipelines.settings import SettingsError

    return (
        UserError, SettingsError, BrokerError, JarFetchError, JvmBuildError, FileNotFoundError,
        SuiteError, TableLayoutError,
    )


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known failures into a one-line reason on stderr and exit 1; a bare
    traceback only with LAKEHOUSE_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("LAKEHOUSE_DEBUG"):
                raise
            user_error = isinstance(exc, _user_errors())
            kind = "error" if user_error else f"error ({type(exc).__name__})"
            message = " ".join(str(exc).split())[:500]
            if not user_error and _spark_log and _spark_log[-1].exists():
                message += f" (Spark's log: {_spark_log[-1]})"
            print(f"lakehouse: {kind}: {message}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


def _settings(conf: Path | None) -> Settings:
    return load_settings(conf)


# The log file of the JVM this command started, named in its output and its errors.
_spark_log: list[Path] = []


def _spark(settings: Settings) -> SparkSession:
    from pipelines.runtime.spark import build_spark, log_file

    log = log_file(settings.spark)
    _spark_log.append(log)
    session = build_spark(settings.spark, log_to=log)
    if log.exists():
        print(f"Spark logs to {log}", file=sys.stderr)
    return session


@app.command()
@command
def up(conf: Path | None = ConfOption) -> None:
    """Start the embedded single-node Kafka (KRaft) and create the topics."""
    from pipelines.runtime.kafka import embedded

    print(embedded.up(_settings(conf).kafka))


@app.command()
@command
def down(conf: Path | None = ConfOption) -> None:
    """Stop the embedded Kafka."""
    from pipelines.runtime.kafka import embedded

    print(embedded.down(_settings(conf).kafka))


@app.command()
@command
def stream(
    conf: Path | None = ConfOption,
    available_now: bool = typer.Option(
        False, "--available-now", help="process everything in Kafka, then exit"
    ),
    layers: str = typer.Option("bronze,silver,gold", help="comma-separated layers to run"),
    metrics: bool = typer.Option(
        False, "--metrics", help="serve Prometheus metrics on metrics.port while running"
    ),
) -> None:
    """Run the streaming jobs (bronze -> silver -> gold)."""
    from pipelines.runtime.runner import parse_layers, run_layers

    settings = _settings(conf)
    try:
        chosen = parse_layers(layers)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    spark = _spark(settings)
    if metrics:
        from pipelines.ops.metrics import MetricsListener, serve

        spark.streams.addListener(MetricsListener())
        serve(settings.metrics.port)
        console.print(f"metrics on http://localhost:{settings.metrics.port}/metrics")
    run_layers(spark, settings, chosen, available_now, report=console.print)


@app.command()
@command
def simulate(
    conf: Path | None = ConfOption,
    events: int = typer.Option(..., "--events", min=1, help="number of records to produce"),
    rate: float | None = typer.Option(None, "--rate", min=1, help="records per second"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same traffic)"),
    shuffle: bool = typer.Option(False, "--shuffle", help="shuffle arrival order in blocks"),
    now: bool = typer.Option(False, "--now", help="wall-clock timestamps (freshness runs)"),
    pregenerate: bool = typer.Option(
        False, "--pregenerate",
        help="build every record before sending, so sending takes little CPU (load tests)",
    ),
) -> None:
    """Produce a realistic event mix, bad records included, and write a manifest."""
    from pipelines.simulate.producer import simulate as run_simulation

    manifest = run_simulation(
        _settings(conf), events, rate=rate, seed=seed, progress=True, shuffle=shuffle, now=now,
        pregenerate=pregenerate,
    )
    print(
        f"sent {manifest['total']} records in {manifest['seconds']:.1f}s "
        f"({manifest['events_per_s']:.0f}/s); manifest {manifest['path']}"
    )


@app.command()
@command
def retrain(conf: Path | None = ConfOption) -> None:
    """Batch-retrain the recommendation features (ALS + popularity) with offline metrics."""
    from pipelines.features.retrain import missing_input, run

    settings = _settings(conf)
    if (missing := missing_input(settings)) is not None:
        raise UserError(missing)
    result = run(_spark(settings), settings)
    print(_retrain_line(result))


@app.command()
@command
def maintain(
    conf: Path | None = ConfOption,
    vacuum: bool = typer.Option(False, "--vacuum", help="also VACUUM old files"),
) -> None:
    """Compact (and vacuum) every table; safe beside running streams."""
    from pipelines.ops.maintenance import maintain as run_maintain

    settings = _settings(conf)
    rows = run_maintain(_spark(settings), settings, vacuum=vacuum)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows)} maintenance actions, {len(failed)} failed (see ops.maintenance_log)")
    for row in failed:
        print(f"  {row['table']} {row['operation']}: {row['error']}", file=sys.stderr)
    if failed:
        raise typer.Exit(1)


@app.command()
@command
def quality(conf: Path | None = ConfOption) -> None:
    """Run the data-quality suites (conf/quality.yaml) on the current tables."""
    from rich.table import Table

    from pipelines.quality.run import critical_failures, run_quality

    settings = _settings(conf)
    results = run_quality(_spark(settings), settings)
    table = Table(title="data quality")
    for col in ("table", "expectation", "result", "unexpected", "observed"):
        table.add_column(col)
    for r in results:
        verdict = {True: "ok", False: f"FAILED ({r['severity']})", None: "skipped"}[r["success"]]
        table.add_row(r["table"], r["expectation"], verdict, str(r["unexpected_count"] or ""),
                      str(r["observed"] or ""))
    Console().print(table)
    if critical_failures(results):
        raise UserError(f"{len(critical_failures(results))} critical expectations failed")


@app.command()
@command
def status(
    conf: Path | None = ConfOption,
    metrics_file: Path | None = typer.Option(
        None, "--metrics-file", help="also write Prometheus metrics (textfile format)"
    ),
    spark: bool = typer.Option(
        False, "--spark",
        help="read through Spark (slow: starts a JVM), for storage the Delta log reader "
        "cannot reach",
    ),
) -> None:
    """Tables, versions, row counts, stream lag and the bronze/silver accounting."""
    from pipelines.ops.readers import LogReader, SparkReader
    from pipelines.ops.status import collect_status, render_status

    settings = _settings(conf)
    reader = SparkReader(_spark(settings)) if spark else LogReader()
    report = collect_status(reader, settings)
    Console().print(render_status(report))
    if metrics_file is not None:
        from pipelines.ops.metrics import collect_metrics, write_textfile

        write_textfile(collect_metrics(report), str(metrics_file))


@app.command()
@command
def reconcile(
    conf: Path | None = ConfOption,
    full: bool = typer.Option(False, "--full", help="rebuild every gold table from silver"),
) -> None:
    """Recompute the gold windows, sessions and days touched by late events."""
    from pipelines.gold import reconcile as gold_reconcile

    settings = _settings(conf)
    spark = _spark(settings)
    if full:
        counts = gold_reconcile.recompute_all(spark, settings)
        print("rebuilt " + ", ".join(f"{t}: {n} rows" for t, n in counts.items()))
    else:
        counts = gold_reconcile.reconcile(spark, settings)
        print(
            f"moved {counts['duplicates']} duplicates past the stream's lookup to quarantine; "
            f"reconciled {counts['late_events']} late events and {counts['swept']} moved "
            f"actions: {counts['windows']} windows, {counts['sessions']} sessions, "
            f"{counts['user_days']} user-days, {counts['days']} days recomputed"
        )


@app.command()
@command
def demo(
    conf: Path | None = ConfOption,
    events: int = typer.Option(30_000, "--events", min=1000, help="records to simulate"),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Everything end to end on the embedded default, with a summary."""
    import time

    from rich.table import Table

    from pipelines.features.retrain import run as run_retrain
    from pipelines.gold.reconcile import reconcile as run_reconcile
    from pipelines.ops.accounting import accounting
    from pipelines.runtime.kafka import embedded
    from pipelines.runtime.runner import run_layers
    from pipelines.simulate.producer import simulate as run_simulation

    settings = _settings(conf)
    steps: list[tuple[str, float, str]] = []

    def step(name: str, fn: Callable[[], str]) -> None:
        console.rule(name)
        started = time.monotonic()
        result = fn()
        steps.append((name, time.monotonic() - started, result))

    step("kafka up", lambda: embedded.up(settings.kafka))
    manifest: dict[str, Any] = {}

    def produce() -> str:
        manifest.update(run_simulation(settings, events, seed=seed, shuffle=True))
        return f"{manifest['total']} records, {manifest['events_per_s']:.0f}/s"

    step("simulate", produce)
    spark = _spark(settings)
    def drain() -> str:
        run_layers(spark, settings, ["bronze", "silver", "gold"], True, report=console.print)
        return "drained"

    step("stream (available now)", drain)
    step("reconcile", lambda: f"{run_reconcile(spark, settings)['late_events']} late events")
    step("retrain", lambda: _retrain_line(run_retrain(spark, settings), short=True))
    step("quality", lambda: _quality_line(spark, settings))

    report = accounting(spark, settings)
    summary = Table(title="lakehouse demo")
    for col in ("step", "seconds", "result"):
        summary.add_column(col)
    for name, seconds, result in steps:
        summary.add_row(name, f"{seconds:.1f}", result)
    for row in report:
        summary.add_row(
            f"accounting {row['topic']}", "",
            f"bronze {row['bronze']} = silver {row['silver']} + quarantine {row['quarantine']}"
            f" {'OK' if row['balanced'] else 'MISMATCH'}",
        )
    Console().print(summary)
    print(f"lakehouse at {settings.lakehouse.root}; try `lakehouse status`")
    if not all(r["balanced"] for r in report):
        raise UserError("accounting does not balance: some bronze records are unaccounted for")


def _retrain_line(result: dict[str, Any], short: bool = False) -> str:
    """The gate's decision in one line: what serves now, and why."""
    if short:
        model, base = result["model"]["ndcg_at_10"], result["baseline"]["ndcg_at_10"]
        return (
            f"{result['decision']}: {result['served'].split('(')[0]} serves; NDCG@10 of "
            f"{result['candidate'].split('(')[0]} {model if model is None else round(model, 3)}"
            f" vs popularity {base if base is None else round(base, 3)}"
        )
    return (
        f"{result['decision']}: {result['served']} serves "
        f"(model {result['model_version'][:12]}); {result['candidate']}: {result['reason']}; "
        f"{result['total_s']}s"
    )


def _quality_line(spark: Any, settings: Settings) -> str:
    from pipelines.quality.run import run_quality

    results = run_quality(spark, settings)
    checked = [r for r in results if r["success"] is not None]
    failed = [r for r in checked if not r["success"]]
    return f"{len(checked) - len(failed)}/{len(checked)} expectations met"


@schemas_app.command("check")
@command
def schemas_check(
    old: Path | None = typer.Argument(None, help="old schema file"),
    new: Path | None = typer.Argument(None, help="new schema file"),
    all_versions: bool = typer.Option(
        False, "--all", help="check consecutive versions of every schema in schemas/"
    ),
) -> None:
    """Classify a schema change; exit 1 on a breaking change that is not a new major version."""
    from pipelines.schemas import compat
    from pipelines.schemas.registry import SCHEMA_DIR

    if all_versions:
        reports = compat.check_all(SCHEMA_DIR)
    elif old is not None and new is not None:
        for path in (old, new):
            if not path.is_file():
                raise UserError(f"schema file not found: {path}")
        reports = [compat.check_files(old, new)]
    else:
        raise UserError("give OLD and NEW schema files, or --all")
    for report in reports:
        print(report.summary())
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
