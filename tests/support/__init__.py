"""Shared set-up of the test suite: fixture plugins (loaded by ``tests/conftest.py``) and the
helpers, worker apps and auditors that several test files use."""
