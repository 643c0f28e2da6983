"""Every command of the README's command table, run as a user types it: the installed
`lakehouse` script in a child process, on the shared small lakehouse (conftest's
`small_lakehouse`, made by `lakehouse demo`). Each checks the exit code and the effect:
the rows written and the lines printed. User errors are one line naming the fix.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import delta_table, free_port, wait_while_running

from pipelines.settings import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

# A line a JVM (Spark's log4j, the JVM itself) or Python's warnings would print.
JVM_NOISE = re.compile(r"\b(WARN|WARNING|ERROR|INFO)\b|Exception|Traceback")
# What the tests below cover, by the command's first word in the README's table.
COVERED = {"up", "simulate", "stream", "reconcile", "retrain", "maintain", "quality",
           "status", "schemas", "demo"}


def _readme_commands() -> set[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `lakehouse (\w+)", text, flags=re.MULTILINE))


def _rows(lake, name: str) -> int:
    layer, table = name.split(".")
    return delta_table(lake, layer, table).to_pyarrow_table(columns=[]).num_rows


def _ok(result: subprocess.CompletedProcess) -> str:
    """stdout of a command that must have succeeded without console noise."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if JVM_NOISE.search(line)]
    assert noise == [], noise
    return result.stdout


def test_the_readme_lists_exactly_the_commands_tested() -> None:
    assert _readme_commands() == COVERED


def test_demo_summarises_and_keeps_jvm_logs_off_the_console(small_lakehouse) -> None:
    out = _ok(small_lakehouse.demo)
    for step in ("kafka up", "simulate", "stream (available now)", "reconcile", "retrain",
                 "quality"):
        assert step in out
    assert re.search(r"(promoted|kept|popularity): ", out)
    balanced = re.findall(r"bronze (\d+) = silver (\d+) \+\s+quarantine (\d+) OK", out)
    assert len(balanced) == 3, out
    assert sum(int(b) for b, _, _ in balanced) == _rows(small_lakehouse, "bronze.events")
    # Spark's log went to the file the command named.
    [log] = re.findall(r"Spark logs to (\S+\.log)", small_lakehouse.demo.stderr)
    assert Path(log).is_file() and Path(log).stat().st_size > 0


def test_simulate_then_stream_available_now_adds_every_record(small_lakehouse) -> None:
    lake = small_lakehouse
    before = _rows(lake, "bronze.events")
    out = _ok(lake.cli("simulate", "--events", "600", "--seed", "9", check=False))
    sent = int(re.search(r"^sent (\d+) records in [\d.]+s \(\d+/s\); manifest \S+\.json$",
                         out, flags=re.MULTILINE)[1])
    _ok(lake.cli("stream", "--available-now", check=False))
    assert _rows(lake, "bronze.events") == before + sent
    status = _ok(lake.cli("status", check=False))
    assert status.count(" yes ") == 3, status  # every topic balanced


def test_stream_runs_until_interrupted_and_serves_metrics(small_lakehouse) -> None:
    port = free_port()
    lake = type(small_lakehouse)(small_lakehouse.settings, {
        **small_lakehouse.env, "LAKEHOUSE_METRICS__PORT": str(port)}, small_lakehouse.demo)
    before = _rows(lake, "bronze.events")
    proc = lake.popen("stream", "--layers", "bronze", "--metrics")
    try:
        sent = lake.cli("simulate", "--events", "200", "--seed", "10")
        assert sent.returncode == 0
        deadline = time.monotonic() + 240
        wait_while_running(proc, lambda: _rows(lake, "bronze.events") >= before + 200,
                           deadline, poll_s=1)
        assert _rows(lake, "bronze.events") == before + 200
        # Progress reaches the listener (and the exporter) shortly after the commit.
        wanted = 'lakehouse_stream_input_rows_total{query="bronze_events"}'
        page = ""
        while wanted not in page and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10) as r:
                page = r.read().decode()
            time.sleep(1)
        assert wanted in page, page
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output


def test_reconcile_retrain_quality_maintain(small_lakehouse) -> None:
    lake = small_lakehouse
    out = _ok(lake.cli("reconcile", check=False))
    assert re.match(r"moved \d+ duplicates past the stream's lookup to quarantine; reconciled "
                    r"\d+ late events and \d+ moved actions: \d+ windows, \d+ sessions, "
                    r"\d+ user-days, \d+ days recomputed$", out.strip())

    runs = _rows(lake, "features.training_runs")
    out = _ok(lake.cli("retrain", check=False))
    assert re.match(r"(promoted|kept|popularity): \S+ serves \(model \w{12}\); \S+: .*"
                    r"candidate \d\.\d{4}, popularity \d\.\d{4}", out.strip()), out
    assert _rows(lake, "features.training_runs") == runs + 1

    results = _rows(lake, "ops.quality_results")
    out = _ok(lake.cli("quality", check=False))
    assert "data quality" in out and "silver.user_actions" in out
    assert _rows(lake, "ops.quality_results") > results

    out = _ok(lake.cli("maintain", "--vacuum", check=False))
    actions = int(re.search(r"^(\d+) maintenance actions, 0 failed", out, re.MULTILINE)[1])
    assert actions > 0
    assert _rows(lake, "ops.maintenance_log") >= actions


def test_status_and_its_metrics_file(small_lakehouse, tmp_path: Path) -> None:
    metrics = tmp_path / "lakehouse.prom"
    out = _ok(small_lakehouse.cli("status", "--metrics-file", str(metrics), check=False))
    for title in ("silver.user_actions", "gold.media_engagement", "bronze_events",
                  "Bronze -> silver accounting", "Quarantine by error code"):
        assert title in out
    text = metrics.read_text()
    assert 'lakehouse_table_rows{layer="bronze",table="events"}' in text


def test_schemas_check(small_lakehouse) -> None:
    v1, v2 = (str(PROJECT_ROOT / "schemas" / "user_action" / f"v{n}.json") for n in (1, 2))
    out = _ok(small_lakehouse.cli("schemas", "check", v1, v2, check=False))
    assert "breaking, in a new major version: allowed" in out
    assert "allowed" in _ok(small_lakehouse.cli("schemas", "check", "--all", check=False))
    # Fields removed and an enum narrowed, without a new major version: refused.
    back = small_lakehouse.cli("schemas", "check", v2, v1, check=False)
    assert back.returncode == 1
    assert "BREAKING without a new major version: not allowed" in back.stdout


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["simulate", "--events", "5"], {"LAKEHOUSE_KAFKA_BOOTSTRAP": "localhost:{closed}"},
         "lakehouse: error: no Kafka broker answers at localhost:{closed}: start the embedded "
         "one with `lakehouse up`, or set kafka.bootstrap (LAKEHOUSE_KAFKA_BOOTSTRAP)"),
        (["retrain"], {"LAKEHOUSE_ROOT": "{empty}"},
         "lakehouse: error: gold.playback_sessions: no Delta table at "
         "{empty}/gold/playback_sessions; run the streams first"),
        (["status"], {"LAKEHOUSE_GOLD__WINDW": "1 minute"},
         "lakehouse: error: override gold.windw: unknown key 'windw'"),
    ],
)
def test_user_errors_are_one_line_naming_the_fix(
    small_lakehouse, tmp_path: Path, args: list[str], env: dict[str, str], error: str
) -> None:
    values = {"closed": str(free_port()), "empty": str(tmp_path / "empty")}
    lake = type(small_lakehouse)(small_lakehouse.settings, {
        **small_lakehouse.env, **{k: v.format(**values) for k, v in env.items()}},
        small_lakehouse.demo)
    result = lake.cli(*args, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("lakehouse:")]
    assert errors == [error.format(**values)]
    assert "Traceback" not in result.stderr


def test_down_and_up_are_idempotent(small_lakehouse) -> None:
    """Last of the file: it restarts the session's broker, which then serves on."""
    lake = small_lakehouse
    assert _ok(lake.cli("down", check=False)).startswith("stopped Kafka")
    assert _ok(lake.cli("down", check=False)).strip() == "Kafka is not running"
    assert _ok(lake.cli("up", check=False)).startswith("started Kafka")
    assert _ok(lake.cli("up", check=False)).startswith("Kafka already running")
