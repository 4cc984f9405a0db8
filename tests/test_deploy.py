"""The deployment files stay in step with the code: every metric the Grafana dashboard queries
is one facestream exports, and docker-compose's services run commands that exist."""

from __future__ import annotations

import re

import orjson
from prometheus_client import REGISTRY

import facestream.metrics  # noqa: F401  (registers the metrics)
from facestream.app import SERVICES
from tests.conftest import ROOT


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


def test_compose_runs_each_service_and_scrapes_it() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    for service in SERVICES:
        assert f'command: ["run", "--service", "{service}"]' in compose
    scrape = (ROOT / "deploy/prometheus.yml").read_text()
    assert all(f"{service}:9464" in scrape for service in SERVICES)
