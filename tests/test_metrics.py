"""`gmail-token-store metrics`: the table's health as Prometheus reads it, and the alerts."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from gmail_token_store.metrics import ROW_STATES

from conftest import SeedRow, utcnow
from helpers import Cli

ALERTS = Path(__file__).parent.parent / "examples" / "prometheus_alerts.yml"


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    families = text_string_to_metric_families(text)
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in families
    }


def test_metrics_count_every_state_zeros_included_and_the_ones_needing_a_person(
    cli: Cli, seed: SeedRow
) -> None:
    for row in (
        seed(expires_in=3600),
        seed(expires_in=3500),
        seed(expires_in=100),
        seed(expires_in=-60),
        seed(expires_in=-60, token_data=Jsonb({"access_token": "ya29.no-refresh-" + "x" * 9})),
        seed(oauth_config=Jsonb({"token_uri": "https://evil.example/t"})),
        seed(updated_at=utcnow() - timedelta(days=200)),
    ):
        cli.secrets |= {row.access_token, row.refresh_token}

    result = cli("metrics")

    assert result.returncode == 0, result.stderr
    metrics = _samples(result.stdout)
    grants = {
        dict(labels)["state"]: value for labels, value in metrics["gmail_token_grants"].items()
    }
    assert set(grants) == set(ROW_STATES)
    assert grants == {
        "ok": 2,
        "refresh-due": 1,
        "expired": 1,
        "reauth-required": 1,
        "broken": 1,
        "idle": 1,
    }
    assert metrics["gmail_token_needs_attention"][()] == 3
    assert metrics["gmail_token_earliest_expiry_seconds"][()] == 0  # one has expired
    assert 0 <= metrics["gmail_token_newest_refresh_age_seconds"][()] < 60


def test_metrics_of_an_empty_table_are_zeros(cli: Cli) -> None:
    metrics = _samples(cli("metrics").stdout)
    assert set(metrics["gmail_token_grants"].values()) == {0}
    assert metrics["gmail_token_needs_attention"][()] == 0
    assert "gmail_token_earliest_expiry_seconds" not in metrics  # no expiry to speak of


def test_alert_rules_use_only_metrics_the_command_exports(cli: Cli, seed: SeedRow) -> None:
    row = seed()
    cli.secrets |= {row.access_token, row.refresh_token}
    exported = set(_samples(cli("metrics").stdout))
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {
        "GmailGrantNeedsAPerson",
        "GmailTokenKeepaliveNotRunning",
    }
    for rule in rules:
        used = set(re.findall(r"\bgmail_token_[a-z_]+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
