"""Typed settings, parsed once at the entry point from `conf/*.yaml` plus
`LAKEHOUSE_*` environment overrides.

A conf file may name the file it builds on with a top-level `extends: PATH` (relative
to the file itself): `conf/local.yaml` and `conf/cluster.yaml` extend `conf/base.yaml`,
which holds every setting. A file without `extends` is complete on its own."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF = PROJECT_ROOT / "conf" / "local.yaml"

# Short names the contract promises; everything else is LAKEHOUSE_<SECTION>__<KEY>.
ENV_ALIASES = {
    "LAKEHOUSE_ROOT": ("lakehouse", "root"),
    "LAKEHOUSE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "LAKEHOUSE_SPARK_MASTER": ("spark", "master"),
}

# LAKEHOUSE_* variables that choose how a command runs rather than set a key.
NOT_SETTINGS = {"LAKEHOUSE_CONF", "LAKEHOUSE_DEBUG"}


class SettingsError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LakehouseSettings(_Strict):
    root: str

    def table_path(self, layer: str, table: str) -> str:
        return f"{self.root.rstrip('/')}/{layer}/{table}"

    def checkpoint(self, query: str) -> str:
        return f"{self.root.rstrip('/')}/_checkpoints/{query}"


class TopicSettings(_Strict):
    name: str
    partitions: int = Field(ge=1)
    key: str


class EmbeddedKafkaSettings(_Strict):
    version: str
    port: int = Field(ge=1, le=65535)
    controller_port: int = Field(ge=1, le=65535)
    data_dir: str
    log_dir: str
    heap: str
    start_timeout_s: int = Field(ge=1)


class KafkaSettings(_Strict):
    bootstrap: str
    admin_timeout_s: float = Field(gt=0)
    embedded: EmbeddedKafkaSettings
    topics: dict[str, TopicSettings]

    @field_validator("topics")
    @classmethod
    def _known_topics(cls, topics: dict[str, TopicSettings]) -> dict[str, TopicSettings]:
        missing = {"user_actions", "content_uploads", "system_events", "notifications"} - set(
            topics
        )
        if missing:
            raise ValueError(f"missing topic entries: {sorted(missing)}")
        return topics

    @property
    def source_topics(self) -> list[str]:
        """Topics that producers write and bronze ingests (not our own output)."""
        return [t.name for k, t in self.topics.items() if k != "notifications"]


class PoolSettings(_Strict):
    """A FAIR scheduler pool. `min_share`: task slots the pool is served first up to;
    above that, free slots go to the pool with the fewest running tasks per `weight`."""

    weight: int = Field(default=1, ge=1)
    min_share: int = Field(default=0, ge=0)


class SparkSettings(_Strict):
    master: str
    app_name: str
    driver_memory: str
    shuffle_partitions: int = Field(ge=1)
    packages: list[str]
    fetch_jars: bool = True  # false under spark-submit, where --packages/--jars provide them
    # The log of a JVM a command starts (never the console): <log_dir>/spark-<time>-<pid>.log
    log_dir: str
    # FAIR scheduler pools by name (each streaming query runs in the pool of its name);
    # a pool not listed has weight 1 and no min share.
    pools: dict[str, PoolSettings] = {}
    extra_conf: dict[str, str] = {}


class StreamingSettings(_Strict):
    trigger: str
    max_offsets_per_trigger: int | None = Field(default=None, ge=1)
    max_files_per_trigger: int | None = Field(default=None, ge=1)
    # Delta's maxBytesPerTrigger (a soft limit on the files of a silver/gold micro-batch,
    # e.g. "128m"): what bounds the memory a silver batch caches.
    max_bytes_per_trigger: str | None = Field(default=None, pattern=r"^\d+[kmg]?$")
    starting_offsets: str
    max_record_bytes: int = Field(ge=64)
    # A micro-batch that loses a Delta commit conflict (e.g. to `lakehouse maintain`)
    # runs again, after conflict_backoff_s, then twice that, ...; its writes are idempotent.
    conflict_retries: int = Field(ge=0)
    conflict_backoff_s: float = Field(ge=0)
    # Silver's lookup sides (repeated ids, rows already held, duplicates) up to this
    # many rows are broadcast; larger ones (a replay under a new checkpoint) shuffled.
    broadcast_max_rows: int = Field(default=200_000, ge=0)


class GoldSettings(_Strict):
    window: str
    watermark: str
    session_gap: str
    high_cpu_pct: float = Field(ge=0, le=100)
    high_cpu_minutes: int = Field(ge=1)


class NotificationSettings(_Strict):
    max_per_user_per_day: int = Field(ge=1)
    fan_min_days: int = Field(ge=1)
    send_timeout_s: float = Field(gt=0)


class AlsGrid(_Strict):
    rank: list[int]
    reg_param: list[float]
    alpha: list[float]
    max_iter: int = Field(ge=1)
    blocks: int = Field(ge=1)


class FeatureWeights(_Strict):
    play: float = Field(ge=0)
    complete: float = Field(ge=0)
    skip: float = Field(ge=0)
    watch_hour: float = Field(ge=0)
    watch_cap_hours: float = Field(ge=0)


class TasteGrid(_Strict):
    """The taste candidate: genre and creator affinity times popularity (lists tried)."""

    creator_weight: list[float]
    popularity_power: list[float]
    floor: float = Field(gt=0)
    half_life_days: float = Field(gt=0)


class PromotionGate(_Strict):
    min_lift: float = Field(ge=0)


class NewUploads(_Strict):
    days: int = Field(ge=0)
    slots: int = Field(ge=0)


class FeatureSettings(_Strict):
    top_k: int = Field(ge=1)
    holdout_days: int = Field(ge=1)
    validation_days: int = Field(ge=1)
    popularity_days: int = Field(ge=1)
    seed: int
    als: AlsGrid
    taste: TasteGrid
    gate: PromotionGate
    new_uploads: NewUploads
    weights: FeatureWeights
    trending_prior: float = Field(gt=0)
    relevant_watch_ms: int = Field(ge=0)
    max_extra_candidates: int = Field(ge=0)


class BadRatios(_Strict):
    invalid_json: float = Field(ge=0, le=1)
    schema_violation: float = Field(ge=0, le=1)
    unknown_version: float = Field(ge=0, le=1)
    oversize: float = Field(ge=0, le=1)


class SimulateSettings(_Strict):
    users: int = Field(ge=1)
    media: int = Field(ge=1)
    creators: int = Field(ge=1)
    hosts: int = Field(ge=1)
    genres: list[str]
    days: int = Field(ge=1)
    start: str
    taste_share: float = Field(ge=0, le=1)
    catalog_uploads: bool
    v1_ratio: float = Field(ge=0, le=1)
    upload_ratio: float = Field(ge=0, le=1)
    system_ratio: float = Field(ge=0, le=1)
    duplicate_ratio: float = Field(ge=0, le=1)
    late_ratio: float = Field(ge=0, le=1)
    late_by: str
    bad: BadRatios
    manifest_dir: str


class MaintenanceSettings(_Strict):
    vacuum_retention_hours: int = Field(ge=0)
    target_file_mb: int = Field(ge=1)
    zorder_min_mb: int = Field(ge=0)
    conflict_retries: int = Field(ge=0)
    conflict_backoff_s: float = Field(ge=0)
    parallel_tables: int = Field(ge=1)


class MetricsSettings(_Strict):
    port: int = Field(ge=1, le=65535)


class QualitySettings(_Strict):
    suites: str


class ServingSettings(_Strict):
    """The Feast feature store the recommendation engine reads (features.serving)."""

    enabled: bool
    repo: str | None = None  # default: <lakehouse root>/_feast
    online_store: dict[str, Any]
    ttl_days: int = Field(ge=1)


class Settings(_Strict):
    lakehouse: LakehouseSettings
    kafka: KafkaSettings
    spark: SparkSettings
    streaming: StreamingSettings
    gold: GoldSettings
    notifications: NotificationSettings
    features: FeatureSettings
    simulate: SimulateSettings
    maintenance: MaintenanceSettings
    metrics: MetricsSettings
    quality: QualitySettings
    serving: ServingSettings

    def topic(self, kind: str) -> TopicSettings:
        return self.kafka.topics[kind]


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise SettingsError(f"override {'.'.join(path)}: '{part}' is not a section")
        node = child
    if path[-1] not in node:
        raise SettingsError(f"override {'.'.join(path)}: unknown key '{path[-1]}'")
    node[path[-1]] = value


def _env_overrides(env: dict[str, str]) -> list[tuple[tuple[str, ...], Any]]:
    overrides: list[tuple[tuple[str, ...], Any]] = []
    path: tuple[str, ...]
    for name, raw in sorted(env.items()):
        if not name.startswith("LAKEHOUSE_") or name in NOT_SETTINGS:
            continue
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
        elif "__" in name:
            path = tuple(p.lower() for p in name.removeprefix("LAKEHOUSE_").split("__"))
        else:
            raise SettingsError(
                f"environment variable {name}: use LAKEHOUSE_<SECTION>__<KEY> "
                f"or one of {sorted(ENV_ALIASES)}"
            )
        # YAML parsing lets "3", "true" and "[16, 32]" arrive typed.
        overrides.append((path, yaml.safe_load(raw)))
    return overrides


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    """Relative local paths are relative to the project, not to the caller's cwd."""

    def fix(value: str) -> str:
        if "://" in value or Path(value).is_absolute():
            return value
        return str((base / value).resolve())

    tree["lakehouse"]["root"] = fix(tree["lakehouse"]["root"])
    emb = tree["kafka"]["embedded"]
    emb["data_dir"], emb["log_dir"] = fix(emb["data_dir"]), fix(emb["log_dir"])
    tree["simulate"]["manifest_dir"] = fix(tree["simulate"]["manifest_dir"])
    tree["quality"]["suites"] = fix(tree["quality"]["suites"])
    tree["spark"]["log_dir"] = fix(tree["spark"]["log_dir"])


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`: mappings merge key by key, anything else (a scalar, a list)
    replaces. A section left empty in the overlay (`spark:` with nothing under it)
    changes nothing."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(merged.get(key), dict) and (value is None or isinstance(value, dict)):
            merged[key] = _merge(merged[key], value or {})
        else:
            merged[key] = value
    return merged


def _read_tree(conf_path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A conf file's settings tree, over the tree of the file it `extends` (if any)."""
    try:
        tree = yaml.safe_load(conf_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{conf_path}: not valid YAML ({exc})") from exc
    if not isinstance(tree, dict):
        raise SettingsError(f"{conf_path}: expected settings sections, got a {type(tree).__name__}")
    if "extends" not in tree:
        return tree
    extends = tree.pop("extends")
    if not isinstance(extends, str) or not extends:
        raise SettingsError(f"{conf_path}: extends: expected the path of a conf file, "
                            f"got {extends!r}")
    base_path = conf_path.parent / extends
    chain = (*seen, conf_path.resolve())
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise SettingsError(f"{conf_path}: extends: cycle {cycle}")
    if not base_path.is_file():
        raise SettingsError(f"{conf_path}: extends: config file not found: {base_path}")
    return _merge(_read_tree(base_path, chain), tree)


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read a conf file (over the files it extends), apply LAKEHOUSE_* overrides, validate;
    errors name the file and the key."""
    env = dict(os.environ) if env is None else env
    conf_path = Path(path or env.get("LAKEHOUSE_CONF") or DEFAULT_CONF)
    if not conf_path.is_file():
        raise SettingsError(f"config file not found: {conf_path}")
    tree = _read_tree(conf_path)
    for key_path, value in _env_overrides(env):
        _set_path(tree, key_path, value)
    # A missing section is reported by pydantic below, with its name.
    with contextlib.suppress(KeyError, TypeError):
        _resolve_paths(tree, PROJECT_ROOT)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        # A misspelt key shows up twice: as an unknown key and as a missing one.
        # The unknown one names what the user typed, so it goes first.
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SettingsError(f"{conf_path}: {where}: {first['msg']}{more}") from exc
