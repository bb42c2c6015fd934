"""A consuming service's code under `mypy --strict`: correct use is clean; a misspelt option,
a wrong option type or an int user id are errors a type checker reports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CORRECT = """
import asyncio
import uuid

from google.oauth2.credentials import Credentials

from gmail_token_store import (
    GMAIL_SEND,
    AsyncTokenStore,
    EventHook,
    EventKind,
    StoreOptions,
    TokenEvent,
    TokenState,
    TokenStore,
    create_table,
    get_credentials,
    get_credentials_async,
)


def count(event: TokenEvent) -> None:
    kind: EventKind = event.kind
    print(kind)


hook: EventHook = count
options: StoreOptions = {"http_timeout": 5.0, "cache_ttl": 0}
store = TokenStore.from_env(cache_ttl=5, on_event=hook, allowed_token_hosts=["corp.example"])
other = TokenStore("postgresql://u@db/main_db", **options)
credentials: Credentials = store.get_credentials(uuid.uuid4(), scopes=[GMAIL_SEND])
state: TokenState = store.check("dddddddd-dddd-dddd-dddd-dddddddddddd").state
created: bool = create_table("postgresql://u@db/main_db")
module_level: Credentials = get_credentials("dddddddd-dddd-dddd-dddd-dddddddddddd")


async def service() -> None:
    async with AsyncTokenStore.from_env(refresh_margin=120.0) as tokens:
        await tokens.get_credentials(uuid.uuid4())
        await tokens.refresh("dddddddd-dddd-dddd-dddd-dddddddddddd", force=True)
    await get_credentials_async("dddddddd-dddd-dddd-dddd-dddddddddddd")


asyncio.run(service())
"""

WRONG = {
    "misspelt option": (
        "TokenStore.from_env(cache_tll=5)",
        'Unexpected keyword argument "cache_tll"',
    ),
    "option of the wrong type": (
        'AsyncTokenStore("postgresql://u@db/x", cache_ttl="5")',
        "cache_ttl",
    ),
    "int user id": ("get_credentials(12345)", 'Argument 1 to "get_credentials"'),
    "int user id, method": (
        'TokenStore("postgresql://u@db/x").check(12345)',
        'Argument 1 to "check"',
    ),
}


def _mypy(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # away from the project's own mypy settings
        timeout=300,
        check=False,
    )


def test_correct_consumer_code_is_clean_under_mypy_strict(tmp_path: Path) -> None:
    result = _mypy(tmp_path, "consumer", CORRECT)
    assert result.returncode == 0, result.stdout


def test_mistakes_are_reported_by_mypy(tmp_path: Path) -> None:
    imports = "from gmail_token_store import AsyncTokenStore, TokenStore, get_credentials\n"
    source = imports + "".join(f"{call}  # {name}\n" for name, (call, _) in WRONG.items())
    result = _mypy(tmp_path, "mistakes", source)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    for line_number, (name, (_, expected)) in enumerate(WRONG.items(), start=2):
        reported = [line for line in errors if f"mistakes.py:{line_number}:" in line]
        assert any(expected in line for line in reported), (name, reported)
