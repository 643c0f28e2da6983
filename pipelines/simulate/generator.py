"""A realistic, deterministic stream of media-service events (pure: no I/O).

The stream mixes user playback sessions (v1 and v2 producers), content
uploads and system events, plus bad records, duplicates and late arrivals at
the ratios of `SimulateSettings`. Every record says what it is (`kind`), so a
test or a manifest can predict exactly what silver and quarantine must hold.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import time
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate
from random import Random
from typing import Any

from pipelines.catalog import EVENT_TYPES
from pipelines.schemas.registry import latest_version, v1_event_id
from pipelines.settings import SimulateSettings

# The topics' kinds (keys of `kafka.topics`) and the event type each carries.
TOPIC_EVENT_TYPES = EVENT_TYPES
BAD_KINDS = ("invalid_json", "schema_violation", "unknown_version", "oversize")
KINDS = ("valid", "duplicate", *BAD_KINDS)

# Behavioural constants of the simulated population: they shape realism, not
# the pipeline, so they live here rather than in conf/.
ZIPF_S = 1.0  # media popularity exponent
DEVICES = ("web", "ios", "android", "tv")
DEVICE_WEIGHTS = (0.3, 0.25, 0.3, 0.15)
OTHER_DEVICE_SHARE = 0.03
UTC_OFFSETS_MIN = (0, 60, -300, 330, -480, 120)  # local clocks some v1 players send
V1_LOCAL_TIME_SHARE = 0.25
SEGMENT_MEAN_S = 420.0  # mean uninterrupted play before the next action
SEGMENT_MAX_S = 25 * 60  # below the 30-minute session gap, so a session stays one session
MAX_LAG_MS = 10 * 60_000  # a session whose next action lags the stream more is abandoned
SERVICES = ("api", "playback", "transcoder", "recommender")
AUTOSCALER_HOST = "autoscaler-01"
HIGH_CPU_START = 0.01
DUP_SOON_SHARE = 0.7
DUP_RECENT = 500  # "soon after": one of the last N valid records
DUP_HISTORY_EVERY = 16  # sample of older valid records kept for "hours later"
DUP_MIN_AGE = timedelta(hours=1)
DUP_MAX_AGE = timedelta(hours=12)  # inside silver's dedup horizon
SHUFFLE_BLOCK = 2000
MIN_RECORD_LIMIT = 1024
# Typical durations in minutes by genre; unknown genres get the default.
GENRE_MINUTES = {
    "music": (2, 6),
    "kids": (8, 25),
    "comedy": (20, 35),
    "drama": (40, 60),
    "documentary": (30, 90),
    "sports": (60, 120),
    "thriller": (85, 130),
    "scifi": (90, 140),
}
DEFAULT_MINUTES = (20, 60)
TITLE_WORDS = (
    "silent", "river", "night", "golden", "lost", "city", "wild", "echo", "summer",
    "paper", "storm", "little", "last", "blue", "garden", "machine", "north", "dream",
)  # fmt: skip

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")
_UNITS = {
    "ms": "milliseconds", "millisecond": "milliseconds", "milliseconds": "milliseconds",
    "s": "seconds", "sec": "seconds", "second": "seconds", "seconds": "seconds",
    "m": "minutes", "min": "minutes", "minute": "minutes", "minutes": "minutes",
    "h": "hours", "hour": "hours", "hours": "hours",
    "d": "days", "day": "days", "days": "days",
}  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimRecord:
    """One Kafka record of the simulation, labelled with what silver must make of it."""

    topic_kind: str
    key: bytes | None
    value: bytes
    kind: str
    late: bool
    event_type: str
    event_id: str | None
    event_time: str | None
    schema_version: int | None = None


def parse_duration(text: str) -> timedelta:
    """`"3 hours"`, `"30 minutes"`, `"5 s"` as a timedelta (the conf's duration style)."""
    m = _DURATION.match(text.lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a duration: {text!r} (e.g. '3 hours', '30 minutes')")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


@lru_cache(maxsize=4096)
def _second(epoch_s: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS`; cached because consecutive events share seconds."""
    d = time.gmtime(epoch_s)
    return (
        f"{d.tm_year:04d}-{d.tm_mon:02d}-{d.tm_mday:02d}T"
        f"{d.tm_hour:02d}:{d.tm_min:02d}:{d.tm_sec:02d}"
    )


def _iso(ms: int, offset_min: int = 0) -> str:
    """Epoch ms as an RFC 3339 string with milliseconds, in UTC or a local offset."""
    base = f"{_second((ms + offset_min * 60_000) // 1000)}.{ms % 1000:03d}"
    if offset_min == 0:
        return base + "Z"
    sign = "+" if offset_min > 0 else "-"
    return f"{base}{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


def _utc_micro(ms: int) -> str:
    """The normalised form silver stores (see registry.normalize_timestamp)."""
    return _iso(ms)[:-1] + "000Z"


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------- world


@dataclass
class _Media:
    media_id: str
    creator_id: str
    genre: str
    duration_ms: int


@dataclass
class _User:
    user_id: str
    genres: tuple[str, ...]
    device: str
    offset_min: int


@dataclass
class _Genre:
    media: list[int] = field(default_factory=list)
    cum: list[float] = field(default_factory=list)

    def add(self, index: int, weight: float) -> None:
        self.media.append(index)
        self.cum.append((self.cum[-1] if self.cum else 0.0) + weight)

    def pick(self, rng: Random) -> int:
        return self.media[bisect_left(self.cum, rng.random() * self.cum[-1])]


@dataclass
class _Host:
    name: str
    service: str
    base_cpu: float
    cpu: float
    memory: float
    status: str = "up"
    hot_left: int = 0


class _World:
    """Users, creators, catalog and fleet; the catalog grows with uploads."""

    def __init__(self, sim: SimulateSettings, rng: Random) -> None:
        if not sim.genres:
            raise ValueError("simulate.genres is empty")
        self.rng = rng
        self.genre_names = list(sim.genres)
        self.taste_share = sim.taste_share
        self.creators: list[tuple[str, str]] = []
        for i in range(sim.creators):
            self.creators.append((f"c-{i + 1:04d}", self.genre_names[i % len(self.genre_names)]))
        # A few prolific creators publish most media.
        self.creator_cum = list(accumulate(1.0 / (i + 1) ** 0.8 for i in range(sim.creators)))
        self.media: list[_Media] = []
        self.genres = {g: _Genre() for g in self.genre_names}
        popularity = list(range(sim.media))
        rng.shuffle(popularity)
        for i in range(sim.media):
            self._add_media(rng, f"m-{i + 1:06d}", 1.0 / (popularity[i] + 1) ** ZIPF_S)
        self.next_media = sim.media + 1
        self.users: list[_User] = []
        for i in range(sim.users):
            liked = tuple(rng.sample(self.genre_names, min(rng.choice((1, 2)), len(sim.genres))))
            device = rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
            self.users.append(_User(f"u-{i + 1:05d}", liked, device, rng.choice(UTC_OFFSETS_MIN)))
        # Heavy and light viewers: log-normal activity.
        self.user_cum = list(accumulate(rng.lognormvariate(0, 1) for _ in range(sim.users)))
        self.hosts: list[_Host] = []
        for i in range(sim.hosts):
            service = SERVICES[i % len(SERVICES)]
            base_cpu = rng.uniform(20, 55)
            name = f"{service}-{i // len(SERVICES) + 1:02d}"
            self.hosts.append(_Host(name, service, base_cpu, base_cpu, rng.uniform(30, 70)))
        self.instances = {s: sum(h.service == s for h in self.hosts) for s in SERVICES}

    def _add_media(self, rng: Random, media_id: str, weight: float) -> _Media:
        creator_id, genre = self.creators[
            bisect_left(self.creator_cum, rng.random() * self.creator_cum[-1])
        ]
        low, high = GENRE_MINUTES.get(genre, DEFAULT_MINUTES)
        media = _Media(media_id, creator_id, genre, rng.randint(low * 60_000, high * 60_000))
        self.media.append(media)
        self.genres[genre].add(len(self.media) - 1, weight)
        return media

    def upload(self) -> _Media:
        """A new media item; new releases start fairly popular so people watch them."""
        media_id = f"m-{self.next_media:06d}"
        self.next_media += 1
        return self._add_media(self.rng, media_id, 1.0 / self.rng.randint(2, 40) ** ZIPF_S)

    def pick_user(self) -> int:
        return bisect_left(self.user_cum, self.rng.random() * self.user_cum[-1])

    def pick_media(self, user: _User) -> _Media:
        rng = self.rng
        genre = rng.choice(user.genres if rng.random() < self.taste_share else self.genre_names)
        if not self.genres[genre].media:  # a genre nobody has published in yet
            genre = self.media[rng.randrange(len(self.media))].genre
        return self.media[self.genres[genre].pick(rng)]


# ---------------------------------------------------------------- time


class _Timeline:
    """Maps record i of n to a stream time; in calendar mode evenings are busiest."""

    def __init__(self, start_ms: int, span_ms: int, events: int, rhythm: bool) -> None:
        self.start_ms, self.span_ms, self.events = start_ms, span_ms, max(events, 1)
        self.cum: list[float] | None = None
        if rhythm:
            minutes = max(span_ms // 60_000, 1)
            start = _EPOCH + timedelta(milliseconds=start_ms)
            self.cum = list(accumulate(self._intensity(start, m) for m in range(minutes)))

    @staticmethod
    def _intensity(start: datetime, minute: int) -> float:
        t = start + timedelta(minutes=minute)
        hour = t.hour + t.minute / 60

        def bump(center: float, width: float) -> float:
            d = min(abs(hour - center), 24 - abs(hour - center))
            return math.exp(-0.5 * (d / width) ** 2)

        weekend = 1.25 if t.weekday() >= 5 else 1.0
        return weekend * (0.15 + 0.35 * bump(12.5, 2.5) + 1.0 * bump(20.5, 2.0))

    def at(self, i: int) -> int:
        u = (i + 0.5) / self.events
        if self.cum is None:
            return self.start_ms + int(u * self.span_ms)
        target = u * self.cum[-1]
        minute = bisect_left(self.cum, target)
        before = self.cum[minute - 1] if minute else 0.0
        frac = (target - before) / (self.cum[minute] - before)
        return self.start_ms + int((minute + frac) * 60_000)


# ---------------------------------------------------------------- sessions


@dataclass
class _Session:
    user: int
    media: _Media
    v1: bool
    device: str
    session_id: str | None
    preferred: bool
    next_action: str = "play"
    next_ms: int = 0
    position: int = 0


class StreamGenerator:
    """Stateful engine behind `generate`; one instance produces one stream."""

    def __init__(
        self,
        sim: SimulateSettings,
        events: int,
        seed: int,
        max_record_bytes: int,
        now: datetime | None = None,
        span: timedelta | None = None,
    ) -> None:
        if max_record_bytes < MIN_RECORD_LIMIT:
            raise ValueError(
                f"max_record_bytes={max_record_bytes} is below {MIN_RECORD_LIMIT}: "
                "valid events would not fit"
            )
        if events < 0:
            raise ValueError("events must be >= 0")
        self.sim, self.events, self.max_bytes = sim, events, max_record_bytes
        self.rng = Random(seed)
        self.world = _World(sim, self.rng)
        if now is None:
            start = datetime.fromisoformat(sim.start.replace("Z", "+00:00"))
            self.timeline = _Timeline(_ms(start), sim.days * 86_400_000, events, rhythm=True)
        else:
            # Wall-clock mode: the stream starts now and lasts about as long as producing it.
            span_ms = int((span or timedelta(seconds=events / 1000)).total_seconds() * 1000)
            self.timeline = _Timeline(_ms(now), span_ms, events, rhythm=False)
        self.late_by_ms = parse_duration(sim.late_by) // timedelta(milliseconds=1)
        self.counts = self._plan(events)
        self.late_left = min(round(events * sim.late_ratio), self._valid_total())
        self.clock = self.timeline.start_ms
        self.heap: list[tuple[int, int, _Session]] = []
        self.seq = 0
        self.active: set[int] = set()
        # Per-user last timestamps; on-time events use even ms, late ones odd ms,
        # so v1 ids (userId|mediaId|action|timestamp) can never collide.
        self.last_ms: dict[int, int] = {}
        self.last_late_ms: dict[int, int] = {}
        self.recent: list[SimRecord] = []
        self.recent_next = 0
        self.history: list[SimRecord] = []
        self.history_ms: list[int] = []
        self.history_start = 0
        self.valid_seen = 0
        self.host_turn = 0

    def _plan(self, events: int) -> dict[str, int]:
        sim = self.sim
        counts = {k: round(events * getattr(sim.bad, k)) for k in BAD_KINDS}
        counts["content_uploads"] = round(events * sim.upload_ratio)
        counts["system_events"] = round(events * sim.system_ratio)
        counts["duplicate"] = round(events * sim.duplicate_ratio)
        rest = events - sum(counts.values())
        if rest < 0:
            raise ValueError("simulate ratios add up to more than 1")
        # The starting catalog is announced first, out of the user actions' share
        # (at most a tenth of it): a lakehouse knows the genre and creator of what
        # it serves. Announcements beyond that share are left out.
        self.catalog = min(len(self.world.media), rest // 10) if sim.catalog_uploads else 0
        counts["content_uploads"] += self.catalog
        counts["user_actions"] = rest - self.catalog
        if counts["user_actions"] + counts["content_uploads"] + counts["system_events"] == 0:
            counts["user_actions"], counts["duplicate"] = counts["duplicate"], 0
        return counts

    def _valid_total(self) -> int:
        return sum(self.counts[k] for k in TOPIC_EVENT_TYPES)

    # ------------------------------------------------------------ driver

    def __iter__(self) -> Iterator[SimRecord]:
        rng, counts = self.rng, self.counts
        names = list(counts)
        for i in range(self.events):
            self.clock = max(self.clock, self.timeline.at(i))
            if i < self.catalog:
                counts["content_uploads"] -= 1
                yield self._announce(self.world.media[i])
                continue
            # Sampling without replacement keeps every count exact.
            pick = rng.random() * (self.events - i)
            for name in names:
                pick -= counts[name]
                if pick < 0 and counts[name]:
                    break
            else:
                name = next(n for n in reversed(names) if counts[n])
            if name == "duplicate" and not self.valid_seen:
                # Nothing to resend yet: emit a valid event now, the duplicate stays owed.
                name = next(n for n in TOPIC_EVENT_TYPES if counts[n])
            counts[name] -= 1
            yield self._record(name)

    def _record(self, name: str) -> SimRecord:
        if name in TOPIC_EVENT_TYPES:
            valid_left = self._valid_total() + 1
            late = self.rng.random() * valid_left < self.late_left
            if late:
                self.late_left -= 1
            record = self._valid(name, late)
            self._remember(record)
            return record
        if name == "duplicate":
            return self._duplicate()
        return self._bad(name)

    # ------------------------------------------------------------ valid events

    def _valid(self, topic_kind: str, late: bool) -> SimRecord:
        if topic_kind == "user_actions":
            if late:
                return self._late_action()
            return self._session_action()
        ms = self.clock - self.late_by_ms if late else self.clock
        if topic_kind == "content_uploads":
            payload = self._upload_payload(self.world.upload(), ms)
            return self._valid_record(topic_kind, payload, payload["mediaId"], ms, late)
        payload = self._system_payload(ms)
        return self._valid_record(topic_kind, payload, payload["host"], ms, late)

    def _announce(self, media: _Media) -> SimRecord:
        """The content_upload of a media of the starting catalog."""
        payload = self._upload_payload(media, self.clock)
        record = self._valid_record("content_uploads", payload, payload["mediaId"], self.clock,
                                    False)  # fmt: skip
        self._remember(record)
        return record

    def _valid_record(
        self, topic_kind: str, payload: dict[str, Any], key: str, ms: int, late: bool
    ) -> SimRecord:
        event_type = TOPIC_EVENT_TYPES[topic_kind]
        version = payload.get("schemaVersion", 1)
        event_id = payload["eventId"] if "eventId" in payload else v1_event_id(payload)
        value = _dumps(payload)
        return SimRecord(
            topic_kind, key.encode(), value, "valid", late, event_type, event_id,
            _utc_micro(ms), version,
        )  # fmt: skip

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _start_session(self, ms: int) -> _Session:
        world, rng = self.world, self.rng
        user = world.pick_user()
        for _ in range(5):  # people watch one thing at a time
            if user not in self.active:
                break
            user = world.pick_user()
        self.active.add(user)
        profile = world.users[user]
        media = world.pick_media(profile)
        v1 = rng.random() < self.sim.v1_ratio
        device = "other" if rng.random() < OTHER_DEVICE_SHARE else profile.device
        session = _Session(
            user, media, v1, device, None if v1 else self._uuid(), media.genre in profile.genres
        )
        session.next_ms = ms
        if rng.random() < 0.1:  # resuming something started earlier
            session.position = rng.randrange(0, media.duration_ms // 2)
        return session

    def _session_action(self) -> SimRecord:
        heap = self.heap
        while heap and heap[0][0] < self.clock - MAX_LAG_MS:
            self.active.discard(heapq.heappop(heap)[2].user)
        if heap and heap[0][0] <= self.clock:
            session = heapq.heappop(heap)[2]
        else:
            session = self._start_session(self.clock)
        user = session.user
        ms = max(session.next_ms, self.last_ms.get(user, -2) + 2) & ~1
        self.last_ms[user] = ms
        action, position = session.next_action, session.position
        record = self._action_record(session, action, ms, position, late=False)
        if self._advance(session, ms):
            self.seq += 1
            heapq.heappush(heap, (session.next_ms, self.seq, session))
        else:
            self.active.discard(user)
        return record

    def _advance(self, s: _Session, ms: int) -> bool:
        """Schedule the session's next action; False when the session is over."""
        rng, action = self.rng, s.next_action
        if action in ("complete", "skip"):
            return False
        if action == "pause":
            if rng.random() < 0.08:
                return False  # walked away
            s.next_action, s.next_ms = "play", ms + int(min(rng.lognormvariate(10.3, 1.0), 1.2e6))
            return True
        if action == "seek":
            s.next_action, s.next_ms = "play", ms + rng.randint(300, 3000)
            return True
        # playing: how long until the viewer does something
        segment = int(min(max(rng.expovariate(1 / SEGMENT_MEAN_S), 5), SEGMENT_MAX_S) * 1000)
        remaining = s.media.duration_ms - s.position
        if segment >= remaining:
            s.next_ms, s.position = ms + remaining, s.media.duration_ms
            if not s.v1:
                s.next_action = "complete"
                return True
            # v1 players have no `complete`: some send skip at the end, some nothing.
            s.next_action = "skip"
            return rng.random() < 0.5
        s.next_ms, s.position = ms + segment, s.position + segment
        skip = 0.08 if s.preferred else 0.3
        r = rng.random()
        if r < skip:
            s.next_action = "skip"
        elif r < skip + 0.08:
            return False  # abandoned: the app is closed, no terminal event
        elif r < skip + 0.2 and not s.v1:
            s.next_action = "seek"
            s.position = min(s.position + rng.randint(10_000, 300_000), s.media.duration_ms - 1)
        else:
            s.next_action = "pause"
        return True

    def _action_payload(self, s: _Session, action: str, ms: int, position: int) -> dict[str, Any]:
        profile = self.world.users[s.user]
        if s.v1:
            local = profile.offset_min if self.rng.random() < V1_LOCAL_TIME_SHARE else 0
            return {
                "userId": profile.user_id,
                "action": action,
                "timestamp": _iso(ms, local),
                "mediaId": s.media.media_id,
            }
        return {
            "schemaVersion": 2,
            "eventId": self._uuid(),
            "userId": profile.user_id,
            "action": action,
            "timestamp": _iso(ms),
            "mediaId": s.media.media_id,
            "sessionId": s.session_id,
            "positionMs": position,
            "device": s.device,
        }

    def _action_record(
        self, s: _Session, action: str, ms: int, position: int, late: bool
    ) -> SimRecord:
        payload = self._action_payload(s, action, ms, position)
        return self._valid_record("user_actions", payload, payload["userId"], ms, late)

    def _late_action(self) -> SimRecord:
        """An action an offline device delivers `late_by` after it happened."""
        session = self._start_session(self.clock)
        self.active.discard(session.user)  # a one-off, not a live session
        user = session.user
        ms = (self.clock - self.late_by_ms) | 1
        if ms <= self.last_late_ms.get(user, -1):
            ms = self.last_late_ms[user] + 2
        self.last_late_ms[user] = ms
        action = self.rng.choice(("play", "pause", "skip"))
        position = self.rng.randrange(session.media.duration_ms)
        return self._action_record(session, action, ms, position, late=True)

    def _upload_payload(self, media: _Media, ms: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "schemaVersion": 1,
            "eventId": self._uuid(),
            "mediaId": media.media_id,
            "creatorId": media.creator_id,
            "timestamp": _iso(ms),
        }
        if self.rng.random() < 0.95:  # some uploads are published before they are titled
            words = self.rng.sample(TITLE_WORDS, 2)
            payload["title"] = " ".join(words).title()
        payload["genre"] = media.genre
        payload["durationMs"] = media.duration_ms
        return payload

    def _system_payload(self, ms: int) -> dict[str, Any]:
        rng, world = self.rng, self.world
        if not world.hosts or rng.random() < 0.15:
            return self._allocation_payload(ms)
        host = world.hosts[self.host_turn % len(world.hosts)]
        self.host_turn += 1
        self._step_host(host)
        payload: dict[str, Any] = {
            "schemaVersion": 1,
            "eventId": self._uuid(),
            "host": host.name,
            "service": host.service,
            "kind": "server_status",
            "timestamp": _iso(ms),
            "status": host.status,
        }
        if host.status != "down":  # a down host reports no readings
            payload["cpuPct"] = round(host.cpu, 1)
            payload["memoryPct"] = round(host.memory, 1)
        return payload

    def _step_host(self, host: _Host) -> None:
        rng = self.rng
        if host.hot_left:
            host.hot_left -= 1
            host.cpu = rng.uniform(92, 99.5)
        else:
            host.cpu += 0.3 * (host.base_cpu - host.cpu) + rng.gauss(0, 4)
            host.cpu = min(max(host.cpu, 1.0), 89.0)
            if rng.random() < HIGH_CPU_START:
                host.hot_left = rng.randint(4, 10)
        host.memory = min(max(host.memory + rng.gauss(0, 2), 5.0), 98.0)
        r = rng.random()
        if host.status == "up" and r < (0.15 if host.hot_left else 0.01):
            host.status = "degraded"
        elif host.status == "degraded":
            host.status = "up" if r < 0.3 else "down" if r < 0.35 else "degraded"
        elif host.status == "down" and r < 0.4:
            host.status = "up"

    def _allocation_payload(self, ms: int) -> dict[str, Any]:
        rng, world = self.rng, self.world
        service = rng.choice(SERVICES)
        hosts = [h for h in world.hosts if h.service == service]
        load = sum(h.cpu for h in hosts) / len(hosts) if hosts else 50.0
        current = world.instances[service]
        if load > 70:
            current += 1
        elif load < 30 and current > 1:
            current -= 1
        world.instances[service] = current
        return {
            "schemaVersion": 1,
            "eventId": self._uuid(),
            "host": AUTOSCALER_HOST,
            "service": service,
            "kind": "resource_allocation",
            "timestamp": _iso(ms),
            "instances": current,
        }

    # ------------------------------------------------------------ duplicates

    def _remember(self, record: SimRecord) -> None:
        self.valid_seen += 1
        if len(self.recent) < DUP_RECENT:
            self.recent.append(record)
        else:
            self.recent[self.recent_next] = record
            self.recent_next = (self.recent_next + 1) % DUP_RECENT
        if self.valid_seen % DUP_HISTORY_EVERY == 0:
            self.history.append(record)
            self.history_ms.append(self.clock)

    def _duplicate(self) -> SimRecord:
        """A byte-identical resend of an earlier valid record (at-least-once producers)."""
        rng = self.rng
        oldest = self.clock - DUP_MAX_AGE // timedelta(milliseconds=1)
        self.history_start = bisect_left(self.history_ms, oldest, lo=self.history_start)
        if self.history_start > 4096:  # drop what can no longer be picked
            del self.history[: self.history_start], self.history_ms[: self.history_start]
            self.history_start = 0
        old_enough = self.clock - DUP_MIN_AGE // timedelta(milliseconds=1)
        newest = bisect_right(self.history_ms, old_enough)
        if rng.random() >= DUP_SOON_SHARE and newest > self.history_start:
            original = self.history[rng.randrange(self.history_start, newest)]
        else:
            original = self.recent[rng.randrange(len(self.recent))]
        return SimRecord(
            original.topic_kind, original.key, original.value, "duplicate", False,
            original.event_type, original.event_id, original.event_time,
            original.schema_version,
        )  # fmt: skip

    # ------------------------------------------------------------ bad records

    def _bad_topic(self) -> str:
        sim = self.sim
        shares = (1 - sim.upload_ratio - sim.system_ratio, sim.upload_ratio, sim.system_ratio)
        return self.rng.choices(list(TOPIC_EVENT_TYPES), shares)[0]

    def _sample_payload(self, topic_kind: str) -> dict[str, Any]:
        """A well-formed payload to corrupt; it does not advance sessions or the catalog."""
        rng, world, ms = self.rng, self.world, self.clock
        if topic_kind == "user_actions":
            user = world.pick_user()
            profile = world.users[user]
            media = world.pick_media(profile)
            v1 = rng.random() < self.sim.v1_ratio
            session = _Session(user, media, v1, profile.device, self._uuid(), True)
            action = rng.choice(("play", "pause", "skip"))
            return self._action_payload(session, action, ms, rng.randrange(media.duration_ms))
        if topic_kind == "content_uploads":
            media = world.media[rng.randrange(len(world.media))]
            return self._upload_payload(media, ms)
        return self._system_payload(ms)

    def _bad(self, kind: str) -> SimRecord:
        topic_kind = self._bad_topic()
        event_type = TOPIC_EVENT_TYPES[topic_kind]
        payload = self._sample_payload(topic_kind)
        key_field = {"user_actions": "userId", "content_uploads": "mediaId"}.get(topic_kind, "host")
        key = str(payload[key_field]).encode()
        if kind == "invalid_json":
            value = self._broken_json(payload)
        elif kind == "schema_violation":
            value = _dumps(self._violate(event_type, payload))
        elif kind == "unknown_version":
            latest = latest_version(event_type)
            payload["schemaVersion"] = self.rng.choice((latest + 1, latest + 2, 99))
            value = _dumps(payload)
        else:  # oversize: a client that attaches a debug dump
            size = len(_dumps(payload))
            pad = self.max_bytes - size + self.rng.randint(64, 4096)
            payload["debugTrace"] = "x" * pad
            value = _dumps(payload)
        return SimRecord(topic_kind, key, value, kind, False, event_type, None, None)

    def _broken_json(self, payload: dict[str, Any]) -> bytes:
        rng = self.rng
        good = _dumps(payload)
        variants: list[Callable[[], bytes]] = [
            lambda: good[: rng.randint(1, len(good) - 1)],  # truncated write
            lambda: good.replace(b'"', b"'"),  # single-quoted, Python-style
            lambda: good + good,  # two events glued together
            lambda: good[:-1] + b',"x":}',  # hand-edited
            lambda: good.replace(b'":"', b'":"\xc3\x28', 1),  # not UTF-8
            lambda: _dumps([payload]),  # an array, not an object
            lambda: rng.choice((b"", b"null", b"42", b'"ping"', b"<html>502</html>")),
        ]
        return rng.choice(variants)()

    def _violate(self, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload broken in one realistic way that JSON Schema catches."""
        rng = self.rng
        p = dict(payload)
        if event_type == "user_action" and "schemaVersion" not in p:
            options: list[Callable[[], None]] = [
                lambda: p.update(action=rng.choice(("rewind", "seek", "PLAY"))),
                lambda: p.pop(rng.choice(("userId", "mediaId", "timestamp", "action"))),
                lambda: p.update(userId=rng.randint(1, 10**6)),
                lambda: p.update(timestamp=rng.choice(("yesterday", "2026-13-01T00:00:00Z"))),
                lambda: p.update(timestamp="2026-11-03 20:15:00"),  # no T, no zone
            ]
        elif event_type == "user_action":
            options = [
                lambda: p.update(positionMs=-rng.randint(1, 5000)),
                lambda: p.update(eventId=rng.randint(1, 10**9)),
                lambda: p.update(eventId="evt-" + str(rng.randint(1, 10**6))),
                lambda: p.update(device=rng.choice(("fridge", "TV", "car"))),
                lambda: p.update(schemaVersion="2"),
                lambda: p.update(positionMs=str(p["positionMs"])),
                lambda: p.update(action="rewind"),
                lambda: p.pop("eventId"),
                lambda: p.update(sessionId=None),
            ]
        elif event_type == "content_upload":
            options = [
                lambda: p.pop("creatorId"),
                lambda: p.pop("schemaVersion"),
                lambda: p.update(durationMs=-rng.randint(1, 10**6)),
                lambda: p.update(durationMs="90 min"),
                lambda: p.update(timestamp="03/11/2026 20:15"),
            ]
        else:
            options = [
                lambda: p.update(cpuPct=rng.uniform(100.5, 400)),
                lambda: p.update(kind="reboot"),
                lambda: p.update(status="on_fire"),
                lambda: p.update(instances=-rng.randint(1, 5)),
                lambda: p.pop("host"),
                lambda: p.update(memoryPct="high"),
            ]
        rng.choice(options)()
        return p


def generate(
    sim: SimulateSettings,
    events: int,
    seed: int,
    max_record_bytes: int,
    shuffle: bool = False,
    now: datetime | None = None,
    span: timedelta | None = None,
) -> Iterator[SimRecord]:
    """Exactly `events` records, the same ones for the same seed and settings.

    `shuffle` reorders arrival within blocks of `SHUFFLE_BLOCK` records (same
    records either way). With `now`, times start at `now` and spread over
    `span` (the expected production time) instead of the simulated calendar.
    """
    stream = iter(StreamGenerator(sim, events, seed, max_record_bytes, now=now, span=span))
    if not shuffle:
        yield from stream
        return
    order = Random(seed ^ 0x5EED)
    block: list[SimRecord] = []
    for record in stream:
        block.append(record)
        if len(block) == SHUFFLE_BLOCK:
            order.shuffle(block)
            yield from block
            block = []
    order.shuffle(block)
    yield from block


# ---------------------------------------------------------------- manifest


class ManifestBuilder:
    """Counts records as they stream by; `build()` says what the lakehouse must hold."""

    def __init__(self) -> None:
        self.total = 0
        self.late = 0
        self.by_topic_kind = {t: dict.fromkeys(KINDS, 0) for t in TOPIC_EVENT_TYPES}
        self.versions: dict[str, dict[str, int]] = {e: {} for e in TOPIC_EVENT_TYPES.values()}

    def add(self, record: SimRecord) -> None:
        self.total += 1
        self.by_topic_kind[record.topic_kind][record.kind] += 1
        if record.kind == "valid":
            self.late += record.late
            counts = self.versions[record.event_type]
            version = str(record.schema_version)
            counts[version] = counts.get(version, 0) + 1

    def build(self) -> dict[str, Any]:
        by_topic = {t: sum(k.values()) for t, k in self.by_topic_kind.items()}
        by_kind = {k: sum(t[k] for t in self.by_topic_kind.values()) for k in KINDS}
        valid = {t: k["valid"] for t, k in self.by_topic_kind.items()}
        return {
            "total": self.total,
            "by_topic": by_topic,
            "by_kind": by_kind,
            "by_topic_kind": {t: dict(k) for t, k in self.by_topic_kind.items()},
            "late": self.late,
            "unique_valid_events": {TOPIC_EVENT_TYPES[t]: n for t, n in valid.items()},
            "valid_schema_versions": {e: dict(sorted(v.items())) for e, v in self.versions.items()},
            "expected": {
                "silver": valid,
                "quarantine": {k: by_kind[k] for k in (*BAD_KINDS, "duplicate")},
            },
        }


def build_manifest(records: Iterable[SimRecord]) -> dict[str, Any]:
    """The manifest of a stream of records (consumed once, never held in memory)."""
    builder = ManifestBuilder()
    for record in records:
        builder.add(record)
    return builder.build()
