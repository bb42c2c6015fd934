"""Test helpers for gmail_token_store and for the services that use it.

* `FakeTokenEndpoint`: Google's OAuth token endpoint (and its consent redirect), served
  over real HTTP on loopback, scripted per request.
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

from ._endpoint import FakeTokenEndpoint, Reply, TokenRequest
from ._grants import InsertedGrant, insert_grant
from ._herd import HerdCall, run_herd
from ._proxy import FaultProxy
from ._replication import ReplicatedPostgres, StandbyServer, throwaway_replicated_postgresql
from ._servers import PgBouncerServer, PostgresServer, throwaway_pgbouncer, throwaway_postgresql

__all__ = [
    "FakeTokenEndpoint",
    "FaultProxy",
    "HerdCall",
    "InsertedGrant",
    "PgBouncerServer",
    "PostgresServer",
    "ReplicatedPostgres",
    "Reply",
    "StandbyServer",
    "TokenRequest",
    "insert_grant",
    "run_herd",
    "throwaway_pgbouncer",
    "throwaway_postgresql",
    "throwaway_replicated_postgresql",
]
