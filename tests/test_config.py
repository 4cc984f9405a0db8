"""Settings from TOML and the environment; secrets only from configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from facestream.config import load_settings
from facestream.errors import ConfigError


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "facestream.toml"
    path.write_text(
        'partitions = 8\nimage_roots = ["/srv/images"]\nthreshold = 0.5\n\n'
        '[[subscriptions]]\nname = "cases"\nurl = "https://cases.example/hooks"\nsecret_env = "CASES_SECRET"\n'
        'watchlists = ["missing"]\nmin_score = 0.6\n'
    )
    monkeypatch.setenv("CASES_SECRET", "whsec_c2VjcmV0")
    monkeypatch.setenv("FACESTREAM_THRESHOLD", "0.55")
    settings = load_settings(path)
    assert settings.partitions == 8
    assert settings.threshold == 0.55
    assert settings.image_roots == (Path("/srv/images"),)
    [sub] = settings.subscriptions
    assert sub.signing_secrets(0) == ["whsec_c2VjcmV0"]
    assert sub.watchlists == ("missing",)
    assert sub.wants("missing", 0.7)
    assert not sub.wants("other", 0.9)
    assert not sub.wants("missing", 0.5)


def test_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESTREAM_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="unknown settings: bogus"):
        load_settings(bogus=1)
    with pytest.raises(ConfigError, match="gallery_backend"):
        load_settings(gallery_backend="sqlite")
    with pytest.raises(ConfigError, match="webhook_schedule_s"):
        load_settings(webhook_schedule_s="5,1")  # must start immediately and never decrease
    assert load_settings(webhook_schedule_s="0,1,5").webhook_schedule_s == (0.0, 1.0, 5.0)
    path = tmp_path / "c.toml"
    path.write_text('[[subscriptions]]\nname = "x"\nurl = "https://x"\nsecret_env = "NOT_SET_ANYWHERE"\n')
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_settings(path)
