"""Fixtures of the end-to-end tests: real uvicorn processes with their own databases, each on
the application its settings name (support.asgi_entry: the development entry point
simulators.asgi, with the simulator at /simulator/, unless Twilio credentials are set).

tests/conftest.py loads this module for the whole session (`pytest_plugins`), so every package
that starts servers (tests/e2e, tests/web, tests/security, …) shares one of each session
fixture: one migrated template database, one claimed Redis database, one `server` and one
`ring_server`. (A package that imported these fixtures into its own namespace would get its
own copy of each, and pay for another migration and more servers.)

- `environment` (session): temp dir, PostgreSQL admin access when DATABASE_URL
  is PostgreSQL, and a Redis database claimed for this run when REDIS_URL is set.
- `server` (session): one server with default settings on a fresh database,
  shared by tests that only need "a server"; tests use unique usernames.
- `servers` (function): start servers with their own settings, or several on one
  database (`servers.database()` then `servers.start(db)` twice); all stopped
  (SIGTERM, then SIGKILL) and their databases dropped when the test ends.

- `fake_fcm` (session): simulators.fcm.FakeFCM in this process, with a
  service-account file (`fake_fcm.credentials_file`) whose token_uri is the fake.
- `fake_apns` (session): simulators.apns.FakeAPNs in this process, with the .p8 key
  it trusts (`fake_apns.settings()`: APNS_* for a server).
- `ring_settings` (session): what a server needs to take calls end to end: the
  embedded simulator's REST base on the server's own port, a short simulated answer
  delay, a fast sweeper, and real firebase-admin pointed at `fake_fcm`.
- `ring_server` (session): one server with `ring_settings`, for the ring-flow tests.

When a test fails, the tail of every server log it could have touched is added
to the report. Full logs are under the session's pytest tmp dir.
"""

import time

import pytest

from simulators.apns import FakeAPNs
from simulators.fcm import FakeFCM
from tests.e2e.support import Environment, Server, Servers, simulator_api_base


@pytest.fixture(scope="session")
def environment(tmp_path_factory):
    env = Environment(tmp_path_factory.mktemp("e2e"))
    env.claim_redis()
    try:
        yield env
    finally:
        env.release_redis()
        env.drop_template()


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


@pytest.fixture(scope="session")
def fake_fcm(tmp_path_factory):
    fake = FakeFCM().start()
    fake.credentials_file = fake.write_credentials(tmp_path_factory.mktemp("fcm") / "service-account.json")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def fake_apns(tmp_path_factory):
    """simulators.apns.FakeAPNs (HTTP/2) in this process, with the .p8 key it trusts;
    `fake_apns.settings()` are the APNS_* settings of a server that sends to it."""
    fake = FakeAPNs().start()
    fake.write_key(tmp_path_factory.mktemp("apns") / "AuthKey_FAKEKEY001.p8")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def ring_settings(fake_fcm) -> dict:
    return {
        "TWILIO_API_BASE": simulator_api_base,  # the server's own port, known once it starts
        "SIMULATOR_ANSWER_DELAY_SECONDS": 0.2,
        "SWEEP_INTERVAL_SECONDS": 0.2,
        "FCM_CREDENTIALS_FILE": str(fake_fcm.credentials_file),
        "FCM_ENDPOINT": fake_fcm.url,
        "FCM_HTTP_TIMEOUT_SECONDS": 2,
        "FCM_RETRY_BUDGET_SECONDS": 4,
    }


@pytest.fixture(scope="session")
def ring_server(environment, ring_settings):
    """A server that takes calls end to end: simulator, sweeper and FCM (the fake)."""
    owner = Servers(environment, "ring")
    try:
        yield owner.start(name="ring", **ring_settings)
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
