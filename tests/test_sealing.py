"""Encryption at rest: secrets sealed in the existing columns, keys that rotate, a table in
service sealed, rotated and unsealed online, and readers that know nothing of it kept safe.

Real PostgreSQL, the fake token endpoint over HTTP, the command as a subprocess, `pg_dump`.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from gmail_token_store import (
    ConfigurationError,
    InvalidTokenRecordError,
    MissingKeyError,
    TokenStore,
)
from gmail_token_store._core.risc import token_identifier
from gmail_token_store._core.sealing import KeyUnavailable, SealBroken, associated_data
from gmail_token_store.keys import EnvelopeSealer, Keyring
from gmail_token_store.testing import FakeTokenEndpoint, PostgresServer
from gmail_token_store.testing._servers import _find_binary

from conftest import CLIENT_SECRET, SeedRow
from helpers import Cli
from workers import refresh_loop

ROOT = Path(__file__).resolve().parents[1]


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


K1, K2 = new_key(), new_key()
RING_1 = f"k1={K1}"  # k1 seals
RING_21 = f"k2={K2},k1={K1}"  # k2 seals, k1 still opens
RING_2 = f"k2={K2}"  # k1 gone


def raw_row(dsn: str, user_id: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT token_data, oauth_config, metadata, updated_at, xmin::text"
            " FROM gmail_token WHERE user_id = %s",
            (user_id,),
        )
        row = cursor.fetchone()
    assert row is not None
    return dict(
        zip(("token_data", "oauth_config", "metadata", "updated_at", "xmin"), row, strict=True)
    )


def set_column(dsn: str, user_id: str, sql: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE gmail_token SET {sql} WHERE user_id = %s", (*params, user_id))


# --- keys, without a database -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one key"),
        ("k1", "no '='"),
        ("k1=not base64!", "not base64"),
        (f"k1={base64.b64encode(b'short').decode()}", "32 bytes"),
        (f"k1={K1},k1={K2}", "twice"),
        (f"bad id={K1}", "key id"),
    ],
)
def test_a_malformed_keyring_is_refused_without_quoting_a_key(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Keyring.parse(text)
    assert K1 not in str(caught.value) and K2 not in str(caught.value)


def test_a_keyring_names_its_keys_and_never_shows_them() -> None:
    unpadded_urlsafe = base64.urlsafe_b64encode(base64.b64decode(K1)).decode().rstrip("=")
    ring = Keyring.parse(f"# the keys\nk2={K2}\nk1={unpadded_urlsafe}")
    assert ring.sealing_key_id == "k2" and ring.key_ids() == ("k2", "k1")
    sealer = EnvelopeSealer(ring)
    for shown in (repr(ring), repr(sealer)):
        assert "k2" in shown and K1 not in shown and K2 not in shown


def test_a_sealed_value_opens_only_where_it_was_sealed() -> None:
    sealer = EnvelopeSealer(Keyring.parse(RING_1))
    here = associated_data("u1", "https://oauth2.googleapis.com/token")
    sealed = sealer.seal({"refresh_token": "1//secret"}, here)
    assert sealed["kid"] == "k1" and "1//secret" not in json.dumps(sealed)
    fresh = EnvelopeSealer(Keyring.parse(RING_21))  # another process: nothing cached
    assert fresh.open(sealed, here) == {"refresh_token": "1//secret"}
    for elsewhere in (
        associated_data("u2", "https://oauth2.googleapis.com/token"),
        associated_data("u1", "https://evil.example/token"),
    ):
        with pytest.raises(SealBroken):
            fresh.open(sealed, elsewhere)
    text = sealed["secrets"]
    flipped = text[:-6] + ("A" if text[-6] != "A" else "B") + text[-5:]
    with pytest.raises(SealBroken):
        fresh.open({**sealed, "secrets": flipped}, here)
    with pytest.raises(KeyUnavailable) as caught:
        EnvelopeSealer(Keyring.parse(RING_2)).open(sealed, here)
    assert caught.value.key_id == "k1"


class CountingKms:
    """A KeyProvider as a KMS would be: counts its calls."""

    def __init__(self) -> None:
        self.ring = Keyring.parse(RING_1)
        self.wraps = self.unwraps = 0

    @property
    def sealing_key_id(self) -> str:
        return "k1"

    def key_ids(self) -> tuple[str, ...]:
        return ("k1",)

    def wrap(self, data_key: bytes) -> str:
        self.wraps += 1
        return self.ring.wrap(data_key)

    def unwrap(self, key_id: str, wrapped: str) -> bytes:
        self.unwraps += 1
        return self.ring.unwrap(key_id, wrapped)


def test_a_key_provider_is_called_once_per_process_and_data_key_not_per_row() -> None:
    writer_kms, reader_kms = CountingKms(), CountingKms()
    writer, reader = EnvelopeSealer(writer_kms), EnvelopeSealer(reader_kms, sealing=False)
    sealed = [
        writer.seal({"refresh_token": f"1//t{n}"}, associated_data(f"u{n}", "x")) for n in range(50)
    ]
    for n, value in enumerate(sealed):
        assert reader.open(value, associated_data(f"u{n}", "x")) == {"refresh_token": f"1//t{n}"}
    assert (writer_kms.wraps, writer_kms.unwraps) == (1, 0)
    assert (reader_kms.wraps, reader_kms.unwraps) == (0, 1)


# --- stores on sealed, plaintext and mixed tables ------------------------------------------


@pytest.fixture
def sealed_stores(make_store: Callable[..., TokenStore]) -> dict[str, TokenStore]:
    return {
        "k1": make_store(keys=RING_1),
        "k21": make_store(keys=RING_21),
        "plain": make_store(),
        "opens only": make_store(keys=RING_21, seal=False),
    }


def test_a_sealing_store_seals_what_it_writes_and_every_store_with_the_key_reads_it(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    sealed_stores: dict[str, TokenStore],
) -> None:
    endpoint.rotate_refresh_tokens = True
    row = seed(expires_in=10)
    plain_row = seed()
    store = sealed_stores["k1"]
    credentials = store.get_credentials(row.user_id)  # due: refreshed, written sealed
    stored = raw_row(dsn, row.user_id)
    text = json.dumps([stored["token_data"], stored["oauth_config"]])
    issued = endpoint.refresh_requests()[-1]
    for secret in (credentials.token, issued.issued_refresh_token, CLIENT_SECRET):
        assert secret and secret not in text
    assert (
        "refresh_token" not in stored["token_data"] and "access_token" not in stored["token_data"]
    )
    assert stored["token_data"]["sealed"]["kid"] == "k1"
    assert stored["oauth_config"]["client_id"] and "client_secret" not in stored["oauth_config"]
    assert stored["token_data"]["token_type"] == "Bearer"  # every other key kept

    for name in ("k21", "opens only"):
        assert sealed_stores[name].get_credentials(row.user_id).token == credentials.token
    # What the seal held goes to the endpoint as it was: the refresh token and the secret.
    endpoint.rotate_refresh_tokens = False
    sealed_stores["k21"].refresh(row.user_id, force=True)
    sent = endpoint.refresh_requests()[-1]
    assert (sent.refresh_token, sent.client_secret) == (issued.issued_refresh_token, CLIENT_SECRET)
    status = sealed_stores["k21"].check(row.user_id)
    assert (status.state, status.key_id, status.has_refresh_token) == ("ok", "k2", True)
    # A plaintext row in the same table: every store reads it, a sealing one leaves it so.
    assert sealed_stores["k1"].check(plain_row.user_id).key_id is None
    assert sealed_stores["plain"].get_credentials(plain_row.user_id).token == plain_row.access_token

    # Written by a store that opens but does not seal: back to plaintext, nothing lost.
    sealed_stores["opens only"].refresh(row.user_id, force=True)
    back = raw_row(dsn, row.user_id)
    assert "sealed" not in back["token_data"] and back["token_data"]["refresh_token"]
    assert back["oauth_config"]["client_secret"] == CLIENT_SECRET
    assert (
        sealed_stores["plain"].get_credentials(row.user_id).token
        == back["token_data"]["access_token"]
    )


def test_a_store_without_the_key_names_it_and_the_rest_of_the_table_works(
    seed: SeedRow, endpoint: FakeTokenEndpoint, sealed_stores: dict[str, TokenStore]
) -> None:
    sealed_row, plain_row = seed(), seed()
    sealed_stores["k21"].save(
        sealed_row.user_id,
        sealed_stores["k21"].get_credentials(sealed_row.user_id),
    )  # sealed with k2 now
    endpoint_calls = len(endpoint.requests)
    for name in ("plain", "k1"):
        store = sealed_stores[name]
        with pytest.raises(MissingKeyError, match="sealed with key k2") as caught:
            store.get_credentials(sealed_row.user_id)
        assert caught.value.key_id == "k2" and isinstance(caught.value, ConfigurationError)
        with pytest.raises(MissingKeyError):
            store.refresh(sealed_row.user_id, force=True)
        status = store.check(sealed_row.user_id)
        assert status.state == "broken" and "k2" in (status.problem or "")
        assert store.get_credentials(plain_row.user_id).token == plain_row.access_token
        states = {s.user_id: s for s in store.check_all()}
        assert states[sealed_row.user_id].key_id == "k2"
        assert states[plain_row.user_id].state == "ok"
    assert len(endpoint.requests) == endpoint_calls  # nothing sent for the sealed row


@pytest.mark.parametrize("tamper", ["moved to another user", "token URI changed", "byte flipped"])
def test_a_tampered_seal_is_refused_and_nothing_is_sent(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    sealed_stores: dict[str, TokenStore],
    tamper: str,
) -> None:
    victim, thief = seed(expires_in=-5), seed(expires_in=-5)
    store = sealed_stores["k1"]
    for user in (victim, thief):
        store.save(user.user_id, store.get_credentials(user.user_id))  # both sealed
    sealed = raw_row(dsn, victim.user_id)["token_data"]["sealed"]
    target = thief.user_id
    if tamper == "moved to another user":
        set_column(
            dsn, thief.user_id, "token_data = jsonb_set(token_data, '{sealed}', %s)", Jsonb(sealed)
        )
        set_column(dsn, thief.user_id, "expiry = now() - interval '1 minute'")
    elif tamper == "token URI changed":
        target = victim.user_id
        set_column(
            dsn,
            victim.user_id,
            "oauth_config = jsonb_set(oauth_config, '{token_uri}', %s),"
            " expiry = now() - interval '1 minute'",
            Jsonb(endpoint.base_url + "/other-token"),
        )
    else:
        target = victim.user_id
        text = sealed["secrets"]
        flipped = text[:20] + ("A" if text[20] != "A" else "B") + text[21:]
        set_column(
            dsn,
            victim.user_id,
            "token_data = jsonb_set(token_data, '{sealed,secrets}', %s),"
            " expiry = now() - interval '1 minute'",
            Jsonb(flipped),
        )
    sent = len(endpoint.requests)
    for name in ("k1", "k21"):
        with pytest.raises(InvalidTokenRecordError, match="do not open"):
            sealed_stores[name].get_credentials(target)
        with pytest.raises(InvalidTokenRecordError):
            sealed_stores[name].refresh(target, force=True)
        assert sealed_stores[name].check(target).state == "broken"
    assert len(endpoint.requests) == sent
    assert "refresh_failure" not in (raw_row(dsn, target)["metadata"] or {})


def test_save_and_import_seal_and_the_revocation_finds_a_sealed_token_without_its_key(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    sealed_stores: dict[str, TokenStore],
) -> None:
    row = seed()
    store = sealed_stores["k1"]
    store.save(row.user_id, store.get_credentials(row.user_id), email="a@example.com")
    assert row.refresh_token not in json.dumps(raw_row(dsn, row.user_id)["token_data"])
    # Google names the token by its prefix or its double hash; a store without k1 finds it.
    without_key = sealed_stores["plain"]
    assert without_key.record_revocation(
        reason="token-revoked", issued_at=time.time(), token=("prefix", row.refresh_token[:16])
    ) == [row.user_id]
    status = sealed_stores["k1"].check(row.user_id)
    assert status.state == "reauth-required", status.problem
    again = seed()
    store.save(again.user_id, store.get_credentials(again.user_id))
    assert store.record_revocation(
        reason="token-revoked",
        issued_at=time.time(),
        token=("hash_base64_sha512_sha512", token_identifier(again.refresh_token, "hash")),
    ) == [again.user_id]
    assert endpoint.refresh_requests() == []


def test_reseal_all_seals_rotates_and_unseals_a_mixed_table(
    dsn: str,
    endpoint: FakeTokenEndpoint,
    seed: SeedRow,
    sealed_stores: dict[str, TokenStore],
    make_store: Callable[..., TokenStore],
) -> None:
    rows = [seed() for _ in range(7)]
    # A token.json-layout row: the client secret lives in token_data.
    legacy = seed(
        oauth_config=None,
        token_data=Jsonb(
            {
                "token": "ya29.legacy-token",
                "refresh_token": "1//legacy-refresh",
                "client_id": "legacy-client",
                "client_secret": "legacy-client-secret",
                "token_uri": endpoint.token_uri,
            }
        ),
    )
    before = {row.user_id: raw_row(dsn, row.user_id) for row in [*rows, legacy]}
    report = sealed_stores["k1"].reseal_all("seal", page_size=3)
    assert (report.rows, report.rewritten, report.complete) == (8, 8, True)
    for user_id, old in before.items():
        new = raw_row(dsn, user_id)
        assert new["updated_at"] == old["updated_at"]  # the grant is the same
        assert new["token_data"]["sealed"]["kid"] == "k1"
    assert "legacy-client-secret" not in json.dumps(raw_row(dsn, legacy.user_id)["token_data"])
    assert sealed_stores["k1"].reseal_all("seal").rewritten == 0  # twice: nothing to do

    rotating = make_store(keys=RING_21)
    rotated = rotating.reseal_all("rotate")
    assert (rotated.rewritten, rotated.unchanged) == (8, 0)
    only_k2 = make_store(keys=RING_2)
    for row in rows:
        assert only_k2.get_credentials(row.user_id).token == row.access_token
    assert only_k2.get_credentials(legacy.user_id).token == "ya29.legacy-token"
    only_k2.refresh(legacy.user_id, force=True)
    sent = endpoint.refresh_requests()[-1]
    assert (sent.refresh_token, sent.client_id, sent.client_secret) == (
        "1//legacy-refresh",
        "legacy-client",
        "legacy-client-secret",
    )

    unsealed = make_store(keys=RING_2, seal=False).reseal_all("unseal")
    assert unsealed.rewritten == 8
    for user_id, old in before.items():
        new = raw_row(dsn, user_id)
        if user_id == legacy.user_id:  # refreshed above: a new access token, the rest as it was
            assert new["token_data"]["token"] != old["token_data"]["token"]
            old["token_data"]["token"] = new["token_data"]["token"]
        assert new["token_data"] == old["token_data"] and new["oauth_config"] == old["oauth_config"]
    with pytest.raises(ConfigurationError, match="no keys"):
        sealed_stores["plain"].reseal_all("seal")
    with pytest.raises(ConfigurationError, match="seal=True"):
        sealed_stores["opens only"].reseal_all("rotate")
    with pytest.raises(ValueError, match="target"):
        sealed_stores["k1"].reseal_all("encrypt")  # type: ignore[arg-type]


def test_reseal_leaves_what_it_cannot_open_and_says_so(
    dsn: str, seed: SeedRow, make_store: Callable[..., TokenStore]
) -> None:
    rows = [seed() for _ in range(3)]
    make_store(keys=RING_21).save(rows[0].user_id, make_store().get_credentials(rows[0].user_id))
    set_column(dsn, rows[1].user_id, "token_data = %s", Jsonb({"access_token": 5}))
    report = make_store(keys=RING_1).reseal_all("seal")
    assert report.missing_key == {"k2": 1}
    assert (report.unreadable, report.rewritten, report.complete) == (1, 1, False)


# --- the commands -------------------------------------------------------------------------


@pytest.fixture
def keyed_cli(cli: Cli) -> Cli:
    cli.secrets |= {K1, K2}  # (the fixture fails the test if one reaches the output)
    return cli


def pg_dump(postgres: PostgresServer, dsn: str) -> str:
    result = subprocess.run(
        [_find_binary("pg_dump", "postgresql-client"), "--data-only", "--table=gmail_token", dsn],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "COPY public.gmail_token" in result.stdout
    return result.stdout


def test_encrypt_all_leaves_no_secret_in_a_dump_and_the_commands_work_on_the_sealed_table(
    postgres: PostgresServer,
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    keyed_cli: Cli,
) -> None:
    rows = [seed(expires_in=10 if n % 3 == 0 else 3600) for n in range(12)]
    planted = {CLIENT_SECRET} | {r.access_token for r in rows} | {r.refresh_token for r in rows}
    assert all(secret in pg_dump(postgres, dsn) for secret in planted)

    keyed_cli.extra_env = {"GMAIL_TOKEN_STORE_KEYS": RING_1}
    result = keyed_cli("encrypt-all", "--page-size", "5")
    assert result.returncode == 0, result.stderr
    assert "12 rows, 12 sealed" in result.stdout
    assert "every sealed row is sealed with key k1" in result.stdout
    dump = pg_dump(postgres, dsn)
    assert [secret for secret in planted if secret in dump] == []

    listed = keyed_cli("list", "--json")
    assert {entry["key_id"] for entry in json.loads(listed.stdout)} == {"k1"}
    assert "k1: 12" in keyed_cli("list").stdout
    assert 'gmail_token_sealed_grants{key_id="k1"} 12' in keyed_cli("metrics").stdout
    refreshed = keyed_cli("refresh-all")
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert "refreshed:             4" in refreshed.stdout
    assert keyed_cli("check", rows[1].user_id).returncode == 0
    # Without the key: each row broken, naming k1; nothing sent.
    sent = len(endpoint.requests)
    keyed_cli.extra_env = {}
    blind = keyed_cli("list", "--needs-attention")
    assert blind.returncode == 1 and "sealed with key k1" in blind.stdout
    assert keyed_cli("refresh", "--force", rows[0].user_id).returncode == 1
    assert len(endpoint.requests) == sent
    again = keyed_cli("encrypt-all")
    assert again.returncode == 1 and "no keys" in again.stderr


def test_rotate_keys_then_decrypt_all_by_command(
    dsn: str, seed: SeedRow, keyed_cli: Cli, tmp_path: Path
) -> None:
    rows = [seed() for _ in range(6)]
    keyed_cli.extra_env = {"GMAIL_TOKEN_STORE_KEYS": RING_1}
    assert keyed_cli("encrypt-all").returncode == 0
    ring_file = tmp_path / "keys"
    ring_file.write_text(f"# k2 seals from today\nk2={K2}\nk1={K1}\n")
    ring_file.chmod(0o600)
    keyed_cli.extra_env = {"GMAIL_TOKEN_STORE_KEYS_FILE": str(ring_file)}
    rotated = keyed_cli("rotate-keys")
    assert rotated.returncode == 0, rotated.stderr
    assert "6 rows, 6 re-sealed" in rotated.stdout and "can leave the keyring" in rotated.stdout
    assert "k2: 6" in keyed_cli("list").stdout
    keyed_cli.extra_env = {"GMAIL_TOKEN_STORE_KEYS": RING_2}  # k1 removed
    assert keyed_cli("list", "--needs-attention").returncode == 0
    decrypted = keyed_cli("decrypt-all")
    assert decrypted.returncode == 0 and "6 rows, 6 unsealed" in decrypted.stdout
    keyed_cli.extra_env = {}
    assert keyed_cli("list", "--needs-attention").returncode == 0
    assert raw_row(dsn, rows[0].user_id)["token_data"]["refresh_token"] == rows[0].refresh_token


def test_rotate_keys_while_four_processes_refresh_loses_no_grant(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, make_store: Callable[..., TokenStore]
) -> None:
    endpoint.rotate_refresh_tokens = True
    endpoint.revoke_rotated = True  # a lost refresh token is a dead grant
    rows = [seed() for _ in range(40)]
    make_store(keys=RING_1).reseal_all("seal")
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    until = time.time() + 6
    ids = [row.user_id for row in rows]
    workers = [
        context.Process(target=refresh_loop, args=(dsn, RING_21, ids[n::4], until, errors))
        for n in range(4)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # they are refreshing
    rotating = make_store(keys=RING_21)
    total = rotating.reseal_all("rotate", page_size=7)
    for _ in range(20):  # rows locked by a refresh each time: the next run takes them
        if not total.busy:
            break
        total = rotating.reseal_all("rotate", page_size=7)
    assert total.complete
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    assert len(endpoint.refresh_requests()) > 40  # they did refresh meanwhile
    only_k2 = make_store(keys=RING_2)
    for user_id in ids:
        status = only_k2.check(user_id)
        assert (status.state, status.key_id) == ("ok", "k2"), status.problem
        only_k2.refresh(user_id, force=True)  # its refresh token is the live one
    assert only_k2.reseal_all("rotate").rewritten == 0


# --- readers that know nothing of sealing --------------------------------------------------

RELEASE_0_2 = "5233198"


@pytest.fixture(scope="module")
def release_0_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gmail-token-store 0.2.0, built as a wheel from its commit, installed alone in a
    folder (its dependencies are this suite's)."""
    work = tmp_path_factory.mktemp("release-0.2")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", RELEASE_0_2], capture_output=True, check=True
    )
    source = work / "source"
    source.mkdir()
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)], check=True)
    [wheel] = (work / "dist").glob("gmail_token_store-0.2.0-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(work / "site"), str(wheel)], check=True
    )
    return work / "site"


OLD_READER = """
import json, sys
import gmail_token_store
from gmail_token_store import TokenStore, TokenStoreError
assert gmail_token_store.__version__ == "0.2.0", gmail_token_store.__version__
dsn, user_ids = sys.argv[1], sys.argv[2:]
out = {}
with TokenStore(dsn, cache_ttl=0) as store:
    for user_id in user_ids:
        for call in ("get_credentials", "refresh"):
            try:
                getattr(store, call)(user_id, **({"force": True} if call == "refresh" else {}))
                out[f"{user_id} {call}"] = "served"
            except TokenStoreError as exc:
                out[f"{user_id} {call}"] = type(exc).__name__
        out[f"{user_id} check"] = store.check(user_id).state
    out["refresh_all"] = store.refresh_all().refreshed
print(json.dumps(out))
"""


def test_release_0_2_meeting_sealed_rows_never_sends_them_and_never_records_them_dead(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    make_store: Callable[..., TokenStore],
    release_0_2: Path,
) -> None:
    rows = [seed(expires_in=-30), seed(expires_in=30), seed(expires_in=3600)]
    make_store(keys=RING_1).reseal_all("seal")
    before = {row.user_id: raw_row(dsn, row.user_id) for row in rows}
    env = {**os.environ, "PYTHONPATH": str(release_0_2)}
    env.pop("GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI", None)  # 0.2.0 had no such check
    result = subprocess.run(
        [sys.executable, "-c", OLD_READER, dsn, *(row.user_id for row in rows)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=release_0_2,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["refresh_all"] == 0
    for row in rows:
        assert seen[f"{row.user_id} get_credentials"] == "InvalidTokenRecordError"
        assert seen[f"{row.user_id} check"] == "broken"
        after = raw_row(dsn, row.user_id)
        assert after["metadata"] == before[row.user_id]["metadata"]  # nothing recorded dead
        assert after["xmin"] == before[row.user_id]["xmin"]  # nothing written at all
    assert endpoint.requests == []  # no ciphertext, no request at all
    # This version still reads them.
    for row in rows:
        assert make_store(keys=RING_1).check(row.user_id).key_id == "k1"
