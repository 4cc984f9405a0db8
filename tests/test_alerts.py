"""The alerts (deploy/prometheus/alerts.yml) pass their unit tests in the real `promtool test rules`
(../shared/bin): each fires on what it is for and stays quiet on its harmless neighbour. Every
alert has such a test and a runbook line in the README. That a real Prometheus evaluates them
against a running worker is tests/test_triton.py's pipeline test."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from devtools.binaries import binary
from tests.conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = binary("promtool")
    if promtool is None:
        pytest.skip("promtool is neither in ../shared/bin nor on PATH (it is here and in CI)")
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120)


def test_the_alert_rules_pass_their_unit_tests() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [
        case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test.get("alert_rule_test", [])
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert set(_alerts()) == fires == quiet


def test_every_alert_has_a_runbook_line_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Alerts and what to do") :]
    section = section[: section.index("\n#", 1)]
    for name, rule in _alerts().items():
        assert re.search(rf"^- `{name}`", section, re.M), f"no runbook line for {name}"
        assert rule["annotations"]["runbook"] == "README.md#alerts-and-what-to-do"
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_prometheus_loads_the_alerts() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert [(ROOT / "deploy" / f).resolve() for f in config["rule_files"]] == [RULES]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/prometheus/alerts.yml:ro" in mounts
