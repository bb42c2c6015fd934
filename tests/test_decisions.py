"""The decision core, without PostgreSQL or HTTP: windows, answers, policy, status, kept
grants, the clock, row parsing, escaping, driver-error classification, and the order of the
locked refresh, driven effect by effect by a scripted driver."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
import pytest

from gmail_token_store import ConfigurationError, DatabaseUnavailableError, RefreshFailedError
from gmail_token_store._core.clock import ClockSample, DatabaseClock
from gmail_token_store._core.effects import (
    Commit,
    Emit,
    Execute,
    Flow,
    Forget,
    HttpAnswer,
    LockRow,
    Log,
    PostForm,
    ReadRow,
    RowRead,
    Shared,
    Sleep,
    Statement,
)
from gmail_token_store._core.errors import ConnectionLost, LockWaitTimeout
from gmail_token_store._core.exchange import EndpointError, Grant, classify_answer, exchange
from gmail_token_store._core.flows import keepalive_refresh
from gmail_token_store._core.keepalive import KeepaliveReport, tally
from gmail_token_store._core.kept import KeptGrant, Verdict, verdict
from gmail_token_store._core.policy import TokenUriPolicy, token_uri_refusal
from gmail_token_store._core.record import epoch, parse_row
from gmail_token_store._core.refresh import locked_refresh
from gmail_token_store._core.state import Core
from gmail_token_store._core.status import classify
from gmail_token_store._core.text import printable
from gmail_token_store._core.windows import Plan, Windows
from gmail_token_store._io.errors import database_error

NOW = epoch(datetime(2026, 11, 27, 12, 0, 0))
WINDOWS = Windows(refresh_margin=300, mandatory_margin=60, lock_timeout=30, refresh_budget=30)
USER = "dddddddd-dddd-dddd-dddd-dddddddddddd"


def row(
    *,
    left: float | None = 3600,
    token_data: Any = None,
    oauth: Any = None,
    scopes: Any = '["https://www.googleapis.com/auth/gmail.send"]',
    metadata: Any = '{"email": "u@gmail.com"}',
    user_id: str = USER,
) -> tuple[Any, ...]:
    """A row as the store selects it (`_sql.COLUMNS` and the database clock)."""
    expiry = (
        datetime(2026, 11, 27, 12, 0, 0) + timedelta(seconds=left) if left is not None else None
    )
    data = (
        token_data
        if token_data is not None
        else '{"access_token": "ya29.a", "refresh_token": "1//r"}'
    )
    config = (
        oauth
        or '{"client_id": "c", "client_secret": "s", "token_uri": "https://oauth2.googleapis.com/token"}'
    )
    return (
        1,
        user_id,
        None,
        data,
        config,
        scopes,
        metadata,
        epoch(expiry) if expiry is not None else None,  # selected as epoch seconds
        epoch(datetime(2026, 11, 1)),
        "42",
        None,  # the expiry column's type, always NULL
        NOW,
    )


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "plan", "lock_wait", "follower_wait"),
    [
        (3600, Plan.SERVE, None, None),
        (300, Plan.SERVE, None, None),
        (299, Plan.REFRESH, None, None),  # advisory: only try the lock, never wait
        (61, Plan.REFRESH, None, None),
        (60, Plan.REFRESH, 30, 55),  # mandatory: wait until 5 s are left, at most 30
        (20, Plan.REFRESH, 15, 15),
        (5, Plan.REFRESH, None, None),  # too little left to wait for: keep it
        (0, Plan.REFRESH, 30, 65),  # expired: lock_timeout; waiters also the request budget
        (-math.inf, Plan.REFRESH, 30, 65),
    ],
)
def test_windows_decide_serving_and_waiting(
    left: float, plan: Plan, lock_wait: float | None, follower_wait: float | None
) -> None:
    record = parse_row(row(left=left if math.isfinite(left) else None))
    assert WINDOWS.plan(record, NOW) is plan
    assert WINDOWS.lock_wait(left) == lock_wait
    assert WINDOWS.follower_wait(left) == follower_wait


# --- the token endpoint's answers ------------------------------------------------------------


def answer(status: int, body: Any) -> HttpAnswer:
    return HttpAnswer(status, body if isinstance(body, bytes) else json.dumps(body).encode())


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (answer(400, {"error": "invalid_grant", "error_description": "revoked"}), "revoked"),
        (answer(401, {"error": "invalid_client"}), "client"),
        (answer(400, {"error": "unauthorized_client"}), "client"),
        (answer(401, {"error": "deleted_client"}), "client"),
        (answer(500, {"error": "server_error"}), "transient"),
        (answer(503, {"error": "temporarily_unavailable"}), "transient"),
        (answer(429, {"error": "rate_limit_exceeded"}), "transient"),
        (answer(502, b"<html>Bad Gateway</html>"), "transient"),
        (answer(200, {"token_type": "Bearer"}), "transient"),  # no access token
        (answer(200, b"[" * 5000), "transient"),  # not decodable: too deep
        (answer(200, b"x" * 70_000), "transient"),  # longer than an answer can be
        (answer(400, {"error": "invalid_scope"}), "rejected"),
    ],
)
def test_every_kind_of_answer_is_classified(reply: HttpAnswer, kind: str) -> None:
    outcome = classify_answer(reply, "1//r")
    assert isinstance(outcome, EndpointError) and outcome.kind == kind


def test_a_good_answer_is_a_grant_with_rotation_scopes_and_a_sane_lifetime() -> None:
    grant = classify_answer(
        answer(
            200,
            {
                "access_token": "ya29.n",
                "refresh_token": "1//new",
                "expires_in": 3599,
                "scope": "a b",
            },
        ),
        "1//r",
    )
    assert grant == Grant("ya29.n", "1//new", 3599.0, ("a", "b"))
    same_refresh = classify_answer(
        answer(200, {"access_token": "t", "refresh_token": "1//r"}), "1//r"
    )
    assert isinstance(same_refresh, Grant) and same_refresh.rotated_refresh_token is None
    for weird in (-5, "soon", None, 1e12, float("nan")):
        odd = classify_answer(answer(200, {"access_token": "t", "expires_in": weird}), "1//r")
        assert isinstance(odd, Grant) and 0 < odd.expires_in <= 7 * 86400


def drive(flow: Flow[Any], respond: Callable[[Any], Any]) -> tuple[list[Any], Any]:
    """Run a flow with `respond(effect)` as the world; return (effects, result or error)."""
    effects: list[Any] = []
    try:
        effect = flow.send(None)
        while True:
            effects.append(effect)
            try:
                result = respond(effect)
            except BaseException as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(result)
    except StopIteration as stop:
        return effects, stop.value
    except Exception as exc:
        return effects, exc


class World:
    """A clock that sleeping (and each request) advances, and token answers in order; the
    core reads the clock itself (it is injected, not an effect)."""

    def __init__(self, *answers: HttpAnswer) -> None:
        self.answers = list(answers)
        self.now = 100.0

    def time(self) -> float:
        return NOW

    def monotonic(self) -> float:
        return self.now

    def __call__(self, effect: Any) -> Any:
        if isinstance(effect, Sleep):
            self.now += effect.seconds
            return None
        if isinstance(effect, PostForm):
            self.now += 0.1
            return self.answers.pop(0)
        raise AssertionError(f"unexpected effect {effect}")


def test_exchange_retries_passing_failures_then_succeeds() -> None:
    world = World(
        answer(503, {"error": "temporarily_unavailable"}), answer(200, {"access_token": "t"})
    )
    effects, result = drive(
        exchange("https://t", "1//r", "c", "s", http_timeout=10, clock=world), world
    )
    assert isinstance(result, Grant)
    posts = [e for e in effects if isinstance(e, PostForm)]
    assert len(posts) == 2 and [e.seconds for e in effects if isinstance(e, Sleep)] == [0.25]
    assert posts[0].form == {
        "grant_type": "refresh_token",
        "client_id": "c",
        "client_secret": "s",
        "refresh_token": "1//r",
    }


def test_exchange_never_retries_a_dead_grant_and_stops_after_three_requests() -> None:
    world = World(answer(400, {"error": "invalid_grant"}))
    _, dead = drive(exchange("https://t", "1//r", "c", "s", http_timeout=10, clock=world), world)
    assert isinstance(dead, EndpointError) and dead.kind == "revoked"
    down = World(*[answer(500, {"error": "server_error"})] * 5)
    effects, error = drive(
        exchange("https://t", "1//r", "c", "s", http_timeout=10, clock=down), down
    )
    assert isinstance(error, EndpointError) and error.kind == "transient"
    assert len([e for e in effects if isinstance(e, PostForm)]) == 3


# --- policy, status, kept grants, the clock, parsing, escaping --------------------------------


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("https://oauth2.googleapis.com/token", True),
        ("https://accounts.google.com/o/oauth2/token", True),
        ("http://oauth2.googleapis.com/token", False),
        ("https://evil.example.com/token", False),
        ("https://oauth2.googleapis.com.evil.example/token", False),
        ("http://127.0.0.1:8080/token", False),  # loopback: only with the opt-in, below
        ("https://corp-proxy.example/token", True),  # allowed_token_hosts
        ("https://[::1:bad/token", False),
    ],
)
def test_token_uri_policy(uri: str, allowed: bool) -> None:
    assert (token_uri_refusal(uri, frozenset({"corp-proxy.example"})) is None) is allowed


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8080/token",
        "https://localhost/token",
        "http://[::1]:9/t",
        "http://LocalHost/t",
    ],
)
def test_loopback_token_uris_only_with_the_opt_in(uri: str) -> None:
    refusal = token_uri_refusal(uri, frozenset())
    assert refusal is not None and "allow_loopback_token_uri" in refusal
    assert token_uri_refusal(uri, frozenset(), allow_loopback=True) is None


@pytest.mark.parametrize(
    ("columns", "state"),
    [
        ({"left": 3600}, "ok"),
        ({"left": 100}, "refresh-due"),
        ({"left": -1}, "expired"),
        ({"token_data": '{"access_token": "ya29.a"}', "left": -1}, "reauth-required"),
        ({"token_data": '"not an object"'}, "broken"),
        (
            {
                "oauth": '{"client_id": "c", "client_secret": "s", "token_uri": "https://evil.example/t"}'
            },
            "broken",
        ),
    ],
)
def test_status_classification(columns: dict[str, Any], state: str) -> None:
    status = classify(
        parse_row(row(**columns)),
        db_now=NOW,
        db_local_now=epoch(datetime(2026, 11, 27, 12, 0)),
        windows=WINDOWS,
        policy=TokenUriPolicy(()),
    )
    assert status.state == state and status.version == "42"


def test_a_grant_not_refreshed_for_150_days_is_idle() -> None:
    status = classify(
        parse_row(row()),
        db_now=NOW,
        db_local_now=epoch(datetime(2026, 11, 1) + timedelta(days=151)),
        windows=WINDOWS,
        policy=TokenUriPolicy(()),
    )
    assert status.state == "idle" and status.needs_attention


def kept(**overrides: Any) -> KeptGrant:
    values: dict[str, Any] = {
        "user_id": USER,
        "row_id": 1,
        "access_token": "ya29.ours",
        "refresh_token": "1//rotated",
        "replaced_refresh_token": "1//r",
        "expiry_epoch": NOW + 3600,
        "scopes": None,
        "state": "unsaved",
        "kept_at": 0.0,
    }
    return KeptGrant(**{**values, **overrides})


@pytest.mark.parametrize(
    ("token_data", "left", "expected"),
    [
        ('{"access_token": "ya29.a", "refresh_token": "1//r"}', -10, Verdict.WRITE),  # lost write
        ('{"access_token": "ya29.a", "refresh_token": "1//r"}', 7200, Verdict.WRITE),
        ('{"access_token": "ya29.ours", "refresh_token": "1//rotated"}', 3600, Verdict.IN_ROW),
        ('{"access_token": "ya29.other", "refresh_token": "1//consent"}', 3600, Verdict.SUPERSEDED),
        ('{"access_token": "ya29.later", "refresh_token": "1//rotated"}', 3700, Verdict.SUPERSEDED),
    ],
    ids=["row older", "row older, later expiry", "row holds it", "new consent", "refreshed since"],
)
def test_kept_grant_verdicts(token_data: str, left: float, expected: Verdict) -> None:
    assert verdict(kept(), parse_row(row(token_data=token_data, left=left))) is expected


def test_the_database_clock_keeps_the_sample_with_the_shortest_round_trip() -> None:
    clock = DatabaseClock()
    clock.observe(ClockSample(db_now=1000.0, sent=879.0, received=881.0))  # offset 120, rtt 2
    clock.observe(ClockSample(db_now=1020.0, sent=899.9, received=900.1))  # rtt 0.2
    assert clock.offset == pytest.approx(120.0)
    clock.observe(ClockSample(db_now=1060.0, sent=920.0, received=940.0))  # rtt 20: ignored
    assert clock.offset == pytest.approx(120.0)
    clock.observe(ClockSample(db_now=1400.0, sent=1279.9, received=1280.1))  # aged: replaced
    assert clock.offset == pytest.approx(120.0)
    clock.observe(ClockSample(db_now=1800.0, sent=1700.0, received=1700.0))  # the host stepped
    assert clock.offset == pytest.approx(100.0)
    assert clock.db_now(10.0) == pytest.approx(110.0)
    assert clock.to_local(110.0) == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"token_data": '{"x": ' + "[" * 3000 + "]" * 3000 + "}"}, "nested too deeply"),
        ({"metadata": '{"x": ' + "[" * 64 + "]" * 64 + "}"}, "nested too deeply"),
        ({"metadata": '{"n": ' + "9" * 5000 + "}"}, "cannot be decoded"),
        ({"metadata": json.dumps({"email": "x" * 70_000})}, "more than 65,536 characters"),
        ({"scopes": json.dumps(["s"] * 300)}, "300 scopes"),
    ],
)
def test_hostile_rows_parse_to_a_problem_never_an_exception(
    columns: dict[str, Any], problem: str
) -> None:
    record = parse_row(row(**columns))
    assert record.problem is not None and problem in record.problem


def test_wide_but_shallow_json_is_fine() -> None:
    wide = json.dumps({"email": "u@gmail.com", "history": [{"at": "[{"} for _ in range(500)]})
    assert parse_row(row(metadata=wide)).problem is None


def test_printable_escapes_controls_and_cuts() -> None:
    assert printable("a\x1b[31mb\r\nc\x07\x9b\u202e") == "a\\x1b[31mb\\x0d\\x0ac\\x07\\x9b\\u202e"
    assert printable("x" * 500, 10) == "x" * 9 + "…"
    assert printable(printable("\x1b")) == printable("\x1b")


def test_driver_errors_are_classified_by_who_must_act() -> None:
    assert isinstance(database_error(psycopg.errors.UndefinedTable("no")), ConfigurationError)
    assert "SELECT, UPDATE" in str(
        database_error(psycopg.errors.InsufficientPrivilege("no"), "SELECT, UPDATE")
    )
    assert isinstance(database_error(psycopg.errors.LockNotAvailable("no")), LockWaitTimeout)
    for lost in (
        psycopg.OperationalError("server closed the connection"),
        psycopg.errors.IdleInTransactionSessionTimeout("25P03"),
        psycopg.errors.ReadOnlySqlTransaction("25006"),
        psycopg.errors.AdminShutdown("57P01"),
        psycopg.InterfaceError("the connection is closed"),
    ):
        error = database_error(lost)
        assert isinstance(error, ConnectionLost) and error.retryable
    assert isinstance(database_error(psycopg.errors.DataError("?")), DatabaseUnavailableError)


# --- the order of the locked refresh --------------------------------------------------------


class Database(World):
    """The world of a locked refresh: the locked row, the write-back, the commit."""

    def __init__(self, locked: tuple[Any, ...] | None, *answers: HttpAnswer) -> None:
        super().__init__(*answers)
        self.locked = locked

    def __call__(self, effect: Any) -> Any:
        if isinstance(effect, LockRow):
            return RowRead(self.locked, ClockSample(NOW, NOW, NOW))
        if isinstance(effect, Execute):
            if effect.statement is Statement.WRITE_GRANT:
                data = json.loads(effect.params["token_data"])
                return [row(token_data=json.dumps(data), left=3599)]
            return []
        if isinstance(effect, Commit | Emit | Forget | Log):
            return None
        return super().__call__(effect)


def core(clock: World) -> Core:
    return Core(windows=WINDOWS, http_timeout=10.0, clock=clock)


def kinds(effects: list[Any]) -> list[str]:
    """Effect names; a write that commits reads "Execute", "Commit" (one effect does both)."""
    names: list[str] = []
    for effect in effects:
        names.append(type(effect).__name__)
        if isinstance(effect, Execute) and effect.commit:
            names.append("Commit")
    return names


def test_locked_refresh_locks_rechecks_requests_writes_commits_in_that_order() -> None:
    seen = parse_row(row(left=-10))
    world = Database(row(left=-10), answer(200, {"access_token": "ya29.new", "expires_in": 3599}))
    effects, record = drive(locked_refresh(core(world), seen, WINDOWS.is_due, 30.0), world)
    assert kinds(effects) == ["LockRow", "PostForm", "Execute", "Commit", "Emit"]
    assert record.access_token == "ya29.new"


def test_locked_refresh_finds_the_token_refreshed_meanwhile_and_makes_no_request() -> None:
    seen = parse_row(row(left=-10))
    world = Database(row(left=3000))
    effects, record = drive(locked_refresh(core(world), seen, WINDOWS.is_due, 30.0), world)
    assert kinds(effects) == [
        "LockRow",
        "Commit",
    ]
    assert record.access_token == "ya29.a"


def test_locked_refresh_records_a_dead_grant_before_raising() -> None:
    seen = parse_row(row(left=-10))
    world = Database(row(left=-10), answer(400, {"error": "invalid_grant"}))
    effects, error = drive(locked_refresh(core(world), seen, WINDOWS.is_due, 30.0), world)
    statements = [e.statement for e in effects if isinstance(e, Execute)]
    assert statements == [Statement.RECORD_FAILURE] and error.reason.startswith(
        "the token endpoint answered invalid_grant"
    )


def test_locked_refresh_keeps_the_grant_when_the_write_back_is_lost() -> None:

    class LostWrite(Database):
        def __call__(self, effect: Any) -> Any:
            if isinstance(effect, Execute):
                raise ConnectionLost("the connection dropped")
            if type(effect).__name__ == "Query":
                raise DatabaseUnavailableError("down")
            return super().__call__(effect)

    world = LostWrite(
        row(left=-10), answer(200, {"access_token": "ya29.new", "refresh_token": "1//rot"})
    )
    the_core = core(world)
    seen = parse_row(row(left=-10))
    _, record = drive(locked_refresh(the_core, seen, WINDOWS.is_due, 30.0), world)
    assert record.access_token == "ya29.new"  # handed out unsaved...
    [kept_grant] = the_core.kept.pending()  # ...and kept for the next chance to write it
    assert (kept_grant.refresh_token, kept_grant.replaced_refresh_token) == ("1//rot", "1//r")


def test_a_lock_wait_that_runs_out_is_a_retryable_refresh_failure() -> None:
    seen = parse_row(row(left=-10))
    world = World()

    def held(effect: Any) -> Any:
        if isinstance(effect, LockRow):
            raise LockWaitTimeout("held")
        return None if isinstance(effect, Emit) else world(effect)

    _, error = drive(locked_refresh(core(world), seen, WINDOWS.is_due, 30.0), held)
    assert isinstance(error, RefreshFailedError) and error.retryable


# --- the hot path's parse memo --------------------------------------------------------------


def test_the_hot_paths_read_reuses_a_record_only_for_the_same_columns() -> None:
    memo = Core(windows=WINDOWS, http_timeout=10.0)
    first = memo.parse_read(row())
    again = (*row()[:-1], NOW + 5.0)  # read later: only the database's clock differs
    assert memo.parse_read(again) is first
    assert first == parse_row(row())  # what a parse makes
    for changed in (
        row(left=10),  # refreshed
        row(token_data='{"access_token": "ya29.b", "refresh_token": "1//r"}'),
        row(metadata='{"email": "v@gmail.com"}'),
        (*row()[:9], "43", *row()[10:]),  # another version, the same content
    ):
        record = memo.parse_read(changed)
        assert record is not first and record == parse_row(changed)
    other = memo.parse_read(row(user_id="eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee"))
    assert other.user_id == "eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee"
    broken = row(token_data="[]")
    assert memo.parse_read(broken).problem is not None
    assert memo.parse_read(broken) is not memo.parse_read(broken)  # never kept


# --- the keepalive's tally ------------------------------------------------------------------


def test_the_keepalive_tally_leaves_passing_failures_to_the_next_run() -> None:
    status = classify(
        parse_row(row()), db_now=NOW, db_local_now=NOW, windows=WINDOWS, policy=TokenUriPolicy(())
    )
    report = KeepaliveReport()
    passing = [
        DatabaseUnavailableError("the database did not answer"),
        LockWaitTimeout("busy"),
        RefreshFailedError(USER, None, "did not answer in time"),
    ]
    for outcome in passing:
        tally(report, status, outcome)
    assert len(report.retry_later) == 3 and not report.failed and not report.needs_a_person
    tally(report, status, ConfigurationError("no privilege"))
    tally(report, status, RefreshFailedError(USER, None, "odd answer", retryable=False))
    assert len(report.failed) == 2 and report.needs_a_person


# --- the keepalive's refresh --------------------------------------------------------------


class Keepalive(Database):
    """A keepalive run's world: the row as read, then as locked (another run may have
    refreshed it in between); the single flight runs its flow at once."""

    def __init__(self, read: tuple[Any, ...], locked: tuple[Any, ...], *answers: HttpAnswer):
        super().__init__(locked, *answers)
        self.read = read
        self.shared: list[Any] = []  # the effects of the flows the single flight ran

    def __call__(self, effect: Any) -> Any:
        if isinstance(effect, ReadRow):
            return RowRead(self.read, ClockSample(NOW, NOW, NOW))
        if isinstance(effect, Shared):
            effects, value = drive(effect.flow(), self)
            self.shared += effects
            if isinstance(value, Exception):
                raise value
            return value, True
        return super().__call__(effect)


def _version(columns: tuple[Any, ...], version: str) -> tuple[Any, ...]:
    return (*columns[:9], version, *columns[10:])


def test_the_keepalive_counts_a_row_refreshed_before_its_lock_as_not_its_own() -> None:
    due = row(left=-10)
    world = Keepalive(due, _version(row(left=3000), "43"))  # refreshed between read and lock
    _, outcome = drive(keepalive_refresh(core(world), USER, "42"), world)
    assert kinds(world.shared) == ["LockRow", "Commit"]  # locked, found fresh, nothing sent
    seen, record = outcome
    assert seen is record and record.version == "43"  # "valid": no refresh of this run's

    world = Keepalive(due, due, answer(200, {"access_token": "ya29.new", "expires_in": 3599}))
    _, outcome = drive(keepalive_refresh(core(world), USER, "42"), world)
    seen, record = outcome
    assert kinds(world.shared)[:3] == ["LockRow", "PostForm", "Execute"]
    assert (seen.access_token, record.access_token) == ("ya29.a", "ya29.new")
