"""Silver: classification, typing, dedup and quarantine; exact counts end to end."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from functools import partial

import pyarrow as pa
import pytest
from helpers import bronze_df, delta_rows, delta_table, delta_versions, sigkill_stream
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.schemas.registry import v1_event_id
from pipelines.silver.classify import classify_records, to_events
from pipelines.silver.dedup import rank_in_batch
from pipelines.silver.fastpath import fast_classify
from pipelines.silver.job import ensure_silver, process_batch
from pipelines.silver.tables import SilverConf

UA, CU = "media.user-actions", "media.content-uploads"
TOPIC_TYPES = {UA: "user_action", CU: "content_upload"}
V1 = {"userId": "u1", "action": "play", "timestamp": "2026-11-01T10:00:00+01:00", "mediaId": "m1"}
V2 = {"schemaVersion": 2, "eventId": "0b7e7f43-4a54-4c1f-9d8e-2f3a4b5c6d7e", "userId": "u2",
      "action": "seek", "timestamp": "2026-11-01T09:30:00Z", "mediaId": "m2",
      "positionMs": 1500, "device": "tv"}
_compact = partial(json.dumps, separators=(",", ":"))


def test_classify_records_routes_each_kind(spark) -> None:
    rows = [
        (UA, 0, 1, json.dumps(V1)),
        (UA, 0, 2, json.dumps(V2)),
        (UA, 0, 3, '{"userId": '),
        (UA, 0, 4, json.dumps({**V2, "action": "rewind"})),
        (UA, 0, 5, json.dumps({**V2, "schemaVersion": 7})),
        (UA, 0, 6, "x" * 300),
        (UA, 0, 7, b"\xc3\x28"),
        ("other.topic", 0, 8, json.dumps(V2)),
    ]
    out = classify_records(bronze_df(spark, rows), TOPIC_TYPES, max_bytes=256)
    assertDataFrameEqual(
        out.select("offset", "error_code", "schema_version"),
        [(1, None, 1), (2, None, 2), (3, "invalid_json", None), (4, "schema_violation", 2),
         (5, "unknown_version", 7), (6, "oversize", None), (7, "invalid_json", None),
         (8, "schema_violation", None)],
    )
    details = dict(out.select("offset", "error_detail").collect())
    assert details[4] == (
        "action: 'rewind' is not one of ['play', 'pause', 'skip', 'seek', 'complete']"
    )
    assert details[6] == "record is 300 bytes, the limit is 256"
    assert details[7].startswith("not UTF-8")


def test_to_events_types_and_upcasts(spark) -> None:
    rows = [(UA, 0, 1, json.dumps(V1)), (UA, 1, 9, json.dumps(V2))]
    classified = classify_records(bronze_df(spark, rows), TOPIC_TYPES, max_bytes=4096)
    events = to_events(classified, "user_action").drop("processed_at")
    expected = [
        (v1_event_id(V1), "u1", "play", dt.datetime(2026, 11, 1, 9, 0), "m1", None, None,
         "unknown", 1, UA, 0, 1, dt.date(2026, 11, 1)),
        (V2["eventId"], "u2", "seek", dt.datetime(2026, 11, 1, 9, 30), "m2", None, 1500,
         "tv", 2, UA, 1, 9, dt.date(2026, 11, 1)),
    ]
    assertDataFrameEqual(events, spark.createDataFrame(expected, events.schema))


def test_rank_in_batch_points_duplicates_at_first(spark) -> None:
    rows = [(UA, 1, 5, json.dumps(V2)), (UA, 0, 9, json.dumps(V2)),
            (UA, 0, 3, json.dumps(V1))]
    classified = classify_records(bronze_df(spark, rows), TOPIC_TYPES, max_bytes=4096)
    ranked = rank_in_batch(to_events(classified, "user_action"))
    assertDataFrameEqual(
        ranked.select("source_partition", "source_offset", "first_partition", "first_offset"),
        [(1, 5, 0, 9), (0, 9, 0, 9), (0, 3, 0, 3)],
    )


def test_process_batch_dedups_across_batches_and_replays(spark, lake) -> None:
    s = lake.settings
    ua = s.topic("user_actions").name
    batch1 = bronze_df(spark, [(ua, 0, 1, json.dumps(V1)), (ua, 0, 2, json.dumps(V1)),
                               (ua, 0, 3, "nope")])
    ensure_silver(spark, s)
    process_batch(batch1, 0, SilverConf.from_settings(s), "query-a")
    # A replay after a crash: Delta skips the appends.
    process_batch(batch1, 0, SilverConf.from_settings(s), "query-a")
    # The same records under a new checkpoint (another writer id, batch ids from 0):
    # every record finds itself in silver or quarantine, nothing is added.
    process_batch(batch1, 0, SilverConf.from_settings(s), "query-b")
    batch2 = bronze_df(spark, [(ua, 1, 40, json.dumps(V1)), (ua, 1, 41, json.dumps(V2))])
    process_batch(batch2, 1, SilverConf.from_settings(s), "query-b")
    silver = spark.read.format("delta").load(s.lakehouse.table_path("silver", "user_actions"))
    assertDataFrameEqual(
        silver.select("event_id", "source_partition", "source_offset"),
        [(v1_event_id(V1), 0, 1), (V2["eventId"], 1, 41)],
    )
    quarantine = spark.read.format("delta").load(s.lakehouse.table_path("silver", "quarantine"))
    assertDataFrameEqual(
        quarantine.select("partition", "offset", "error_code", "error_detail"),
        [(0, 2, "duplicate", f"duplicate: event_id {v1_event_id(V1)} was already accepted "
                             f"from {ua}[0]@1"),
         (0, 3, "invalid_json", "not JSON: Expecting value: line 1 column 1 (char 0)"),
         (1, 40, "duplicate", f"duplicate: event_id {v1_event_id(V1)} was already accepted "
                              f"from {ua}[0]@1")],
    )


SE = "media.system-events"
SE1 = {"schemaVersion": 1, "eventId": "2b7e7f43-4a54-4c1f-9d8e-2f3a4b5c6d7e", "host": "h1",
       "service": "api", "kind": "server_status", "timestamp": "2026-11-01T10:00:00Z"}
# Records Python's json reads but silver must not store as read: each is quarantined
# with this code and detail, and none reaches a silver table.
HOSTILE = [
    (UA, _compact({**V2, "positionMs": 2**70}).encode(), "schema_violation",
     "positionMs: 1180591620717411303424 does not fit a 64-bit integer"),
    (UA, _compact(V2).replace('"u2"', '"u\\ud800"').encode(), "invalid_json",
     "userId: not valid Unicode (a lone surrogate escape)"),
    (UA, (_compact(V2)[:-1] + ',"userId":"u3"}').encode(), "invalid_json",
     "userId: the key appears twice in one object"),
    (UA, _compact(V2).encode().replace(b'"u2"', b'"Zo\xeb"'), "invalid_json",
     "not UTF-8: 'utf-8' codec can't decode byte 0xeb in position 80: invalid "
     "continuation byte"),
    (UA, _compact(V2).encode().replace(b'"u2"', b'"\xed\xa0\x80"'), "invalid_json",
     "not UTF-8: 'utf-8' codec can't decode byte 0xed in position 78: invalid "
     "continuation byte"),
    (SE, _compact(SE1)[:-1].encode() + b',"cpuPct":1e400}', "schema_violation",
     "cpuPct: 1e400 does not fit a double"),
    (SE, _compact(SE1)[:-1].encode() + b',"cpuPct":NaN}', "invalid_json",
     "not JSON: NaN is not a JSON number"),
]


def test_values_python_would_alter_go_to_quarantine_not_silver(spark, lake) -> None:
    s = lake.settings
    topics = {UA: s.topic("user_actions").name, SE: s.topic("system_events").name}
    rows = [(topics[t], 0, i, value) for i, (t, value, _, _) in enumerate(HOSTILE)]
    ensure_silver(spark, s)
    process_batch(bronze_df(spark, rows), 0, SilverConf.from_settings(s), "query")
    for table in ("user_actions", "system_events"):
        assert delta_table(lake, "silver", table).to_pyarrow_table().num_rows == 0
    quarantine = spark.read.format("delta").load(s.lakehouse.table_path("silver", "quarantine"))
    assertDataFrameEqual(
        quarantine.select("offset", "value", "error_code", "error_detail"),
        [(i, bytearray(value), code, detail) for i, (_, value, code, detail) in enumerate(HOSTILE)],
    )


def test_an_id_reused_on_another_date_is_moved_by_reconcile(spark, lake) -> None:
    """The stream looks ids up in the event-date partitions of its batch: an id reused
    with another date (another partition) passes it, and `reconcile`'s sweep moves the
    later copy to quarantine, deletes it from silver and recomputes the gold keys it
    fed; bronze = silver + quarantine again. Ids are unique per table: an upload with
    the same id is a new upload."""
    from pipelines.gold.engagement import (
        GOLD_KEYS,
        KEY_COLUMNS,
        EngagementConf,
        ensure_tables,
        gold_frames,
        refresh,
    )
    from pipelines.gold.reconcile import reconcile

    s = lake.settings
    ua, cu = s.topic("user_actions").name, s.topic("content_uploads").name
    moved = {**V2, "timestamp": "2026-11-05T09:30:00Z"}
    # A lower-case `z`: valid, but the JVM fast path leaves it to the Python classifier.
    upload = {"schemaVersion": 1, "eventId": V2["eventId"], "mediaId": "m9",
              "creatorId": "c1", "timestamp": "2026-11-05T09:30:00z"}
    rows = [(ua, 0, 1, _compact(V2)), (ua, 0, 2, _compact(moved)), (cu, 0, 7, _compact(upload))]
    fast = fast_classify(bronze_df(spark, rows[1:]), {ua: "user_action", cu: "content_upload"},
                         4096)
    assert [r.offset for r in fast.filter("NOT _suspect").collect()] == [2]
    bronze = bronze_df(spark, rows).withColumn("kafka_timestamp", F.current_timestamp())
    bronze.write.format("delta").save(s.lakehouse.table_path("bronze", "events"))
    ensure_silver(spark, s)
    process_batch(bronze_df(spark, rows[:1]), 0, SilverConf.from_settings(s), "query")
    process_batch(bronze_df(spark, rows[1:]), 1, SilverConf.from_settings(s), "query")
    silver_path = s.lakehouse.table_path("silver", "user_actions")
    assert spark.read.format("delta").load(silver_path).count() == 2  # passed the lookup
    conf = EngagementConf.from_settings(s)
    ensure_tables(spark, conf)
    refresh(spark, conf, spark.read.format("delta").load(silver_path).select(*KEY_COLUMNS))

    counts = reconcile(spark, s)
    assert (counts["duplicates"], counts["swept"]) == (1, 1)
    actions = spark.read.format("delta").load(silver_path)
    assertDataFrameEqual(actions.select("event_id", "source_offset"), [(V2["eventId"], 1)])
    quarantine = spark.read.format("delta").load(s.lakehouse.table_path("silver", "quarantine"))
    assertDataFrameEqual(
        quarantine.select("offset", "value", "error_code", "error_detail"),
        [(2, bytearray(_compact(moved).encode()), "duplicate",
          f"duplicate: event_id {V2['eventId']} was already accepted from {ua}[0]@1")],
    )
    uploads = spark.read.format("delta").load(s.lakehouse.table_path("silver", "content_uploads"))
    assertDataFrameEqual(uploads.select("event_id", "source_offset"), [(V2["eventId"], 7)])
    # Gold is what silver now holds: the moved copy's window, session and days are gone.
    for table, expected in gold_frames(actions, conf).items():
        got = spark.read.format("delta").load(conf.gold[table])
        assertDataFrameEqual(got.orderBy(*GOLD_KEYS[table]), expected.orderBy(*GOLD_KEYS[table]))
    sweeps = spark.read.format("delta").load(s.lakehouse.table_path("ops", "duplicate_sweeps"))
    assertDataFrameEqual(
        sweeps.select("event_type", "source_offset", "first_offset", "media_id",
                      F.col("reconciled_at").isNotNull().alias("reconciled")),
        [("user_action", 2, 1, "m2", True)],
    )
    # Nothing left: a second reconcile moves and recomputes nothing.
    again = reconcile(spark, s)
    assert (again["duplicates"], again["swept"], again["late_events"]) == (0, 0, 0)


# ---------------------------------------------------------------- end to end


def _assert_matches_manifest(lake, manifest: dict) -> None:
    expected = manifest["expected"]
    for table, n in expected["silver"].items():
        rows = delta_rows(lake, "silver", table)
        assert len(rows) == n, table
        assert len({r["event_id"] for r in rows}) == n, f"duplicate event_id in {table}"
    codes = Counter(r["error_code"] for r in delta_rows(lake, "silver", "quarantine"))
    assert codes == {k: v for k, v in expected["quarantine"].items() if v}
    bronze = delta_rows(lake, "bronze", "events")
    assert len(bronze) == manifest["total"]


@pytest.mark.slow
def test_silver_survives_sigkill_mid_batch(spark, kafka_lake) -> None:
    from pipelines.runtime.runner import run_layers
    from pipelines.simulate.producer import simulate

    manifest = simulate(kafka_lake.settings, 12_000, seed=3, progress=False)
    lake = kafka_lake
    run_layers(spark, lake.settings, ["bronze"], available_now=True)
    # A batch writes its four tables side by side: kill as soon as any one of them has
    # committed (version 1; version 0 is the empty table), the others mostly not yet.
    tables = [
        lake.settings.lakehouse.table_path("silver", t)
        for t in ("user_actions", "content_uploads", "system_events", "quarantine")
    ]
    sigkill_stream(lake, "silver", lambda: max(delta_versions(t) for t in tables) >= 2,
                   poll_s=0.1)
    # The restart: another process (this one) from the killed run's checkpoint.
    run_layers(spark, lake.settings, ["silver"], available_now=True)
    _assert_matches_manifest(lake, manifest)

    # A lost checkpoint: silver reads bronze from the start again, finds every record
    # already held (a replay under a new query id) and adds nothing.
    shutil.rmtree(lake.settings.lakehouse.checkpoint("silver_events"))
    run_layers(spark, lake.settings, ["silver"], available_now=True)
    _assert_matches_manifest(lake, manifest)


def test_silver_tables_keep_statistics_of_their_filter_columns_only(spark, lake) -> None:
    s = lake.settings
    ua = s.topic("user_actions").name
    ensure_silver(spark, s)
    process_batch(bronze_df(spark, [(ua, 0, 1, json.dumps(V2)), (ua, 0, 2, "{")]),
                  0, SilverConf.from_settings(s), "query-a")
    for table, expected in [("user_actions", {"event_time", "user_id", "media_id"}),
                            ("quarantine", {"topic", "error_code", "partition", "offset"})]:
        actions = pa.table(delta_table(lake, "silver", table).get_add_actions(
            flatten=True)).to_pydict()
        assert actions["num_records"] == [1]
        assert {k.removeprefix("min.") for k in actions if k.startswith("min.")} == expected
