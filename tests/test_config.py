"""Settings: validated when loaded, with errors that name the setting, its source and what is
allowed; shown with their sources and secrets masked; secrets only from configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from facestream.config import describe, load_settings
from facestream.errors import ConfigError
from tests.conftest import ROOT

SECRET = "whsec_Y29uZmlnIHRlc3Qgc2VjcmV0LCAzMiBieXRlcyBvaw=="  # a Standard Webhooks secret: whsec_ and 24 to 64 bytes


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("FACESTREAM_")]:
        monkeypatch.delenv(key)


def test_toml_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "facestream.toml"
    path.write_text(
        'partitions = 8\nimage_roots = ["/srv/images"]\nthreshold = 0.5\nfetch_timeout_s = "2m"\n\n'
        '[[subscriptions]]\nname = "cases"\nurl = "https://cases.example/hooks"\nsecret_env = "CASES_SECRET"\n'
        'watchlists = ["missing"]\nmin_score = 0.6\n'
    )
    monkeypatch.setenv("CASES_SECRET", SECRET)
    monkeypatch.setenv("FACESTREAM_THRESHOLD", "0.55")
    monkeypatch.setenv("FACESTREAM_WEBHOOK_ALLOW_PRIVATE", "127.0.0.1:8443, receiver.internal, [::1]:9000, 10.0.0.0/8")
    monkeypatch.setenv("FACESTREAM_WEBHOOK_SCHEDULE_S", "0,500ms,5m,2h")
    settings = load_settings(path, top_k=3)
    assert settings.partitions == 8  # file
    assert settings.threshold == 0.55  # environment over file
    assert settings.top_k == 3  # argument
    assert settings.fetch_timeout_s == 120.0  # durations with units
    assert settings.image_roots == (Path("/srv/images"),)
    assert settings.webhook_allow_private == ("127.0.0.1:8443", "receiver.internal", "[::1]:9000", "10.0.0.0/8")
    assert settings.fetch_allow_private == ()  # a receiver allowed is no image host allowed
    assert settings.webhook_schedule_s == (0.0, 0.5, 300.0, 7200.0)
    [seed] = settings.subscriptions
    assert seed.signing_secret == SECRET
    assert seed.watchlists == ("missing",)
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("partitions", 0, "partitions from argument: Input should be greater than or equal to 1"),
        ("ops_port", 70000, "ops_port from argument: Input should be less than or equal to 65535"),
        ("threshold", "high", "threshold from argument: Input should be a valid number"),
        ("gallery_backend", "sqlite", "gallery_backend from argument: Input should be 'edge' or 'qdrant'"),
        ("kafka_bootstrap", "127.0.0.1", "kafka_bootstrap from argument: '127.0.0.1' is not HOST:PORT"),
        ("qdrant_url", "qdrant:6333", "qdrant_url from argument: 'qdrant:6333' is not an http:// or https:// URL"),
        ("fetch_timeout_s", "10 minutes", "fetch_timeout_s from argument: '10 minutes' is not a duration"),
        ("webhook_schedule_s", "5,1", "webhook_schedule_s from argument: must start at 0"),
        ("webhook_schedule_s", "0,5,1", "webhook_schedule_s from argument: must start at 0 (the first attempt is"),
        ("fetch_allow_private", "not a host!", "fetch_allow_private from argument: 'not a host!' is neither a host"),
        (
            "webhook_allow_private",
            "127.0.0.1:99999",
            "webhook_allow_private from argument: '127.0.0.1:99999': port out",
        ),
        ("subscriptions_key", "short", "subscriptions_key from argument: must be empty or a Fernet key"),
        ("topic_prefix", "has space", "topic_prefix from argument: String should match pattern"),
        ("bogus", 1, "bogus from argument: unknown setting"),
    ],
)
def test_invalid_values_name_setting_source_and_rule(source: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{source: value})
    assert expected in str(caught.value)


def test_errors_name_the_file_or_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('partitions = -1\nqdrant_url = "http://q:6333"\n\n[[subscriptions]]\nname = "x"\nurl = "ftp://x"\n')
    monkeypatch.setenv("FACESTREAM_MIN_FACE_PX", "zero")
    monkeypatch.setenv("FACESTREAM_GALLERY_BACKEND", "qdrant")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert f"partitions from file {path}: Input should be greater than or equal to 1 (got -1)" in message
    assert "min_face_px from environment variable FACESTREAM_MIN_FACE_PX: Input should be a valid integer" in message
    assert f"subscriptions[0].url from file {path}: 'ftp://x' is not an http:// or https:// URL" in message
    # Only the broken values are reported; the backend from the environment and the URL from the file agree.
    assert "gallery_backend" not in message
    path.write_text(
        '[[subscriptions]]\nname = "x"\nurl = "https://x.example"\nsecret_env = "NOT_SET_ANYWHERE"\n'
        "all_watchlists = true\n"
    )
    monkeypatch.delenv("FACESTREAM_MIN_FACE_PX")
    monkeypatch.delenv("FACESTREAM_GALLERY_BACKEND")
    with pytest.raises(ConfigError, match="environment variable NOT_SET_ANYWHERE"):
        load_settings(path)
    monkeypatch.setenv("NOT_SET_ANYWHERE", "notasecret")
    with pytest.raises(ConfigError, match="is not a Standard Webhooks secret"):
        load_settings(path)
    path.write_text("partitions = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="gallery_backend = qdrant needs qdrant_url"):
        load_settings(gallery_backend="qdrant")


def test_show_masks_secrets_and_names_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    path = tmp_path / "c.toml"
    path.write_text(
        f'partitions = 2\n\n[[subscriptions]]\nname = "x"\nurl = "https://x.example"\nsecret = "{SECRET}"\n'
        "all_watchlists = true\n"
    )
    monkeypatch.setenv("FACESTREAM_SUBSCRIPTIONS_KEY", key)
    monkeypatch.setenv("FACESTREAM_CONFIG", str(path))
    lines = list(describe(load_settings()))
    text = "\n".join(lines)
    assert key not in text
    assert SECRET not in text
    assert 'subscriptions_key = "********"  # environment variable FACESTREAM_SUBSCRIPTIONS_KEY' in text
    assert f"partitions = 2  # file {path}" in text
    assert 'topic_prefix = "facestream"  # default' in text
    assert 'secret = "********"' in text


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facestream.services", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_config_commands(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("partitions = 6\nops_port = 9500\n")
    bad.write_text('partitions = 6\nops_port = "nine"\n')
    checked = _cli("config", "check", str(good), env=env)
    assert checked.returncode == 0, checked.stderr
    assert f"{good}: valid" in checked.stdout
    refused = _cli("config", "check", str(bad), env=env)
    assert refused.returncode == 2
    assert f"ops_port from file {bad}: Input should be a valid integer" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The check is of the file alone: an environment variable elsewhere does not hide its error.
    refused = _cli("config", "check", str(bad), env={**env, "FACESTREAM_OPS_PORT": "9464"})
    assert refused.returncode == 2
    # What a service reads at start is checked too: a calibration file that is not there.
    missing = tmp_path / "elsewhere" / "calibration.json"
    (tmp_path / "calibrated.toml").write_text(f'calibration_file = "{missing}"\n')
    refused = _cli("config", "check", str(tmp_path / "calibrated.toml"), env=env)
    assert refused.returncode == 2
    assert f"calibration {missing}" in refused.stderr
    assert "Traceback" not in refused.stderr
    shown = _cli("--config", str(good), "config", "show", env={**env, "FACESTREAM_PARTITIONS": "3"})
    assert shown.returncode == 0, shown.stderr
    assert "partitions = 3  # environment variable FACESTREAM_PARTITIONS" in shown.stdout
    assert f"ops_port = 9500  # file {good}" in shown.stdout


def test_kafka_security_and_replication_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SASL_SSL needs kafka_username and kafka_password"):
        load_settings(environment=False, kafka_security_protocol="SASL_SSL", kafka_username="detector")
    with pytest.raises(ConfigError, match=r"kafka_ssl_cafile: .* is not a readable file"):
        load_settings(environment=False, kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")
    (tmp_path / "client.pem").write_text("x")
    with pytest.raises(ConfigError, match="kafka_ssl_certfile and kafka_ssl_keyfile go together"):
        load_settings(environment=False, kafka_ssl_certfile=tmp_path / "client.pem")
    # A rule over two settings names no single source (each may come from elsewhere).
    with pytest.raises(ConfigError, match="\n  settings: kafka_min_insync_replicas is above kafka_replication_factor"):
        load_settings(environment=False, kafka_replication_factor=1, kafka_min_insync_replicas=2)
    secured = load_settings(
        environment=False, kafka_security_protocol="SASL_SSL", kafka_username="detector", kafka_password="Xq7-secret"
    )
    assert "Xq7-secret" not in "\n".join(describe(secured))


def test_topics_are_made_with_the_configured_replication() -> None:
    from facestream.io.kafka import pipeline_topics

    settings = load_settings(environment=False, kafka_replication_factor=3, kafka_min_insync_replicas=2)
    for spec in pipeline_topics(settings):
        topic = spec.new_topic(settings.kafka_replication_factor, settings.kafka_min_insync_replicas)
        assert topic.replication_factor == 3
        assert topic.topic_configs["min.insync.replicas"] == "2"
