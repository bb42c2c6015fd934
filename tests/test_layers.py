"""The layers hold: the core imports only the standard library, the contracts pass, and the
sync and async twins offer the same things (signatures, effects handled, pool methods)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import gmail_token_store
from gmail_token_store import AsyncTokenStore, TokenStore
from gmail_token_store._core import effects
from gmail_token_store._io import async_shell, pool, pool_async, sync_shell

from conftest import SeedRow

PACKAGE = Path(gmail_token_store.__file__).parent
ROOT = PACKAGE.parent.parent

#: Methods whose names differ between the twins, and the context-manager protocol.
LIFECYCLE = {"close", "aclose", "__enter__", "__exit__", "__aenter__", "__aexit__"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports of one module (relative ones: '.')."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    for path in sorted((PACKAGE / "_core").glob("*.py")):
        outside = imported_modules(path) - {".", "__future__"} - sys.stdlib_module_names
        assert not outside, f"{path.name} imports {sorted(outside)}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{path.name} imports from outside _core"


def test_the_layer_contracts_pass() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_lint_imports_fails_when_the_core_imports_a_driver(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the package whose core imports psycopg fails."""
    copy = tmp_path / "src" / "gmail_token_store"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy.parent)], check=True)
    text = copy / "_core" / "text.py"
    text.write_text(text.read_text() + "\nimport psycopg  # noqa\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "gmail_token_store._core.text -> psycopg" in result.stdout


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and name not in LIFECYCLE
    }


def test_every_public_method_of_the_sync_store_has_its_async_twin() -> None:
    sync, async_ = public_methods(TokenStore), public_methods(AsyncTokenStore)
    assert sync.keys() == async_.keys()
    for name, signature in sync.items():
        twin = async_[name]
        assert [(p.name, p.kind, p.default) for p in signature.parameters.values()] == [
            (p.name, p.kind, p.default) for p in twin.parameters.values()
        ], name
    assert set(dir(TokenStore)) & LIFECYCLE == {"close", "__enter__", "__exit__"}
    assert set(dir(AsyncTokenStore)) & LIFECYCLE == {"aclose", "__aenter__", "__aexit__"}


@pytest.mark.parametrize(
    "name",
    ["get_credentials", "refresh", "check", "check_all", "refresh_all", "save", "create_table"],
)
def test_the_async_stores_io_methods_are_coroutines(name: str) -> None:
    assert inspect.iscoroutinefunction(getattr(AsyncTokenStore, name))
    assert not inspect.iscoroutinefunction(getattr(TokenStore, name))


def cases_handled(module: types.ModuleType, method: str) -> set[str]:
    """The effect classes a shell method's `match` names in its `case` patterns."""
    source = inspect.getsource(module)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == method:
            return {
                pattern.cls.id
                for pattern in ast.walk(node)
                if isinstance(pattern, ast.MatchClass) and isinstance(pattern.cls, ast.Name)
            }
    raise AssertionError(f"no {method} in {module}")


def test_both_shells_handle_every_effect() -> None:
    every = {member.__name__ for member in typing.get_args(effects.Effect)}
    database = {member.__name__ for member in typing.get_args(effects.DatabaseEffect)}
    for shell in (sync_shell, async_shell):
        assert cases_handled(shell, "_perform") == every, shell.__name__
        assert cases_handled(shell, "_run") == database, shell.__name__


@pytest.mark.parametrize(
    ("sync", "async_"),
    [(pool.Pool, pool_async.AsyncPool), (pool.PoolAdapter, pool_async.AsyncPoolAdapter)],
)
def test_the_two_pools_offer_the_same_methods(sync: type, async_: type) -> None:
    def methods(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    assert methods(sync) == methods(async_)


def test_a_cache_miss_on_a_due_token_takes_at_most_seven_flow_shell_round_trips(
    seed: SeedRow, dsn: str
) -> None:
    """Each effect is one round trip between a flow and its shell; the time is injected."""
    row = seed(expires_in=30)
    with TokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=0) as store:
        performed: list[str] = []
        perform = store._io._perform

        def counting(effect: effects.Effect, tx: sync_shell.Transaction) -> object:
            performed.append(type(effect).__name__)
            return perform(effect, tx)

        store._io._perform = counting  # type: ignore[method-assign]
        credentials = store.get_credentials(row.user_id)
    assert credentials.token != row.access_token
    assert performed == ["ReadRow", "Shared", "LockRow", "PostForm", "Execute", "Emit"]
    assert len(performed) <= 7
