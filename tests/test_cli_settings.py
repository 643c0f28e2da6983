"""Settings and command-line behaviour that needs no JVM: overrides, clear errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import SettingsError, load_settings

runner = CliRunner()


def test_env_overrides_and_aliases() -> None:
    s = load_settings(env={"LAKEHOUSE_ROOT": "/data/lake", "LAKEHOUSE_KAFKA_BOOTSTRAP": "k:1",
                           "LAKEHOUSE_GOLD__WATERMARK": "1 hour",
                           "LAKEHOUSE_SPARK__SHUFFLE_PARTITIONS": "7"})
    assert (s.lakehouse.root, s.kafka.bootstrap, s.gold.watermark, s.spark.shuffle_partitions) == (
        "/data/lake", "k:1", "1 hour", 7)
    assert s.lakehouse.table_path("silver", "quarantine") == "/data/lake/silver/quarantine"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LAKEHOUSE_GOLD__WATERMRK": "1 hour"}, "override gold.watermrk: unknown key 'watermrk'"),
        ({"LAKEHOUSE_SPARK__SHUFFLE_PARTITIONS": "0"}, "spark.shuffle_partitions: Input should "
                                                        "be greater than or equal to 1"),
        ({"LAKEHOUSE_TYPO": "x"}, "environment variable LAKEHOUSE_TYPO"),
        ({"LAKEHOUSE_STREAMING__MAX_BYTES_PER_TRIGGER": "128 MB"},
         "streaming.max_bytes_per_trigger: String should match pattern"),
        ({"LAKEHOUSE_KAFKA__ADMIN_TIMEOUT_S": "0"},
         "kafka.admin_timeout_s: Input should be greater than 0"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        load_settings(env=env)


def test_relative_paths_are_the_projects(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)  # not the caller's working directory
    project = Path(__file__).parent.parent.resolve()
    s = load_settings(env={"LAKEHOUSE_QUALITY__SUITES": "conf/other.yaml"})
    assert s.quality.suites == str(project / "conf" / "other.yaml")
    assert load_settings(env={}).quality.suites == str(project / "conf" / "quality.yaml")


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "bad.yaml"
    text = (Path(__file__).parent.parent / "conf" / "local.yaml").read_text()
    conf.write_text(text.replace("  window: 5 minutes", "  windw: 5 minutes"))
    with pytest.raises(SettingsError, match="gold.windw: Extra inputs are not permitted"):
        load_settings(conf, env={})


def test_cli_user_error_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--conf", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"lakehouse: error: config file not found: {tmp_path / 'missing.yaml'}"]


def test_cli_missing_jdk_is_one_line_exit_1(tmp_path: Path, monkeypatch) -> None:
    """The project jar is compiled before Spark starts: no javac is a user error."""
    from pipelines import jvm

    monkeypatch.setattr(jvm, "JAR_CACHE", tmp_path / "jars")
    monkeypatch.setattr(jvm.shutil, "which", lambda _: None)
    result = runner.invoke(app, ["retrain"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lakehouse: error: javac (a JDK 17) is needed once")


def test_cli_rejects_unknown_layer() -> None:
    result = runner.invoke(app, ["stream", "--layers", "bronze,platinum"])
    assert result.exit_code == 1
    assert "unknown layer(s) ['platinum']" in result.stderr


def _schema(tmp_path: Path, name: str, body: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


def test_schemas_check_exit_codes(tmp_path: Path) -> None:
    base = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["a"]}
    old = _schema(tmp_path, "v1.json", base)
    added = _schema(tmp_path, "added.json", {**base, "properties": {
        **base["properties"], "c": {"type": "string"}}})
    removed = _schema(tmp_path, "removed.json", {**base, "properties": {"a": {"type": "string"}}})
    assert runner.invoke(app, ["schemas", "check", str(old), str(added)]).exit_code == 0
    breaking = runner.invoke(app, ["schemas", "check", str(old), str(removed)])
    assert breaking.exit_code == 1
    assert "field_removed" in breaking.stdout
    assert runner.invoke(app, ["schemas", "check", "--all"]).exit_code == 0


def test_fair_pools_become_an_allocation_file() -> None:
    import xml.etree.ElementTree as ET

    from pipelines.settings import PoolSettings
    from pipelines.spark import fair_pools_xml

    xml = fair_pools_xml({"silver_events": PoolSettings(weight=2, min_share=2),
                          'odd "name" <&>': PoolSettings()})
    pools = {p.get("name"): (p.findtext("schedulingMode"), p.findtext("weight"),
                             p.findtext("minShare")) for p in ET.fromstring(xml).iter("pool")}
    assert pools == {"silver_events": ("FIFO", "2", "2"), 'odd "name" <&>': ("FIFO", "1", "0")}
    with pytest.raises(SettingsError, match="spark.pools.silver_events.weight"):
        load_settings(env={"LAKEHOUSE_SPARK__POOLS__SILVER_EVENTS__WEIGHT": "0"})


def test_configured_pools_name_real_queries() -> None:
    # A pool is matched by the query's name: a misspelt one would be a pool nothing runs in.
    from pipelines.ops.catalog import STREAMS
    from pipelines.settings import DEFAULT_CONF

    for conf in (DEFAULT_CONF, DEFAULT_CONF.with_name("cluster.yaml")):
        assert set(load_settings(conf, env={}).spark.pools) <= {s.query for s in STREAMS}, conf
