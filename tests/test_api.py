"""The public surface: what __all__ exports is what the README documents."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import gmail_token_store
from gmail_token_store import consent, testing, web
from gmail_token_store.testing import fixtures

README = (Path(__file__).parent.parent / "README.md").read_text()


def documented_names() -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)", README))


def test_all_is_sorted_and_importable() -> None:
    # isort-style, as ruff keeps it: CONSTANTS, then Classes, then functions and dunders.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert gmail_token_store.__all__ == sorted(gmail_token_store.__all__, key=kind)
    for name in gmail_token_store.__all__:
        assert hasattr(gmail_token_store, name), name


def test_every_public_name_is_documented_in_the_readme() -> None:
    names = documented_names()
    missing = [name for name in [*gmail_token_store.__all__, *testing.__all__] if name not in names]
    assert missing == []


def test_every_name_of_the_consent_and_the_web_app_is_in_the_readme() -> None:
    # The consent's in "Reconnecting a user"; the web app's there or in "Serving the API".
    reconnecting = README.split("## Reconnecting a user", 1)[1].split("\n## ", 1)[0]
    serving = README.split("## Serving the API", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in consent.__all__ if not re.search(rf"\b{name}\b", reconnecting)]
    missing += [
        name for name in web.__all__ if not re.search(rf"\b{name}\b", reconnecting + serving)
    ]
    assert missing == []


def test_the_readme_api_table_names_only_real_things() -> None:
    api = README.split("## API", 1)[1].split("`TokenStore` options", 1)[0]
    rows = re.findall(r"^\| `([A-Za-z_][A-Za-z_0-9]*)", api, flags=re.MULTILINE)
    assert len(rows) > 5
    for name in rows:
        assert name in gmail_token_store.__all__ or name == "store", name


def test_version_comes_from_the_installed_metadata() -> None:
    assert gmail_token_store.__version__ == importlib.metadata.version("gmail-token-store")


def test_the_package_ships_its_type_information() -> None:
    assert (Path(gmail_token_store.__file__).parent / "py.typed").exists()


def test_the_readme_shows_the_consumer_tests_as_they_are() -> None:
    examples = Path(__file__).parent.parent / "examples" / "consumer_tests"
    for source in sorted(examples.glob("*.py")):
        assert source.read_text().strip() in README, source.name


def test_every_option_and_fixture_is_documented() -> None:
    options = README.split("`TokenStore` options", 1)[1].split("###", 1)[0]
    for option in gmail_token_store.StoreOptions.__annotations__:
        assert f"`{option}`" in options, option
    names = documented_names()
    assert [name for name in fixtures.__all__ if name not in names] == []
