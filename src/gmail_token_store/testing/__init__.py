"""Test helpers for gmail_token_store and for the services that use it.

* `FakeTokenEndpoint`: a fake Google over real HTTP on loopback: the OAuth token endpoint,
  scripted per request; accounts (`FakeAccount`) and a consent page; a revocation endpoint;
  ID tokens and RISC security event tokens (`RiscEvent`, `iss_sub()`, `oauth_token()`)
  signed with its own keys, published as a JWKS.
* `throwaway_postgresql()`: a private PostgreSQL server for one test session (needs the
  `testing` extra: ``pip install gmail-token-store[testing]``); it asks every connection
  for a random password, which its `dsn` carries.
* `throwaway_pgbouncer()`: a PgBouncer in front of it, transaction pooling by default
  (give it the server's `password`).
* `throwaway_replicated_postgresql()`: a primary with a streaming standby (pg_basebackup
  -R) that can be stopped, started and promoted, for failover tests.
* `FaultProxy`: a TCP proxy that delays, blackholes or resets connections on command.
* `insert_grant()`: a user's grant in the production layout, straight into the table.
* `run_herd()`: many processes of many threads (or coroutines) calling get_credentials at
  one moment.
* `gmail_token_store.testing.fixtures`: pytest fixtures for a consuming service's tests.
"""

from __future__ import annotations

from ._accounts import FakeAccount
from ._endpoint import FakeTokenEndpoint
from ._grants import InsertedGrant, insert_grant
from ._herd import HerdCall, run_herd
from ._proxy import FaultProxy
from ._replication import ReplicatedPostgres, StandbyServer, throwaway_replicated_postgresql
from ._replies import Reply, TokenRequest
from ._risc_issuer import RiscEvent, iss_sub, oauth_token
from ._servers import PgBouncerServer, PostgresServer, throwaway_pgbouncer, throwaway_postgresql

__all__ = [
    "FakeAccount",
    "FakeTokenEndpoint",
    "FaultProxy",
    "HerdCall",
    "InsertedGrant",
    "PgBouncerServer",
    "PostgresServer",
    "ReplicatedPostgres",
    "Reply",
    "RiscEvent",
    "StandbyServer",
    "TokenRequest",
    "insert_grant",
    "iss_sub",
    "oauth_token",
    "run_herd",
    "throwaway_pgbouncer",
    "throwaway_postgresql",
    "throwaway_replicated_postgresql",
]
