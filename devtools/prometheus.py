"""A real Prometheus server on loopback for tests and the dashboard snapshot (the binary from
../shared/bin, or a `prometheus` on PATH; see devtools/binaries.py): it scrapes the given worker
operations endpoints as deploy/prometheus.yml does (job `facestream`, a `service` label per
target) and evaluates deploy/prometheus/alerts.yml, both every second."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from devtools.binaries import ROOT, binary
from devtools.ports import free_port
from devtools.processes import stop, wait_http

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
READY_S = 60.0


class LocalPrometheus:
    def __init__(self, folder: Path, targets: Mapping[str, str], interval: str = "1s") -> None:
        """`targets`: service name -> host:port of its worker's operations endpoint."""
        exe = binary("prometheus")
        if exe is None:
            raise FileNotFoundError("prometheus is neither in ../shared/bin nor on PATH")
        self.exe = exe
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "facestream",
                    "static_configs": [
                        {"targets": [address], "labels": {"service": service, "pipeline": "facestream"}}
                        for service, address in targets.items()
                    ],
                }
            ],
        }
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "prometheus.log", "wb")  # noqa: SIM115  (the process keeps it)
        self.process = subprocess.Popen(
            [
                str(self.exe),
                f"--config.file={self.config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={self.folder / 'data'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_http(self.process, f"{self.url}/-/ready", READY_S, "prometheus", self.log_tail)

    def log_tail(self, limit: int = 2000) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-limit:]

    def stop(self) -> None:
        stop(self.process)

    def _api(self, path: str, **params: Any) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (ValueError: the query failed)."""
        return list(self._api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self._api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def rules(self) -> list[dict[str, Any]]:
        """Every rule loaded, with its health and last error."""
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def targets_up(self) -> bool:
        active = self._api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)
