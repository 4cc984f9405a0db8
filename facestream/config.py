"""Settings: defaults, overlaid by a TOML file (``--config`` or ``FACESTREAM_CONFIG``), then by
``FACESTREAM_<NAME>`` environment variables, then by explicit arguments.

Every value is validated when loaded (pydantic-settings): types, ranges, addresses, URLs,
durations and schedules. A bad value is refused with a `ConfigError` that names the setting,
where it came from (the file, the environment variable or an argument) and what is allowed.
Secrets (the subscriptions key, webhook signing secrets) come only from here, never from code
or events, and are masked wherever settings are shown (`facestream config show`).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from facestream.errors import ConfigError
from facestream.io.net import parse_allowed

ENV_PREFIX = "FACESTREAM_"
# Operating point of the default threshold, measured by `bench/calibrate.py` on the devset
# (100 enrolled subjects, 20 splits, people not enrolled as probes): FPIR mean 0.003, worst
# split 0.0085 <= 0.01; rank-1 identification rate 0.845. See README "Threshold".
DEFAULT_THRESHOLD_FPIR = 0.01
# Webhook event types a subscription can ask for (see services/notifier/logic.py).
# Match candidates; the erasure of a subject that earlier matches named (sent to whoever got
# those, whatever their event types: they hold copies to purge); a reviewer's decision on a candidate.
WEBHOOK_EVENT_TYPES = ("face.match.candidates", "face.subject.erased", "face.match.reviewed")
# Standard Webhooks' suggested schedule: the delay before each attempt (the first is immediate).
DEFAULT_WEBHOOK_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")  # what Kafka allows in topic and group names


def _duration(value: Any) -> Any:
    """Seconds from a number or a string such as "15", "500ms", "5m", "2h", "4d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: a number of seconds, or a number with ms, s, m, h or d")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


def _split(separator: str) -> BeforeValidator:
    """Lists given as one string (environment variables): a JSON list, or items separated by
    `separator`."""

    def split(value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(separator) if item.strip()]
        return value

    return BeforeValidator(split)


def _host_port(value: str) -> tuple[str, int]:
    address = urlsplit(f"//{value.strip()}")
    try:
        port = address.port
    except ValueError:
        port = None
    if not address.hostname or port is None or not 0 < port < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
    return address.hostname, port


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Delay = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
ServerPort = Annotated[int, Field(ge=-1, le=65535, description="-1: off; 0: any free port")]
Fraction = Annotated[float, Field(ge=0, le=1)]
KafkaName = Annotated[str, Field(pattern=_NAME.pattern)]


class SubscriptionSeed(BaseModel):
    """A `[[subscriptions]]` table: a webhook subscriber the notifier adds to its store (in
    Kafka) when none of that name exists yet. The signing secret comes from `secret` or, better,
    from the environment variable named by `secret_env`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]
    url: str
    secret: SecretStr | None = None
    secret_env: str | None = None
    watchlists: tuple[str, ...] = ()
    all_watchlists: bool = False
    min_score: Fraction = 0.0
    event_types: tuple[Literal["face.match.candidates", "face.match.reviewed"], ...] = ()

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _bound(self) -> SubscriptionSeed:
        if self.all_watchlists == bool(self.watchlists):
            raise ValueError("name the watchlists whose matches it receives, or set all_watchlists = true (one)")
        return self

    @model_validator(mode="after")
    def _secret_given(self) -> SubscriptionSeed:
        if self.secret is None and self.secret_env is None:
            raise ValueError("needs `secret_env` (the environment variable holding its signing secret) or `secret`")
        if self.secret is None and self.secret_env is not None and not os.environ.get(self.secret_env):
            raise ValueError(f"environment variable {self.secret_env} (its secret_env) is not set")
        return self

    @model_validator(mode="after")
    def _secret_is_standard(self) -> SubscriptionSeed:
        secret = (
            self.secret.get_secret_value() if self.secret is not None else os.environ.get(self.secret_env or "", "")
        )
        try:
            size = len(base64.b64decode(secret.removeprefix("whsec_"), validate=True))
        except (binascii.Error, ValueError):
            size = 0
        if not secret.startswith("whsec_") or not 24 <= size <= 64:
            where = "secret" if self.secret is not None else f"environment variable {self.secret_env}"
            raise ValueError(
                f"its {where} is not a Standard Webhooks secret: whsec_ and 24 to 64 base64-encoded bytes "
                "(`facestream subscriptions add` makes one)"
            )
        return self

    @property
    def signing_secret(self) -> str:
        if self.secret is not None:
            return self.secret.get_secret_value()
        return os.environ[self.secret_env or ""]


class WatchlistSpec(BaseModel):
    """A `[[watchlists]]` table: a watchlist and the purposes it may be searched for. Once any
    is declared, enrolment needs a declared watchlist (and a retention term within its
    `retention_days`), and a search a purpose each watchlist it would search allows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    purposes: Annotated[tuple[Annotated[str, Field(min_length=3, max_length=500)], ...], Field(min_length=1)]
    retention_days: int | None = Field(None, ge=1, description="longest retention term of its enrolments")


# The TOML file being loaded (path, values) and whether the environment applies: set by
# `load_settings` around one construction, read by the sources below.
_FILE: ContextVar[tuple[str | None, dict[str, Any]]] = ContextVar("facestream_settings_file", default=(None, {}))
_USE_ENV: ContextVar[bool] = ContextVar("facestream_settings_env", default=True)


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _FILE.get()[1].get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE.get()[1])


class Settings(BaseSettings):
    """Every setting, its type, its range and its default. `facestream config show` prints them
    with their current values and sources."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True, case_sensitive=False
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka brokers, HOST:PORT[,HOST:PORT...]")
    kafka_controller_port: Port = Field(9093, description="controller port of the local broker (`facestream kafka up`)")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client connects: SASL_SSL for a secured cluster"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_SSL, SASL_PLAINTEXT)"
    )
    kafka_username: str = Field(
        "", description="this process's Kafka principal (SASL): one per service for least privilege"
    )
    kafka_password: SecretStr = Field(SecretStr(""), description="its SASL password")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA certificate(s) the brokers' certificates are checked with (PEM)"
    )
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (PEM) when the brokers ask for one")
    kafka_ssl_keyfile: Path | None = Field(None, description="the client certificate's private key (PEM)")
    kafka_replication_factor: int = Field(
        1, ge=1, le=15, description="replicas of each topic the pipeline creates (3 on a cluster)"
    )
    kafka_min_insync_replicas: int = Field(
        1, ge=1, le=15, description="replicas that must have a write before it is acknowledged (2 on a cluster)"
    )
    topic_prefix: KafkaName = Field("facestream", description="every topic is <topic_prefix>.<name>")
    partitions: int = Field(4, ge=1, le=10_000, description="partitions of each pipeline topic (the parallelism)")
    app_id: KafkaName = Field("facestream", description="consumer group id (and prefix of the services' groups)")
    session_timeout_s: Seconds = Field(30.0, description="a silent worker's partitions move to the others after this")
    # Operations endpoint of each worker (metrics, health, status, dashboard)
    ops_host: str = Field("127.0.0.1", description="address the operations endpoint binds to")
    ops_port: ServerPort = Field(9464, description="operations endpoint port (-1: off, 0: any free port)")
    lag_interval_s: Seconds = Field(5.0, description="how often a worker reads its consumer lag from the broker")
    end_to_end_objective_s: Seconds = Field(
        10.0, description="objective for the p99 time from submission to webhook (exported; an alert compares)"
    )
    erasure_objective_s: Seconds = Field(
        600.0, description="objective for an erasure request to have its receipt (exported; an alert compares)"
    )
    # Local state
    data_dir: Path = Field(Path(".facestream"), description="local state: gallery index, keys, faust")
    # Images
    image_roots: Annotated[tuple[Path, ...], NoDecode, _split(os.pathsep)] = Field(
        (), description="file:// claim checks must lie below one of these (env: separated by ':')"
    )
    inline_max_bytes: int = Field(2 * 1024 * 1024, ge=0, description="largest image accepted inline (base64)")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest image fetched or decoded")
    max_image_pixels: int = Field(40_000_000, ge=1, description="most pixels an image may have (decompression bombs)")
    max_image_side: int = Field(12_000, ge=1, description="longest side an image may have")
    fetch_timeout_s: Seconds = Field(10.0, description="per-operation timeout of image fetches over HTTP")
    fetch_deadline_s: Seconds = Field(30.0, description="longest an image fetch over HTTP may take in all")
    fetch_allow_private: Annotated[tuple[str, ...], NoDecode, _split(",")] = Field(
        (), description="image hosts that may be private anyway: HOST, IP or CIDR, each [:PORT] (env: comma-separated)"
    )
    # Detector
    det_score_threshold: Fraction = Field(0.6, description="lowest face detection score accepted")
    min_face_px: int = Field(24, ge=1, description="smallest face side in pixels")
    min_sharpness: float = Field(15.0, ge=0, description="lowest sharpness (variance of the Laplacian) of a face")
    enrol_dominance: float = Field(
        1.5,
        ge=1,
        description="an enrolment's face must be this much more prominent (size x score^2 x centrality) than any other",
    )
    # Embedder
    triton_url: str = Field("", description="Triton gRPC HOST:PORT; empty: ONNX Runtime in the worker")
    triton_model: str = Field("sface", min_length=1, description="model name on Triton")
    triton_model_version: str = Field("", description="model version on Triton; empty: the server's latest")
    triton_timeout_s: Seconds = Field(10.0, description="timeout of one Triton request")
    triton_max_in_flight: int = Field(4, ge=1, description="Triton requests in flight per worker")
    triton_retry_for_s: Delay = Field(300.0, description="how long a batch waits for an unavailable Triton")
    model_repository: Path = Field(
        Path("models"), description="model repository: the prepared SFace (`facestream prepare-model`), also Triton's"
    )
    embedder_runtime: Literal["openvino", "opencv", "onnxruntime"] = Field(
        "openvino",
        description="SFace's runtime in the model processes when triton_url is unset: openvino (the least CPU "
        "a face on the CPUs measured by bench/models.py), opencv (OpenCV's DNN module) or onnxruntime; the "
        "same embeddings",
    )
    # Matcher
    gallery_backend: Literal["edge", "qdrant"] = Field(
        "edge", description="edge: Qdrant embedded in the worker; qdrant: a Qdrant server at qdrant_url"
    )
    qdrant_url: str = Field("", description="Qdrant server URL (http://HOST:6333) when gallery_backend = qdrant")
    qdrant_api_key: SecretStr = Field(SecretStr(""), description="Qdrant API key, when the server requires one")
    qdrant_timeout_s: Seconds = Field(10.0, description="timeout of one request to the Qdrant server")
    qdrant_shards: int = Field(
        1, ge=1, le=1000, description="shards of the gallery collection when a matcher creates it (a Qdrant cluster)"
    )
    qdrant_replicas: int = Field(
        1, ge=1, le=10, description="peers holding each shard (2 or more: a peer may fail without losing searches)"
    )
    gallery_name: KafkaName = Field("faces", description="the gallery's collection name")
    gallery_index_after: int = Field(
        20_000,
        ge=1,
        description="embedded gallery: points waiting for the search graph (HNSW) before one is built aside",
    )
    gallery_keys: SecretStr = Field(
        SecretStr(""),
        description="Fernet key(s) wrapping each subject's data key, comma-separated: the first wraps new keys, "
        "every one unwraps (rotation); empty: a key file under data_dir (one machine)",
    )
    transit_retention_hours: float = Field(
        12.0, gt=0, description="how long images, faces and embeddings stay in their topics (they hold biometric data)"
    )
    max_retention_days: int = Field(
        3 * 365, ge=1, description="longest retention term an enrolment may ask for (3 years: BIPA's outer limit)"
    )
    retention_sweep_s: Seconds = Field(
        3600.0, description="how often the retention sweeper looks for consent terms that have passed"
    )
    replica_heartbeat_s: Seconds = Field(
        2.0, description="how often a matcher replica reports its applied offset (erasures wait for the live ones)"
    )
    erasure_ack_timeout_s: Seconds = Field(
        30.0, description="longest an erasure waits for each live replica's acknowledgement before its receipt"
    )
    top_k: int = Field(5, ge=1, le=100, description="most candidates per face")
    threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="a fixed lowest cosine similarity of a candidate; empty: the threshold follows the gallery's size "
        "to hold threshold_fpir",
    )
    threshold_fpir: Fraction = Field(
        DEFAULT_THRESHOLD_FPIR,
        description="target false-positive identification rate (of searches of people not enrolled)",
    )
    calibration_file: Path | None = Field(
        None,
        description="the model's impostor calibration (`facestream calibrate --labels DIR` writes one); "
        "empty: the one shipped",
    )
    watchlists: tuple[WatchlistSpec, ...] = Field(
        (),
        description="[[watchlists]] tables (name, purposes, retention_days): searches are bound to the purposes "
        "their watchlists allow; none declared: any watchlist, any purpose",
    )
    # Audit
    audit_signing_key: SecretStr = Field(
        SecretStr(""),
        description="Ed25519 key (32-byte seed, url-safe base64) signing the audit chain's checkpoints; empty: a key "
        "file under data_dir (one machine)",
    )
    audit_verify_key: str = Field(
        "",
        description="the audit signing key's public half (url-safe base64; `facestream audit key` prints it), for "
        "`facestream audit verify` where the signing key is not at hand",
    )
    audit_checkpoint_records: int = Field(
        100, ge=1, le=1_000_000, description="the audit sequencer signs a checkpoint after this many entries"
    )
    audit_checkpoint_s: Seconds = Field(
        10.0, description="... or this long after the first entry not yet covered by a checkpoint"
    )
    # Notifier
    subscriptions: tuple[SubscriptionSeed, ...] = Field(
        (), description="[[subscriptions]] tables: added to the subscription store if missing there"
    )
    subscriptions_key: SecretStr = Field(
        SecretStr(""),
        description="Fernet key encrypting signing secrets at rest; empty: a key file under data_dir (one machine)",
    )
    webhook_allow_private: Annotated[tuple[str, ...], NoDecode, _split(",")] = Field(
        (), description="webhook endpoints that may be private anyway: HOST, IP or CIDR, each [:PORT]"
    )
    webhook_timeout_s: Seconds = Field(15.0, description="timeout of one webhook attempt")
    webhook_schedule_s: Annotated[tuple[Delay, ...], NoDecode, _split(",")] = Field(
        DEFAULT_WEBHOOK_SCHEDULE,
        description="delay before each attempt: from 0, never decreasing (env: comma-separated)",
    )
    webhook_event_ttl_s: Seconds = Field(4 * 86400.0, description="a match undelivered this long is dead-lettered")
    webhook_max_pending: int = Field(1000, ge=1, description="deliveries one subscriber may have waiting per worker")
    crops_host: str = Field("127.0.0.1", description="address the probe crop server binds to")
    crops_port: ServerPort = Field(9465, description="probe crop server port (-1: no crop links, 0: any free port)")
    crops_public_url: str = Field("", description="how subscribers reach the crop server (behind your TLS ingress)")
    # The management API (services/api)
    api_host: str = Field("127.0.0.1", description="address the API binds to (TLS belongs to the ingress in front)")
    api_port: ServerPort = Field(9466, description="API port (-1: off, 0: any free port)")
    api_max_body_bytes: int = Field(
        3 * 1024 * 1024, ge=1024, description="largest request body (an inline image is base64: 4/3 of its size)"
    )
    api_rate_per_s: float = Field(20.0, gt=0, description="requests a second one token may make, sustained")
    api_burst: float = Field(40.0, ge=1, description="requests one token may make at once")
    api_auth_failures_per_min: float = Field(20.0, ge=1, description="failed authentications one address may make")
    api_wait_max_s: Seconds = Field(60.0, description="longest `?wait` a request may ask for")
    api_outcome_window_s: Seconds = Field(
        3600.0, description="how far back a starting API worker reads outcomes (GET /v1/searches/{id})"
    )
    # Every stage's stream
    batch_max: int = Field(32, ge=1, le=10_000, description="most events a stage takes at once")
    # Every batch costs a produce, a fetch and an acknowledgement on each hop after it: at 20 ms a fast
    # stage (the matcher, the notifier) ran batches of 1 or 2 and spent more CPU on them than on its work.
    batch_within_s: Delay = Field(0.05, description="longest wait to fill a batch")
    records_in_flight: int = Field(
        64,
        ge=1,
        le=10_000,
        description="records the detector works on at once, each on its own (a slow image source holds one)",
    )
    transient_retries: int = Field(
        3, ge=0, le=20, description="times an event that failed for a passing reason is tried again before the dlq"
    )
    transient_backoff_s: Delay = Field(1.0, description="pause before the first such retry (doubling after)")
    shutdown_grace_s: Seconds = Field(
        20.0, description="how long a stopping worker lets work in flight finish (the rest is redelivered)"
    )
    workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, description="threads for model work")
    model_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 2, ge=0, description="model processes per worker (0: threads)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _USE_ENV.get():
            return init_settings, env_settings, _FileSource(settings_cls)
        return init_settings, _FileSource(settings_cls)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for address in value.split(","):
            _host_port(address)
        return value

    @field_validator("triton_url")
    @classmethod
    def _check_triton(cls, value: str) -> str:
        if value:
            _host_port(value)
        return value

    @field_validator("qdrant_url", "crops_public_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value) if value else value

    @field_validator("fetch_allow_private", "webhook_allow_private")
    @classmethod
    def _check_allowed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_allowed(item)
        return value

    @field_validator("subscriptions_key", "gallery_keys", "audit_signing_key")
    @classmethod
    def _check_key(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        raw = value.get_secret_value()
        keys = [k.strip() for k in raw.split(",")] if info.field_name == "gallery_keys" and raw else [raw]
        try:
            ok = all(not k or len(base64.urlsafe_b64decode(k.encode())) == 32 for k in keys)
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            several = ", comma-separated" if info.field_name == "gallery_keys" else ""
            raise ValueError(f"must be empty or a Fernet key: 32 bytes, url-safe base64 (44 characters){several}")
        return value

    @field_validator("webhook_schedule_s")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or value[0] != 0 or any(b < a for a, b in itertools.pairwise(value)):
            raise ValueError("must start at 0 (the first attempt is immediate) and never decrease, e.g. 0,5s,5m,30m")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_username and self.kafka_password.get_secret_value()
        ):
            raise ValueError(
                f"kafka_security_protocol = {self.kafka_security_protocol} needs kafka_username and kafka_password"
            )
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together (a client certificate and its key)")
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                "kafka_min_insync_replicas is above kafka_replication_factor: no write could be acknowledged"
            )
        return self

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.gallery_backend == "qdrant" and not self.qdrant_url:
            raise ValueError("gallery_backend = qdrant needs qdrant_url")
        return self

    @model_validator(mode="after")
    def _check_watchlists(self) -> Settings:
        names = [w.name for w in self.watchlists]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"watchlists declared twice: {', '.join(twice)}")
        longer = [w.name for w in self.watchlists if (w.retention_days or 0) > self.max_retention_days]
        if longer:
            raise ValueError(f"watchlists {', '.join(longer)}: retention_days above max_retention_days")
        return self

    def topic(self, name: str) -> str:
        """Full topic name: images, faces, embeddings, matches, dlq, ..."""
        return f"{self.topic_prefix}.{name}"

    @property
    def gallery_path(self) -> Path:
        return self.data_dir / "gallery"


def _env_name(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _read_file(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"settings file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc


def source_of(name: str, path: str | Path | None, file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """Where the value of setting `name` came from, in the order sources win."""
    if name in overrides:
        return "argument"
    if _USE_ENV.get() and _env_name(name) in {k.upper() for k in os.environ}:
        return f"environment variable {_env_name(name)}"
    if name in file_values:
        return f"file {path}"
    return "default"


def _explain(exc: ValidationError, path: str | Path | None, values: Mapping[str, Any], over: Mapping[str, Any]) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = loc[0] if loc else "(settings)"
        where = name + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and len(loc) == 1:
            message = "unknown setting (see `facestream config show` for every setting)"
        if not loc:  # a rule over several settings: each may come from somewhere else
            lines.append(f"settings: {message}"[:500])
            continue
        source = source_of(name, path, values, over)
        given = "" if error["type"] in {"extra_forbidden", "missing"} else f" (got {error.get('input')!r})"
        lines.append(f"{where} from {source}: {message}{given}"[:500])
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(path: str | Path | None = None, *, environment: bool = True, **overrides: Any) -> Settings:
    """Settings from defaults, then the TOML file (`path`, default `$FACESTREAM_CONFIG`), then the
    environment (unless `environment` is false), then `overrides`; `ConfigError` if any is invalid."""
    path = path or os.environ.get("FACESTREAM_CONFIG") or None
    values = _read_file(path) if path else {}
    tokens = (_FILE.set((str(path) if path else None, values)), _USE_ENV.set(environment))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path, values, overrides)) from None
    except SettingsError as exc:  # an environment variable that does not parse (JSON lists)
        raise ConfigError(f"invalid settings: {exc}") from None
    finally:
        _USE_ENV.reset(tokens[1])
        _FILE.reset(tokens[0])


def _literal(value: Any) -> str:
    if isinstance(value, SecretStr):
        return json.dumps("********" if value.get_secret_value() else "")
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(x) for x in value) + "]"
    if isinstance(value, BaseModel):  # a [[watchlists]] entry: an inline table
        value = value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_literal(v)}" for k, v in value.items() if v is not None) + "}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def describe(
    settings: Settings, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Iterator[str]:
    """The effective settings as TOML lines, each with its source and meaning; secrets masked."""
    path = path or os.environ.get("FACESTREAM_CONFIG") or None
    values = _read_file(path) if path else {}
    seeds: tuple[SubscriptionSeed, ...] = ()
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        source = source_of(name, path, values, overrides or {})
        if name == "subscriptions":
            seeds = value
            yield f"# subscriptions: {len(value)} [[subscriptions]] table(s) below ({source})"
            continue
        yield f"{name} = {_literal(value)}  # {source}; {info.description}"
    for seed in seeds:
        yield ""
        yield "[[subscriptions]]"
        for key, value in seed.model_dump(exclude_none=True).items():
            shown = SecretStr(value) if key == "secret" else value
            yield f"{key} = {_literal(shown)}"


def to_toml(values: dict[str, Any], subscriptions: Sequence[dict[str, Any]] = ()) -> str:
    """A settings file for `load_settings` (flat values, then `[[subscriptions]]` tables)."""
    lines = [f"{k} = {_literal(v)}" for k, v in values.items()]
    for sub in subscriptions:
        lines += ["", "[[subscriptions]]", *(f"{k} = {_literal(v)}" for k, v in sub.items())]
    return "\n".join(lines) + "\n"
