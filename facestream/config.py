"""Configuration: a TOML file (``FACESTREAM_CONFIG``) overlaid by ``FACESTREAM_*`` environment
variables. Secrets (webhook signing keys) come only from here, never from code or events."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facestream.errors import ConfigError

# Operating point of the default threshold, measured by `bench/calibrate.py` on the devset
# (100 enrolled subjects, 20 splits, people not enrolled as probes): FPIR mean 0.003, worst
# split 0.0085 <= 0.01; rank-1 identification rate 0.845. See README "Threshold".
DEFAULT_THRESHOLD = 0.44
DEFAULT_THRESHOLD_FPIR = 0.01


# Webhook event types a subscription can ask for (see services/notifier/logic.py).
WEBHOOK_EVENT_TYPES = ("face.match.candidates",)
# Standard Webhooks' suggested schedule: the delay before each attempt (the first is immediate).
DEFAULT_WEBHOOK_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


@dataclass(frozen=True)
class SigningSecret:
    """One signing key of a subscription (``whsec_…``). A rotation gives the old ones an expiry;
    until then every delivery carries a signature for each."""

    id: str
    value: str = field(repr=False)
    created_at: float = 0.0
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Subscription:
    """A webhook subscriber: where to post, how to sign, which matches it wants, its state and
    limits. Stored in the compacted subscriptions topic (see facestream.subscriptions)."""

    name: str
    url: str
    secrets: tuple[SigningSecret, ...] = ()
    watchlists: tuple[str, ...] = ()
    min_score: float = 0.0
    event_types: tuple[str, ...] = ()
    state: str = "active"  # or "disabled"
    disabled_reason: str = ""
    max_concurrency: int = 4
    rate_per_s: float = 0.0  # 0: no rate limit
    updated_at: float = 0.0

    @classmethod
    def new(cls, name: str, url: str, secret: str, **kwargs: Any) -> Subscription:
        """A subscription with one signing secret."""
        return cls(name, url, (SigningSecret("s1", secret, time.time()),), **kwargs)

    @property
    def active(self) -> bool:
        return self.state == "active"

    def signing_secrets(self, now: float) -> list[str]:
        return [s.value for s in self.secrets if s.active(now)]

    def wants(self, watchlist: str, score: float) -> bool:
        """Whether a candidate from `watchlist` with `score` passes this subscriber's filters."""
        return (not self.watchlists or watchlist in self.watchlists) and score >= self.min_score

    def wants_type(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "facestream"
    partitions: int = 4
    app_id: str = "facestream"
    # Operations endpoint of each worker (metrics, health, status); -1 disables it.
    ops_host: str = "127.0.0.1"
    ops_port: int = 9464
    lag_interval_s: float = 5.0
    # A crashed worker's partitions move to the others after this long without heartbeats.
    session_timeout_s: float = 30.0
    # Local state: gallery, image store
    data_dir: Path = Path(".facestream")
    # Images
    image_roots: tuple[Path, ...] = ()
    inline_max_bytes: int = 2 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_image_side: int = 12_000
    fetch_timeout_s: float = 10.0
    # Hosts or CIDRs that may be private/loopback anyway (SSRF allow-list), for fetch and post.
    allow_private: tuple[str, ...] = ()
    # Detector
    det_score_threshold: float = 0.6
    min_face_px: int = 24
    min_sharpness: float = 15.0
    enrol_dominance: float = 2.0
    # Embedder: ONNX Runtime in-process unless triton_url names a Triton server (host:port, gRPC).
    triton_url: str = ""
    triton_model: str = "sface"
    triton_model_version: str = ""
    triton_timeout_s: float = 10.0
    triton_max_in_flight: int = 4
    triton_retry_for_s: float = 300.0
    # Matcher
    gallery_backend: str = "edge"  # "edge" (embedded) or "qdrant" (server via qdrant-client)
    qdrant_url: str = ""
    gallery_name: str = "faces"
    top_k: int = 5
    threshold: float = DEFAULT_THRESHOLD
    threshold_fpir: float = DEFAULT_THRESHOLD_FPIR
    # Notifier
    # Subscriptions live in Kafka (`facestream subscriptions ...`); any listed here are added to
    # that store when a notifier starts, if no subscription of that name exists yet.
    subscriptions: tuple[Subscription, ...] = ()
    # Key that encrypts signing secrets in the subscriptions topic (Fernet, urlsafe base64 of 32
    # bytes). Empty: a key file under data_dir, created on first use (one machine only).
    subscriptions_key: str = ""
    webhook_timeout_s: float = 15.0  # per attempt; Standard Webhooks suggests 15-30 s
    webhook_schedule_s: tuple[float, ...] = DEFAULT_WEBHOOK_SCHEDULE
    # A match not delivered this long after it occurred is dead-lettered as expired, not sent late.
    webhook_event_ttl_s: float = 4 * 86400.0
    # Deliveries one subscriber may have waiting in a worker; more are deferred to the next retry tier.
    webhook_max_pending: int = 1000
    # Each notifier worker serves probe crops behind signed links (facestream.crops); -1: no
    # crop links. crops_public_url: how subscribers reach it (behind your TLS ingress).
    crops_host: str = "127.0.0.1"
    crops_port: int = 9465
    crops_public_url: str = ""
    # Batching of every stage's stream
    batch_max: int = 32
    batch_within_s: float = 0.02
    # Threads for model work when model_processes is 0; model_processes > 0 runs the models in
    # that many processes (one per core by default), see facestream.compute.
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    model_processes: int = field(default_factory=lambda: os.cpu_count() or 2)

    def topic(self, name: str) -> str:
        """Full topic name: images, faces, embeddings, matches, dlq."""
        return f"{self.topic_prefix}.{name}"

    @property
    def gallery_path(self) -> Path:
        return self.data_dir / "gallery"


_PATHS = {"data_dir"}
_PATH_TUPLES = {"image_roots"}
_STR_TUPLES = {"allow_private"}
_FLOAT_TUPLES = {"webhook_schedule_s"}


def _coerce(name: str, value: Any, current: Any) -> Any:
    if name in _PATHS:
        return Path(value)
    if name in _PATH_TUPLES:
        items = value.split(os.pathsep) if isinstance(value, str) else value
        return tuple(Path(v) for v in items if v)
    if name in _STR_TUPLES:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(v).strip() for v in items if str(v).strip())
    if name in _FLOAT_TUPLES:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(float(v) for v in items)
    if name == "subscriptions":
        items = json.loads(value) if isinstance(value, str) else value
        return tuple(_subscription(s) for s in items)
    if isinstance(current, bool):
        return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return str(value)


def _subscription(raw: dict[str, Any]) -> Subscription:
    try:
        secret = raw.get("secret") or os.environ[raw["secret_env"]]
        return Subscription.new(
            str(raw["name"]),
            str(raw["url"]),
            str(secret),
            watchlists=tuple(raw.get("watchlists", ())),
            min_score=float(raw.get("min_score", 0.0)),
            event_types=tuple(raw.get("event_types", ())),
        )
    except KeyError as exc:
        raise ConfigError(f"subscription {raw.get('name', '?')!r}: missing {exc}") from exc


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, then the TOML file, then the environment, then `overrides`."""
    values: dict[str, Any] = {}
    path = path or os.environ.get("FACESTREAM_CONFIG")
    if path:
        with open(path, "rb") as fh:
            values.update(tomllib.load(fh))
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for name in fields:
        env = os.environ.get(f"FACESTREAM_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update(overrides)
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    defaults = Settings()
    coerced = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    settings = Settings(**coerced)
    if settings.gallery_backend not in {"edge", "qdrant"}:
        raise ConfigError("gallery_backend must be 'edge' or 'qdrant'")
    schedule = settings.webhook_schedule_s
    if not schedule or schedule[0] != 0 or any(b < a for a, b in itertools.pairwise(schedule)):
        raise ConfigError("webhook_schedule_s must start at 0 and never decrease")
    return settings


def to_toml(values: dict[str, Any], subscriptions: Sequence[dict[str, str]] = ()) -> str:
    """A settings file for `load_settings` (flat values, then `[[subscriptions]]` tables)."""

    def lit(v: Any) -> str:
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        if isinstance(v, list | tuple):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        return str(v).lower() if isinstance(v, bool) else str(v)

    lines = [f"{k} = {lit(v)}" for k, v in values.items()]
    for sub in subscriptions:
        lines += ["", "[[subscriptions]]", *(f"{k} = {lit(v)}" for k, v in sub.items())]
    return "\n".join(lines) + "\n"
