"""End to end on a real broker: 100,000 simulated events, shuffled, with late
arrivals, bad records and resends -> bronze -> silver -> gold -> reconcile.

Silver is checked against the simulator's manifest; every gold table against a
recomputation of the contract's definitions written here in pandas, from silver.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import Lake
from helpers import delta_table

N_EVENTS = 100_000
WINDOW = pd.Timedelta(minutes=5)
GAP = pd.Timedelta(minutes=30)


def _read(lake: Lake, layer: str, table: str) -> pd.DataFrame:
    return delta_table(lake, layer, table).to_pandas()


@pytest.fixture(scope="module")
def pipeline_run(request, kafka, broker_env, tmp_path_factory):  # noqa: ANN001, ANN201
    """Simulate, then drain every layer in several micro-batches, then reconcile."""
    from pipelines.gold.reconcile import reconcile
    from pipelines.runtime.kafka.embedded import ensure_topics
    from pipelines.runtime.runner import run_layers
    from pipelines.settings import load_settings
    from pipelines.simulate.producer import simulate

    spark = request.getfixturevalue("spark")
    root = tmp_path_factory.mktemp("e2e")
    env = {
        **broker_env,
        "LAKEHOUSE_ROOT": str(root / "lake"),
        "LAKEHOUSE_SIMULATE__MANIFEST_DIR": str(root / "manifests"),
        # Several micro-batches per layer, so the gold watermark moves and
        # events arriving after it has passed them are really late.
        "LAKEHOUSE_STREAMING__MAX_OFFSETS_PER_TRIGGER": "25000",
        "LAKEHOUSE_STREAMING__MAX_FILES_PER_TRIGGER": "12",
    }
    for kind in ("user_actions", "content_uploads", "system_events", "notifications"):
        env[f"LAKEHOUSE_KAFKA__TOPICS__{kind.upper()}__NAME"] = f"e2e.{kind}"
    lake = Lake(load_settings(env=env), env)
    ensure_topics(lake.settings.kafka)
    manifest = simulate(lake.settings, N_EVENTS, seed=2026, progress=False, shuffle=True)
    run_layers(spark, lake.settings, ["bronze", "silver", "gold"], available_now=True)
    late_before = _read(lake, "ops", "late_events")
    reconciled = reconcile(spark, lake.settings)
    return lake, manifest, late_before, reconciled


@pytest.mark.slow
def test_silver_matches_manifest_and_accounting(pipeline_run, spark) -> None:
    from pipelines.ops.accounting import accounting

    lake, manifest, _, _ = pipeline_run
    expected = manifest["expected"]
    assert all(expected["quarantine"].values()), "every bad kind must be in the run"
    for table, n in expected["silver"].items():
        ids = _read(lake, "silver", table)["event_id"]
        assert len(ids) == n, table
        assert ids.is_unique, f"duplicate event_id in silver.{table}"
    codes = Counter(_read(lake, "silver", "quarantine")["error_code"])
    assert codes == {k: v for k, v in expected["quarantine"].items() if v}
    assert len(_read(lake, "bronze", "events")) == N_EVENTS
    report = accounting(spark, lake.settings)
    assert [r for r in report if not r["balanced"]] == []
    assert sum(r["bronze"] for r in report) == N_EVENTS


@pytest.mark.slow
def test_late_events_were_recorded_and_reconciled(pipeline_run) -> None:
    lake, manifest, late_before, reconciled = pipeline_run
    assert manifest["late"] > 0
    assert len(late_before) > 0, "the run should have produced events behind the watermark"
    assert reconciled["late_events"] == late_before["reconciled_at"].isna().sum()
    assert _read(lake, "ops", "late_events")["reconciled_at"].notna().all()


# ---------------------------------------------------------------- independent gold


def _actions(lake: Lake) -> pd.DataFrame:
    a = _read(lake, "silver", "user_actions")[
        ["event_id", "user_id", "media_id", "action", "event_time", "event_date"]
    ]
    a["event_time"] = pd.to_datetime(a["event_time"]).dt.tz_localize(None)
    return a.sort_values(["user_id", "media_id", "event_time", "event_id"], ignore_index=True)


def _expected_engagement(a: pd.DataFrame) -> pd.DataFrame:
    a = a.assign(window_start=a["event_time"].dt.floor(WINDOW))
    counts = pd.crosstab([a["media_id"], a["window_start"]], a["action"])
    for action in ("play", "pause", "skip", "seek", "complete"):
        if action not in counts:
            counts[action] = 0
    out = pd.DataFrame({
        "plays": counts["play"], "pauses": counts["pause"], "skips": counts["skip"],
        "seeks": counts["seek"], "completes": counts["complete"],
        "unique_viewers": a.groupby(["media_id", "window_start"])["user_id"].nunique(),
    }).reset_index()
    out["window_end"] = out["window_start"] + WINDOW
    out["skip_rate"] = out["skips"] / out["plays"].replace(0, np.nan)
    return out


def _annotated(a: pd.DataFrame) -> pd.DataFrame:
    """Per action: its session number within (user, media) and its watch time."""
    same_pair = (a["user_id"] == a["user_id"].shift()) & (a["media_id"] == a["media_id"].shift())
    gap_break = (a["event_time"] - a["event_time"].shift()) > GAP
    after_end = a["action"].shift().isin(["complete", "skip"])
    new_session = ~same_pair | gap_break | after_end
    a = a.assign(session=new_session.cumsum())
    next_time = a.groupby("session")["event_time"].shift(-1)
    # Integer milliseconds (floor), not float seconds * 1000, which rounds down wrongly.
    watch = (next_time - a["event_time"]) // pd.Timedelta(milliseconds=1)
    a["watch_ms"] = np.where(a["action"] == "play", watch.fillna(0), 0).astype("int64")
    return a


def _expected_sessions(ann: pd.DataFrame) -> pd.DataFrame:
    g = ann.groupby("session")
    out = pd.DataFrame({
        "user_id": g["user_id"].first(), "media_id": g["media_id"].first(),
        "session_start": g["event_time"].min(), "session_end": g["event_time"].max(),
        "actions": g.size(), "watch_ms": g["watch_ms"].sum(),
        "last": g["action"].last(),
    })
    out["outcome"] = out["last"].map({"complete": "completed", "skip": "skipped"}).fillna(
        "abandoned")
    return out.drop(columns="last").reset_index(drop=True)


def _expected_daily(ann: pd.DataFrame) -> pd.DataFrame:
    g = ann.groupby(["event_date", "user_id"])
    return pd.DataFrame({
        "plays": g["action"].apply(lambda s: (s == "play").sum()),
        "skips": g["action"].apply(lambda s: (s == "skip").sum()),
        "completes": g["action"].apply(lambda s: (s == "complete").sum()),
        "distinct_media": g["media_id"].nunique(),
        "watch_ms": g["watch_ms"].sum(),
    }).reset_index()


def _compare(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    cols = list(expected.columns)
    actual = actual[cols].sort_values(keys, ignore_index=True)
    expected = expected.sort_values(keys, ignore_index=True)
    for frame in (actual, expected):
        for c in cols:
            if pd.api.types.is_datetime64_any_dtype(frame[c]):
                frame[c] = pd.to_datetime(frame[c]).dt.tz_localize(None).astype("datetime64[us]")
            elif c == "event_date":
                frame[c] = pd.to_datetime(frame[c]).dt.date
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)


@pytest.mark.slow
def test_gold_equals_independent_recomputation(pipeline_run) -> None:
    lake = pipeline_run[0]
    a = _actions(lake)
    ann = _annotated(a)

    _compare(_read(lake, "gold", "media_engagement"), _expected_engagement(a),
             ["media_id", "window_start"])
    sessions = _read(lake, "gold", "playback_sessions")
    assert sessions["session_id"].is_unique
    _compare(sessions, _expected_sessions(ann), ["user_id", "media_id", "session_start"])
    _compare(_read(lake, "gold", "user_daily_engagement"), _expected_daily(ann),
             ["event_date", "user_id"])
    dau = a.groupby("event_date")["user_id"].nunique().rename("active_users").reset_index()
    _compare(_read(lake, "gold", "daily_active_users"), dau, ["event_date"])
