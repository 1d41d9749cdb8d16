"""The end-to-end tests' conftest: their fixtures (`environment`, `server`, `servers`, `fake_fcm`,
`fake_apns`, `ring_settings`, `ring_server`) and the failure report with the servers' logs are in
tests/e2e/fixtures.py, which tests/conftest.py loads for the whole session (tests/web and
tests/security use the same servers); what is here applies to tests/e2e alone.
"""

import pytest


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Overrides the unit suite's autouse cache.clear(): these tests talk to
    servers, not to this process's cache, and with REDIS_URL that clear is a
    FLUSHDB that would hit anything else using that Redis database."""
    yield
