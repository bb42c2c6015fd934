"""The wheel built from this checkout installs alone in a fresh virtualenv and works there:
import, `gmail-token-store --version`, and a consumer's tests using the public fixtures
(examples/consumer_tests, the ones the README shows)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import gmail_token_store

ROOT = Path(__file__).parent.parent
CONSUMER_TESTS = ROOT / "examples" / "consumer_tests"


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
        check=False,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_wheel_installs_alone_and_a_consumer_suite_passes_with_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, ROOT)
    [wheel] = dist.glob("gmail_token_store-*.whl")
    assert wheel.name.startswith(f"gmail_token_store-{gmail_token_store.__version__}-")

    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    _run(bin_dir / "pip", "install", "--quiet", f"{wheel}[testing]")

    # Imported from the fresh environment, not from this checkout.
    where = _run(bin_dir / "python", "-c", "import gmail_token_store as g; print(g.__file__)")
    assert str(tmp_path / "venv") in where
    assert _run(bin_dir / "gmail-token-store", "--version").strip() == (
        f"gmail-token-store {gmail_token_store.__version__}"
    )
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    for source in CONSUMER_TESTS.glob("*.py"):
        (consumer / source.name).write_text(source.read_text())
    report = _run(bin_dir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=consumer)
    assert "3 passed" in report
