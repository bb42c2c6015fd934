"""A consuming service's conftest.py: gmail_token_store's fixtures, enabled in one line."""

pytest_plugins = ["gmail_token_store.testing.fixtures"]
