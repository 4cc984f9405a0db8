"""The local single-node Kafka broker of a source checkout (`scripts/kafka.sh`), started on the
ports the settings name, so the broker listens where the clients connect."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from facestream.config import Settings
from facestream.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"


def broker_env(settings: Settings) -> dict[str, str]:
    """The environment `scripts/kafka.sh` reads its ports from, taken from `settings`."""
    first = settings.kafka_bootstrap.split(",")[0]
    address = urlsplit(f"//{first}")
    if address.hostname not in {"127.0.0.1", "localhost"} or address.port is None:
        raise ConfigError(
            f"kafka_bootstrap is {settings.kafka_bootstrap!r}: the local broker listens on 127.0.0.1:PORT only"
        )
    return {
        "FACESTREAM_KAFKA_PORT": str(address.port),
        "FACESTREAM_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
    }


def local_broker(command: str, settings: Settings) -> int:
    """`scripts/kafka.sh up|down|status|fetch|reset` with the settings' ports; its exit code."""
    if not SCRIPT.is_file():
        raise ConfigError(
            "the local broker comes with a source checkout (scripts/kafka.sh); this installation has none: "
            "point kafka_bootstrap at your Kafka cluster"
        )
    return subprocess.call(["bash", str(SCRIPT), command], env={**os.environ, **broker_env(settings)})
