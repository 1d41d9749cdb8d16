"""Fixtures for the end-to-end tests: real uvicorn processes with their own databases.

- `environment` (session): temp dir, PostgreSQL admin access when DATABASE_URL
  is PostgreSQL, and a Redis database claimed for this run when REDIS_URL is set.
- `server` (session): one server with default settings on a fresh database,
  shared by tests that only need "a server"; tests use unique usernames.
- `servers` (function): start servers with their own settings, or several on one
  database (`servers.database()` then `servers.start(db)` twice); all stopped
  (SIGTERM, then SIGKILL) and their databases dropped when the test ends.

When a test fails, the tail of every server log it could have touched is added
to the report. Full logs are under the session's pytest tmp dir.
"""

import time

import pytest

from tests.e2e.support import Environment, Server, Servers


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Overrides the unit suite's autouse cache.clear(): these tests talk to
    servers, not to this process's cache, and with REDIS_URL that clear is a
    FLUSHDB that would hit anything else using that Redis database."""
    yield


@pytest.fixture(scope="session")
def environment(tmp_path_factory):
    env = Environment(tmp_path_factory.mktemp("e2e"))
    env.claim_redis()
    try:
        yield env
    finally:
        env.release_redis()


@pytest.fixture(scope="session")
def server(environment):
    """A server with default settings, shared by the session."""
    owner = Servers(environment, "shared")
    try:
        yield owner.start(name="shared")
    finally:
        owner.close()


@pytest.fixture
def servers(environment, request):
    owner = Servers(environment, request.node.name[:40])
    try:
        yield owner
    finally:
        owner.close()


_started_key = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_started_key] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and _started_key in item.stash:
        started = item.stash[_started_key]
        for server in Server.every:
            if server.running or (server.stopped_at is not None and server.stopped_at >= started):
                report.sections.append((f"server {server.name} ({server.log_path})", server.log_tail()))
    return report
