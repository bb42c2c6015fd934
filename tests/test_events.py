"""The on_event hook: one small event per refresh, stale serve and failure; never a secret."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import pytest

from gmail_token_store import ReauthRequiredError, TokenEvent, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow


def test_refresh_emits_a_refreshed_event_with_user_email_and_duration(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    events: list[TokenEvent] = []
    endpoint.latency = 0.1
    row = seed(expires_in=0)
    make_store(on_event=events.append).get_credentials(row.user_id)
    [event] = events
    assert (event.kind, event.user_id, event.email, event.error) == (
        "refreshed",
        row.user_id,
        "test@gmail.com",
        None,
    )
    assert event.duration >= 0.1
    assert dataclasses.is_dataclass(event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = "served_stale"  # type: ignore[misc]


def test_dead_grant_emits_reauth_required(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    events: list[TokenEvent] = []
    row = seed(expires_in=0)
    endpoint.revoke(row.refresh_token)
    with pytest.raises(ReauthRequiredError):
        make_store(on_event=events.append).get_credentials(row.user_id)
    assert [(event.kind, event.error) for event in events] == [("reauth_required", "invalid_grant")]


def test_a_raising_hook_is_logged_and_does_not_break_the_call(
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_hook(event: TokenEvent) -> None:
        raise RuntimeError("metrics backend down")

    row = seed(expires_in=0)
    with caplog.at_level(logging.ERROR, logger="gmail_token_store"):
        credentials = make_store(on_event=broken_hook).get_credentials(row.user_id)
    assert credentials.valid
    assert any("on_event hook raised" in record.getMessage() for record in caplog.records)
