"""The traffic simulator: exact labels, realistic shape, determinism, manifest."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from pipelines.schemas.registry import classify, latest_version, load_schema, v1_event_id
from pipelines.settings import load_settings
from pipelines.simulate.generator import (
    DUP_RECENT,
    SimRecord,
    build_manifest,
    generate,
    parse_duration,
)

N, SEED = 20_000, 11
SETTINGS = load_settings(env={})
SIM, LIMIT = SETTINGS.simulate, SETTINGS.streaming.max_record_bytes
KEY_FIELDS = {"user_actions": "userId", "content_uploads": "mediaId", "system_events": "host"}


@pytest.fixture(scope="module")
def records() -> list[SimRecord]:
    return list(generate(SIM, N, SEED, LIMIT))


@pytest.fixture(scope="module")
def verdicts(records: list[SimRecord]) -> list:
    return [classify(r.event_type, r.value, LIMIT) for r in records]


def test_exact_number_and_ratios(records: list[SimRecord]) -> None:
    assert len(records) == N
    kinds = Counter(r.kind for r in records)
    assert kinds == {
        "valid": N - sum(round(N * r) for r in (*SIM.bad.model_dump().values(),
                                                 SIM.duplicate_ratio)),
        "duplicate": round(N * SIM.duplicate_ratio),
        "invalid_json": round(N * SIM.bad.invalid_json),
        "schema_violation": round(N * SIM.bad.schema_violation),
        "unknown_version": round(N * SIM.bad.unknown_version),
        "oversize": round(N * SIM.bad.oversize),
    }  # fmt: skip
    valid = Counter(r.topic_kind for r in records if r.kind == "valid")
    # New media at their ratio, after the starting catalog's announcements.
    assert valid["content_uploads"] == round(N * SIM.upload_ratio) + SIM.media
    assert valid["system_events"] == round(N * SIM.system_ratio)
    assert sum(r.late for r in records) == round(N * SIM.late_ratio)


def test_every_record_gets_exactly_its_verdict(records: list[SimRecord], verdicts: list) -> None:
    wrong = [
        (r.kind, v.error_code, r.value[:120])
        for r, v in zip(records, verdicts, strict=True)
        if v.error_code != (None if r.kind in ("valid", "duplicate") else r.kind)
    ]
    assert wrong == []


def test_valid_events_upcast_to_the_latest_schema(records: list[SimRecord], verdicts: list) -> None:
    validators = {
        e: jsonschema.Draft7Validator(load_schema(e, latest_version(e)))
        for e in ("user_action", "content_upload", "system_event")
    }
    unknown_devices = 0
    for record, verdict in zip(records, verdicts, strict=True):
        if record.kind != "valid":
            continue
        event = dict(verdict.event)
        assert event["eventId"] == record.event_id
        assert event["timestamp"] == record.event_time
        assert verdict.schema_version == record.schema_version
        if event.get("device") == "unknown":  # upcast v1: documented, not a v2 device
            unknown_devices += 1
            assert (event["sessionId"], event["positionMs"]) == (None, None)
            event = {k: v for k, v in event.items() if v is not None and k != "device"}
        errors = [e.message for e in validators[record.event_type].iter_errors(event)]
        assert errors == [], record.value
    v1_count = sum(r.kind == "valid" and r.schema_version == 1 and r.event_type == "user_action"
                   for r in records)  # fmt: skip
    assert unknown_devices == v1_count > 0


def test_event_ids_are_unique_and_v1_ids_follow_the_formula(records: list[SimRecord]) -> None:
    valid = [r for r in records if r.kind == "valid"]
    assert len({r.event_id for r in valid}) == len(valid)
    for r in valid:
        payload = json.loads(r.value)
        if "schemaVersion" not in payload:
            assert r.event_id == v1_event_id(payload)
            assert set(payload) == {"userId", "action", "timestamp", "mediaId"}
            assert payload["action"] in {"play", "pause", "skip"}


def test_duplicates_resend_an_earlier_valid_record(records: list[SimRecord]) -> None:
    seen: dict[bytes, SimRecord] = {}
    ages = []
    for i, r in enumerate(records):
        if r.kind == "valid":
            seen[r.value] = (i, r)
        elif r.kind == "duplicate":
            assert r.value in seen, "duplicate before its original"
            j, original = seen[r.value]
            assert (r.key, r.topic_kind, r.event_id) == (
                original.key, original.topic_kind, original.event_id
            )  # fmt: skip
            ages.append(i - j)
    assert len(ages) == round(N * SIM.duplicate_ratio)
    # Some soon after (from the last DUP_RECENT valid records), some from further back.
    assert min(ages) < DUP_RECENT < max(ages)


def test_keys_follow_the_contract(records: list[SimRecord]) -> None:
    for r in records:
        if r.kind in ("valid", "duplicate"):
            assert r.key.decode() == json.loads(r.value)[KEY_FIELDS[r.topic_kind]]
        else:
            assert r.key


def test_bad_records_are_varied(records: list[SimRecord], verdicts: list) -> None:
    details = {v.error_detail.split(":")[0] for r, v in zip(records, verdicts, strict=True)
               if r.kind == "schema_violation"}  # fmt: skip
    assert {"action", "timestamp", "positionMs", "eventId", "device"} <= details
    oversize = [len(r.value) for r in records if r.kind == "oversize"]
    assert min(oversize) > LIMIT
    # Unknown to the record's event type (content_upload has no version 2 yet).
    versions = {(r.event_type, json.loads(r.value)["schemaVersion"]) for r in records
                if r.kind == "unknown_version"}  # fmt: skip
    assert versions and all(isinstance(v, int) and v > latest_version(e) for e, v in versions)
    assert max(len(r.value) for r in records if r.kind != "oversize") < LIMIT
    bad_topics = Counter(r.topic_kind for r in records if r.kind not in ("valid", "duplicate"))
    assert bad_topics["user_actions"] > bad_topics["system_events"] > 0


def test_manifest_matches_an_independent_recount(records: list[SimRecord]) -> None:
    manifest = build_manifest(iter(records))
    valid = Counter(r.topic_kind for r in records if r.kind == "valid")
    bad = Counter(r.kind for r in records if r.kind != "valid")
    assert manifest["expected"] == {
        "silver": {t: valid[t] for t in ("user_actions", "content_uploads", "system_events")},
        "quarantine": {k: bad[k] for k in ("invalid_json", "schema_violation",
                                             "unknown_version", "oversize", "duplicate")},
    }  # fmt: skip
    assert manifest["total"] == N
    assert manifest["late"] == sum(r.late for r in records)
    assert manifest["by_topic"] == dict(Counter(r.topic_kind for r in records))
    pairs = Counter((r.topic_kind, r.kind) for r in records)
    assert {
        (t, k): n for t, ks in manifest["by_topic_kind"].items() for k, n in ks.items() if n
    } == dict(pairs)
    unique = Counter(r.event_type for r in records if r.kind == "valid")
    assert manifest["unique_valid_events"] == dict(unique)


def test_same_seed_same_stream_other_seed_other_stream(records: list[SimRecord]) -> None:
    assert list(generate(SIM, N, SEED, LIMIT)) == records
    other = {r.value for r in generate(SIM, N, SEED + 1, LIMIT) if r.kind == "valid"}
    assert other.isdisjoint(r.value for r in records if r.kind == "valid")


def test_shuffle_reorders_within_blocks_only(records: list[SimRecord]) -> None:
    shuffled = list(generate(SIM, N, SEED, LIMIT, shuffle=True))
    assert shuffled != records
    assert Counter(r.value for r in shuffled) == Counter(r.value for r in records)
    assert shuffled[:2000] != records[:2000]
    assert Counter(r.value for r in shuffled[:2000]) == Counter(r.value for r in records[:2000])


def _times(records: list[SimRecord]) -> list[datetime]:
    return [datetime.fromisoformat(r.event_time) for r in records if r.kind == "valid"]


def test_timeline_daily_rhythm_and_late_events(records: list[SimRecord]) -> None:
    start = datetime.fromisoformat(SIM.start)
    times = _times(records)
    on_time = [t for r, t in zip([r for r in records if r.kind == "valid"], times, strict=True)
               if not r.late]  # fmt: skip
    assert start - timedelta(minutes=1) <= min(on_time)
    assert max(on_time) <= start + timedelta(days=SIM.days)
    by_hour = Counter(t.hour for t in on_time)
    assert by_hour[20] > 3 * by_hour[4]  # evenings are busy, nights quiet
    # a late event is `late_by` older than the stream around it
    late_by = parse_duration(SIM.late_by)
    valid = [r for r in records if r.kind == "valid"]
    for i, r in enumerate(valid):
        if r.late and 50 < i < len(valid) - 50:
            around = sorted(datetime.fromisoformat(v.event_time) for v in valid[i - 50 : i + 50]
                            if not v.late)  # fmt: skip
            gap = around[len(around) // 2] - datetime.fromisoformat(r.event_time)
            assert late_by - timedelta(minutes=30) < gap < late_by + timedelta(minutes=30)


def test_sessions_are_plausible(records: list[SimRecord]) -> None:
    sessions: dict[str, list[dict]] = {}
    for r in records:
        if r.kind == "valid" and r.topic_kind == "user_actions" and not r.late:
            p = json.loads(r.value)
            if p.get("sessionId"):
                sessions.setdefault(p["sessionId"], []).append(p)
    assert len(sessions) > 500
    outcomes = Counter()
    for actions in sessions.values():
        assert actions[0]["action"] == "play"
        positions = [a["positionMs"] for a in actions]
        assert positions == sorted(positions)
        stamps = [a["timestamp"] for a in actions]
        assert stamps == sorted(stamps)
        assert all(a["action"] not in ("complete", "skip") for a in actions[:-1])
        outcomes[actions[-1]["action"]] += 1
    assert outcomes["complete"] > 0 and outcomes["skip"] > 0 and outcomes["pause"] > 0
    actions = Counter(json.loads(r.value)["action"] for r in records
                      if r.kind == "valid" and r.topic_kind == "user_actions")  # fmt: skip
    assert set(actions) == {"play", "pause", "skip", "seek", "complete"}


def test_the_starting_catalog_is_announced_first(records: list[SimRecord]) -> None:
    first = [json.loads(r.value) for r in records[: SIM.media]]
    assert [r.topic_kind for r in records[: SIM.media]] == ["content_uploads"] * SIM.media
    assert [u["mediaId"] for u in first] == [f"m-{i + 1:06d}" for i in range(SIM.media)]
    assert {u["genre"] for u in first} == set(SIM.genres)
    assert all(u["creatorId"] for u in first)


def test_users_have_strong_genre_tastes(records: list[SimRecord]) -> None:
    uploads = [json.loads(r.value) for r in records[SIM.media:]
               if r.kind == "valid" and r.topic_kind == "content_uploads"]  # fmt: skip
    assert uploads and all(u["mediaId"] > f"m-{SIM.media:06d}" for u in uploads)
    watched = Counter()
    per_user: dict[str, Counter] = {}
    for r in records:
        if r.kind == "valid" and r.topic_kind == "user_actions":
            p = json.loads(r.value)
            per_user.setdefault(p["userId"], Counter())[p["mediaId"]] += 1
            watched[p["mediaId"]] += 1
    # Zipf: the top 10% of media get far more than 10% of actions.
    top = sum(n for _, n in watched.most_common(SIM.media // 10))
    assert top > 0.3 * sum(watched.values())
    new_media = {u["mediaId"] for u in uploads}
    assert new_media & set(watched)  # newly uploaded media do get watched


def test_system_events_have_a_fleet_and_high_cpu_runs(records: list[SimRecord]) -> None:
    events = [json.loads(r.value) for r in records
              if r.kind == "valid" and r.topic_kind == "system_events"]  # fmt: skip
    status = [e for e in events if e["kind"] == "server_status"]
    assert len({e["host"] for e in status}) == SIM.hosts
    assert {e["status"] for e in status} == {"up", "degraded", "down"}
    assert any(e.get("cpuPct", 0) > SETTINGS.gold.high_cpu_pct for e in status)
    scaling = [e for e in events if e["kind"] == "resource_allocation"]
    assert scaling and all(e["instances"] >= 1 for e in scaling)


def test_wall_clock_mode_starts_now() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    recs = list(generate(SIM, 2000, 3, LIMIT, now=now, span=timedelta(seconds=60)))
    on_time = [datetime.fromisoformat(r.event_time) for r in recs
               if r.kind == "valid" and not r.late]  # fmt: skip
    assert now <= min(on_time) and max(on_time) < now + timedelta(minutes=30)


def test_small_record_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_record_bytes"):
        next(generate(SIM, 10, 1, 100))


class _FakeFuture:
    def add_errback(self, _callback) -> None:  # noqa: ANN001
        pass


class _FakeProducer:
    def __init__(self, log: list) -> None:
        self.log = log

    def send(self, topic: str, key: bytes | None, value: bytes) -> _FakeFuture:
        self.log.append((topic, key, value))
        return _FakeFuture()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_pregenerate_sends_the_same_records(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from pipelines.simulate import producer

    settings = load_settings(env={"LAKEHOUSE_SIMULATE__MANIFEST_DIR": str(tmp_path)})
    sent: dict[bool, list] = {True: [], False: []}
    manifests = {}
    for pregenerate in (False, True):
        monkeypatch.setattr(producer, "_producer", lambda _b, p=pregenerate: _FakeProducer(sent[p]))
        manifests[pregenerate] = producer.simulate(
            settings, 3000, seed=4, progress=False, pregenerate=pregenerate)
    assert sent[True] == sent[False] and len(sent[True]) == 3000
    assert manifests[True]["expected"] == manifests[False]["expected"]
    assert manifests[False]["pregenerate_seconds"] is None
    assert manifests[True]["pregenerate_seconds"] > 0


class _FakeTime:
    """A clock that only moves when slept on; each sleep lasts `late` times what was asked
    (a machine busy with Spark wakes sleepers late)."""

    def __init__(self, late: float = 1.0) -> None:
        self.now, self.late, self.sleeps = 0.0, late, 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds * self.late


@pytest.mark.parametrize("late", [1.0, 5.0])
def test_token_bucket_holds_its_rate_even_when_sleeps_overrun(late: float) -> None:
    from pipelines.simulate.producer import TokenBucket

    fake = _FakeTime(late)
    bucket = TokenBucket(5000, clock=fake.clock, sleep=fake.sleep)
    for _ in range(25_000):
        bucket.take()
    # 5,000 go at once (one second of burst), the other 20,000 take 4 s at 5,000/s; a
    # late wake-up is made up by the next records, not lost.
    assert fake.now == pytest.approx(4.0, abs=0.06)
    # In 10 ms steps (50 records each), not one sleep per record.
    assert fake.sleeps <= 20_000 / 50 + 1
