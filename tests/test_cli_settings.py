"""Settings and command-line behaviour that needs no JVM: overrides, clear errors, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import SettingsError, load_settings

runner = CliRunner()
CONF = Path(__file__).parent.parent / "conf"


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
    text = (CONF / "base.yaml").read_text()  # a complete file, no `extends`
    conf.write_text(text.replace("  window: 5 minutes", "  windw: 5 minutes"))
    with pytest.raises(SettingsError, match="gold.windw: Extra inputs are not permitted"):
        load_settings(conf, env={})


# --- conf files as base.yaml plus overlays ------------------------------------------


def test_profiles_load_complete_and_valid() -> None:
    base, local, cluster = (load_settings(CONF / f"{n}.yaml", env={})
                            for n in ("base", "local", "cluster"))
    assert load_settings(env={}) == local  # the default profile
    assert local.spark.pools["silver_events"].min_share == 2
    assert local.spark.extra_conf["spark.sql.inMemoryColumnarStorage.compressed"] == "false"
    assert (cluster.spark.master, cluster.spark.fetch_jars, cluster.spark.pools) == ("", False, {})
    assert cluster.kafka.topics["user_actions"].partitions == 24
    assert cluster.kafka.topics["notifications"] == base.kafka.topics["notifications"]
    assert cluster.spark.extra_conf["spark.scheduler.mode"] == "FAIR"  # from base
    assert "spark.sql.inMemoryColumnarStorage.compressed" not in cluster.spark.extra_conf
    for settings in (local, cluster):
        assert settings.features == base.features and settings.gold == base.gold
        assert settings.spark.packages == base.spark.packages


def _leaves(tree: object, path: tuple = ()) -> dict[tuple, object]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, (*path, key)).items()}
    return {path: tree}


def test_overlay_changes_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text((CONF / "base.yaml").read_text())
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(
        "extends: base.yaml\n"
        "kafka:\n  embedded: {heap: 512m}\n"           # nested value
        "  topics:\n    user_actions: {partitions: 6}\n"
        "simulate: {genres: [drama]}\n"                # a list replaces the base's
        "spark:\n  extra_conf: {spark.x: 'y'}\n"      # a mapping merges
        "gold:\n"                                      # an empty section changes nothing
    )
    base = load_settings(tmp_path / "base.yaml", env={}).model_dump()
    mine = load_settings(overlay, env={}).model_dump()
    before, after = _leaves(base), _leaves(mine)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {("kafka", "embedded", "heap"), ("kafka", "topics", "user_actions",
                       "partitions"), ("simulate", "genres"), ("spark", "extra_conf", "spark.x")}
    assert (after[("kafka", "embedded", "heap")], after[("simulate", "genres")]) == (
        "512m", ["drama"])
    assert after[("kafka", "embedded", "port")] == 9092  # survives beside the overridden heap
    # Environment overrides still apply last, over the merged files.
    assert load_settings(overlay, env={"LAKEHOUSE_KAFKA__EMBEDDED__HEAP": "1g"}
                         ).kafka.embedded.heap == "1g"


def test_overlay_of_an_overlay(tmp_path: Path) -> None:
    mine = tmp_path / "prod.yaml"  # a user's copy elsewhere, over the shipped cluster.yaml
    mine.write_text(f"extends: {CONF / 'cluster.yaml'}\n"
                    "kafka: {bootstrap: 'kafka.prod:9092'}\nspark: {shuffle_partitions: 200}\n")
    s, cluster = load_settings(mine, env={}), load_settings(CONF / "cluster.yaml", env={})
    assert (s.kafka.bootstrap, s.spark.shuffle_partitions) == ("kafka.prod:9092", 200)
    assert s.spark.master == "" and s.kafka.topics["user_actions"].partitions == 24  # cluster's
    assert s.gold == cluster.gold and s.streaming == cluster.streaming  # base's, via cluster
    # Relative `extends` is relative to the file that names it, not to the cwd.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.yaml").write_text("extends: ../prod.yaml\ngold: {window: 1 minute}\n")
    s2 = load_settings(tmp_path / "sub" / "more.yaml", env={})
    assert (s2.gold.window, s2.kafka.bootstrap) == ("1 minute", "kafka.prod:9092")


def test_extends_cycle_is_a_clear_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\ngold: {window: 1 minute}\n")
    with pytest.raises(SettingsError) as err:
        load_settings(a, env={})
    assert str(err.value) == f"{b}: extends: cycle {a} -> {b} -> {a}"
    a.write_text("extends: a.yaml\n")
    with pytest.raises(SettingsError, match="a.yaml: extends: cycle .*a.yaml -> .*a.yaml$"):
        load_settings(a, env={})


def test_missing_or_bad_base_names_the_file(tmp_path: Path) -> None:
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("extends: nowhere.yaml\ngold: {window: 1 minute}\n")
    with pytest.raises(SettingsError) as err:
        load_settings(overlay, env={})
    assert str(err.value) == (
        f"{overlay}: extends: config file not found: {tmp_path / 'nowhere.yaml'}")
    result = runner.invoke(app, ["up", "--conf", str(overlay)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"lakehouse: error: {err.value}"]

    (tmp_path / "nowhere.yaml").write_text("gold: [unclosed\n")
    base = re.escape(str(tmp_path / "nowhere.yaml"))
    with pytest.raises(SettingsError, match=f"^{base}: not valid YAML"):
        load_settings(overlay, env={})
    overlay.write_text("extends: [base.yaml]\n")
    with pytest.raises(SettingsError, match="mine.yaml: extends: expected the path of a conf"):
        load_settings(overlay, env={})


def test_cli_user_error_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--conf", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"lakehouse: error: config file not found: {tmp_path / 'missing.yaml'}"]


def test_cli_missing_jdk_is_one_line_exit_1(tmp_path: Path, monkeypatch) -> None:
    """The project jar is compiled before Spark starts: no javac is a user error."""
    from pipelines.runtime import jvm

    monkeypatch.setattr(jvm, "JAR_CACHE", tmp_path / "jars")
    monkeypatch.setattr(jvm.shutil, "which", lambda _: None)
    result = runner.invoke(app, ["reconcile"])
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

    from pipelines.runtime.spark import fair_pools_xml
    from pipelines.settings import PoolSettings

    xml = fair_pools_xml({"silver_events": PoolSettings(weight=2, min_share=2),
                          'odd "name" <&>': PoolSettings()})
    pools = {p.get("name"): (p.findtext("schedulingMode"), p.findtext("weight"),
                             p.findtext("minShare")) for p in ET.fromstring(xml).iter("pool")}
    assert pools == {"silver_events": ("FIFO", "2", "2"), 'odd "name" <&>': ("FIFO", "1", "0")}
    with pytest.raises(SettingsError, match="spark.pools.silver_events.weight"):
        load_settings(env={"LAKEHOUSE_SPARK__POOLS__SILVER_EVENTS__WEIGHT": "0"})


def test_configured_pools_name_real_queries() -> None:
    # A pool is matched by the query's name: a misspelt one would be a pool nothing runs in.
    from pipelines.catalog import STREAMS
    from pipelines.settings import DEFAULT_CONF

    for conf in (DEFAULT_CONF, DEFAULT_CONF.with_name("cluster.yaml")):
        assert set(load_settings(conf, env={}).spark.pools) <= {s.query for s in STREAMS}, conf
