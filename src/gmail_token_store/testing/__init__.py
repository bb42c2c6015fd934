"""Test helpers for gmail_token_store and for the services that use it.

* `FakeTokenEndpoint`: Google's OAuth token endpoint (and its consent redirect), served
  over real HTTP on loopback, scripted per request.
* `throwaway_postgresql()`: a private PostgreSQL server for one test session (needs the
  `testing` extra: ``pip install gmail-token-store[testing]``).
* `throwaway_pgbouncer()`: a PgBouncer in front of it, transaction pooling by default.
* `FaultProxy`: a TCP proxy that delays, blackholes or resets connections on command.
* `run_herd()`: many processes of many threads calling get_credentials at one moment.
* `gmail_token_store.testing.fixtures`: pytest fixtures for a consuming service's tests.
"""

from __future__ import annotations

from ._endpoint import FakeTokenEndpoint, Reply, TokenRequest
from ._herd import HerdCall, run_herd
from ._proxy import FaultProxy
from ._servers import PgBouncerServer, PostgresServer, throwaway_pgbouncer, throwaway_postgresql

__all__ = [
    "FakeTokenEndpoint",
    "FaultProxy",
    "HerdCall",
    "PgBouncerServer",
    "PostgresServer",
    "Reply",
    "TokenRequest",
    "run_herd",
    "throwaway_pgbouncer",
    "throwaway_postgresql",
]
