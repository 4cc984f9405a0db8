"""The deployment files agree with the code. No container engine runs here, so what can be checked
without one is checked: the files parse; every setting they set exists and validates; services run
commands the CLI has; replicas can scale (no fixed host ports, Prometheus discovers them by DNS and
promtool accepts the configuration); the image's data directory is a volume its non-root user
owns, and its embedder finds the prepared model where the image puts it. Building and running the
image and the compose project are not tested here (no Docker engine on these machines)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY

import facestream.ops.metrics  # noqa: F401  (registers the metrics)
from devtools.binaries import binary
from facestream.cli import parser
from facestream.config import Settings, load_settings
from facestream.runtime.service import runnable
from facestream.services.main import SERVICES
from tests.conftest import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
FACESTREAM_SERVICES = [s.name for s in runnable(SERVICES)]  # those a worker runs


def _substitute(value: str) -> str:
    """Compose's ${VAR:?message} and ${VAR:-default}, with a sample value for required secrets."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if op == ":-":
            return rest
        if "SECRET" in name:
            return "whsec_Y29uZmlnIHRlc3Qgc2VjcmV0LCAzMiBieXRlcyBvaw=="
        return Fernet.generate_key().decode()

    return re.sub(r"\$\{(\w+)(:[?-])?([^}]*)\}", one, value)


def test_grafana_queries_only_exported_metrics() -> None:
    dashboard = orjson.loads((ROOT / "deploy/grafana/facestream-dashboard.json").read_bytes())
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("facestream_")
        for suffix in suffixes.get(family.type, [""])
    }
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"facestream_[a-z_]+", target["expr"])
    }
    assert queried, "the dashboard queries facestream metrics"
    assert queried <= exported, queried - exported


@pytest.mark.parametrize("name", FACESTREAM_SERVICES)
def test_compose_services_run_real_commands_with_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = COMPOSE["services"][name]
    args = parser(SERVICES).parse_args(service["command"])
    assert args.service == [name]
    environment = {k: _substitute(str(v)) for k, v in service["environment"].items()}
    for key in [k for k in os.environ if k.startswith("FACESTREAM_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    config = environment.pop("FACESTREAM_CONFIG")
    assert config == "/etc/facestream/facestream.toml"
    [mount] = [v for v in service["volumes"] if v.endswith(f":{config}:ro")]
    settings = load_settings(ROOT / mount.split(":")[0].removeprefix("./"))  # file + environment
    settings_names = {f"FACESTREAM_{n.upper()}" for n in Settings.model_fields}
    assert {k for k in environment if k.startswith("FACESTREAM_")} <= settings_names
    assert settings.gallery_backend == "qdrant" and settings.kafka_bootstrap == "kafka:9092"  # noqa: PT018
    assert "ports" not in service, "a published host port would keep replicas from scaling"
    assert "container_name" not in service


def test_compose_waits_for_healthy_dependencies() -> None:
    services = COMPOSE["services"]
    assert "healthcheck" in services["qdrant"] and "healthcheck" in services["kafka"]  # noqa: PT018
    assert services["matcher"]["depends_on"]["qdrant"] == {"condition": "service_healthy"}
    assert services["embedder"]["depends_on"]["triton"] == {"condition": "service_healthy"}
    probe = services["qdrant"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(probe)
    assert "curl" not in " ".join(probe)  # the image has none


def test_prometheus_discovers_every_replica(tmp_path: Path) -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert "static_configs" not in job
    [dns] = job["dns_sd_configs"]
    assert sorted(dns["names"]) == sorted(FACESTREAM_SERVICES)
    assert dns["port"] == Settings.model_fields["ops_port"].default
    promtool = binary("promtool")
    if promtool is None:
        pytest.skip("promtool is neither in ../shared/bin nor on PATH (it is here and in CI)")
    result = subprocess.run(
        [str(promtool), "check", "config", str(ROOT / "deploy/prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_has_a_writable_data_volume_and_the_prepared_model() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    text = "\n".join(lines)
    runtime = text[text.rindex("FROM ") :]  # the final stage
    env = dict(re.findall(r"(FACESTREAM_\w+)=(\S+)", runtime))
    data_dir, models = env["FACESTREAM_DATA_DIR"], env["FACESTREAM_MODEL_REPOSITORY"]
    assert f'VOLUME ["{data_dir}"]' in runtime
    user = re.search(r"^USER (\S+)$", runtime, re.M)
    assert user is not None
    assert user.group(1) not in {"root", "0"}
    assert f"chown {user.group(1)}:{user.group(1)} {data_dir}" in runtime
    # The model is prepared in the build stage into the path the runtime stage copies and names.
    assert f"prepare-model --repository {models}" in text
    assert f"COPY --from=build {models} {models}" in runtime
    assert 'ENTRYPOINT ["facestream"]' in runtime  # compose passes `run --service NAME` to it
    # Every path the image copies from the build context exists in the repository.
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in source.split():
            assert (ROOT / part).exists(), part


def test_deploy_settings_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASES_WEBHOOK_SECRET", "whsec_Y29uZmlnIHRlc3Qgc2VjcmV0LCAzMiBieXRlcyBvaw==")
    settings = load_settings(ROOT / "deploy/facestream.toml", environment=False)
    assert [s.name for s in settings.subscriptions] == ["case-system"]
    assert [w.name for w in settings.watchlists] == ["missing-persons"]  # the deployment is purpose-bound
