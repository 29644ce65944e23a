"""The alert rules pass promtool's checks and its unit tests (tests/alerts/alerts.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "charts" / "sd-serving" / "files" / "alerts.yaml"


def promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: `make tools` installs Debian's prometheus package"
    return binary


def test_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_promtool_unit_tests() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests" / "alerts",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_severity_runbook_and_a_unit_test() -> None:
    rules = [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]
    tested = (ROOT / "tests" / "alerts" / "alerts.test.yaml").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"
