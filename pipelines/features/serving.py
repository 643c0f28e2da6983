"""Serving the lists where the recommendation engine reads them: a Feast feature store.

- **Registry and offline store**: the feature view `user_top_k` reads
  features.user_recommendations through Feast's Spark offline source (a Spark SQL
  query over the Delta table: one row per user, the list in rank order).
- **Online store**: Feast's embedded SQLite file by default (`serving.online_store`);
  a production deployment points it at Redis (`type: redis`, `connection_string`).
- `lakehouse retrain` materialises the served lists after every run (`publish`); the
  gold stream rewrites the online rows of users whose list lost a completed item
  (`refresh_users`).
- `top_k(store, user_ids)` is the engine's lookup: one `get_online_features` call.

Everything lives under `<lakehouse root>/_feast` unless `serving.repo` says where.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import catalog
from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

PROJECT = "lakehouse"
VIEW = "user_top_k"
FEATURES = [f"{VIEW}:media_ids", f"{VIEW}:model_version"]


def repo_dir(settings: Settings) -> Path:
    return Path(settings.serving.repo or Path(settings.lakehouse.root) / "_feast")


def lists_query(path: str) -> str:
    """Spark SQL: one row per user of the Delta table at `path`, media in rank order."""
    return (
        "SELECT user_id, "
        "transform(array_sort(collect_list(struct(rank, media_id))), x -> x.media_id) "
        "AS media_ids, max(model_version) AS model_version, max(generated_at) AS generated_at "
        f"FROM delta.`{path}` GROUP BY user_id"
    )


# Stores already opened in this process, by repo and table: the gold stream asks for
# one every batch that takes items off lists, and applying the definitions each time
# would rewrite the registry.
_OPENED: dict[tuple[str, str], FeatureStore] = {}


def store(settings: Settings) -> FeatureStore:
    """The feature store, its definitions applied once per process."""
    key = (str(repo_dir(settings)), catalog.FEATURES_USER_RECOMMENDATIONS.path(settings))
    if key not in _OPENED:
        _OPENED[key] = _open(settings)
    return _OPENED[key]


def _open(settings: Settings) -> FeatureStore:
    from feast import Entity, FeatureStore, FeatureView, Field, RepoConfig, ValueType
    from feast.infra.offline_stores.contrib.spark_offline_store import spark  # noqa: F401
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from feast.types import Array, String

    # Feast warns on every use of its Spark source ("an experimental feature"): known,
    # and said once in the README rather than on every command's console. Set after
    # the imports: Feast's modules put filters of their own first when imported.
    warnings.filterwarnings(
        "ignore", message="The spark data source API is an experimental",
        category=RuntimeWarning,
    )

    repo = repo_dir(settings)
    repo.mkdir(parents=True, exist_ok=True)
    online = dict(settings.serving.online_store)
    if online.get("type", "sqlite") == "sqlite":
        online.setdefault("path", str(repo / "online.db"))
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(repo / "registry.db"),
        online_store=online,
        offline_store={"type": "spark"},
        entity_key_serialization_version=3,
        repo_path=repo,
    )
    fs = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = SparkSource(
        name="user_recommendations",
        query=lists_query(catalog.FEATURES_USER_RECOMMENDATIONS.path(settings)),
        timestamp_field="generated_at",
    )
    view = FeatureView(
        name=VIEW,
        entities=[user],
        ttl=timedelta(days=settings.serving.ttl_days),
        schema=[Field(name="media_ids", dtype=Array(String)),
                Field(name="model_version", dtype=String)],  # fmt: skip
        source=source,
        online=True,
    )
    fs.apply([user, view])
    return fs


def publish(spark: SparkSession, settings: Settings) -> dict[str, Any]:
    """Materialise the served lists into the online store (through the Spark offline
    source); return the users written and the seconds taken."""
    import time

    started = time.monotonic()
    fs = store(settings)
    row = (
        spark.read.format("delta")
        .load(catalog.FEATURES_USER_RECOMMENDATIONS.path(settings))
        .agg(F.max("generated_at"))
        .head()
    )
    newest = None if row is None else row[0]
    if newest is None:
        return {"users": 0, "seconds": round(time.monotonic() - started, 2)}
    end = newest.replace(tzinfo=newest.tzinfo or UTC) + timedelta(seconds=1)
    # Feast prints its progress; a command prints one line of its own.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        fs.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end)
    log.debug("feast materialize: %s", chatter.getvalue())
    users = spark.read.format("delta").load(
        catalog.FEATURES_USER_RECOMMENDATIONS.path(settings)
    ).select("user_id").distinct().count()
    return {"users": users, "seconds": round(time.monotonic() - started, 2)}


def refresh_users(spark: SparkSession, settings: Settings, users: DataFrame) -> int:
    """Rewrite the online lists of `users` (user_id) from the Delta table: after the
    stream took a completed item off their lists. Returns the users written."""
    if not repo_dir(settings).joinpath("registry.db").exists():
        return 0
    lists = spark.sql(lists_query(catalog.FEATURES_USER_RECOMMENDATIONS.path(settings))).join(
        users.distinct(), on="user_id", how="inner"
    )
    frame = lists.toPandas()
    if len(frame) == 0:
        return 0
    store(settings).write_to_online_store(VIEW, frame)
    return len(frame)


def top_k(fs: FeatureStore, user_ids: list[str]) -> dict[str, list[str] | None]:
    """The served list of each user (None for a user without one)."""
    rows = fs.get_online_features(
        features=FEATURES, entity_rows=[{"user_id": u} for u in user_ids]
    ).to_dict()
    return dict(zip(rows["user_id"], rows["media_ids"], strict=True))
