"""Fixtures shared by every test package: the test database, an API client and small factories."""

import itertools
import os
import tempfile

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from callpull import actions
from devices import services as device_services
from devices.models import Device

# The end-to-end fixtures (servers, their databases, the fake FCM and APNs) for every package that
# starts servers, once per session: see tests/e2e/fixtures.py.
pytest_plugins = ["tests.e2e.fixtures"]

PASSWORD = "correct horse battery staple"
_names = itertools.count(1)
_unset = object()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """On SQLite the test database is a file (SQLITE_TEST_NAME, default a per-process file in
    the temp dir), not shared-cache memory: concurrent connections there fail with "table is
    locked" instead of waiting, and the race tests need real concurrency."""
    database = django_settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        name = os.environ.get("SQLITE_TEST_NAME", "").strip()
        database.setdefault("TEST", {})["NAME"] = name or os.path.join(
            tempfile.gettempdir(), f"callpull-test-{os.getpid()}.sqlite3")


class InlineRunner:
    """callpull.actions' runner for unit tests: every action and every retry at once, in the
    test's thread, its exceptions raised."""

    def run(self, fn, *args, **kwargs) -> None:
        fn(*args, **kwargs)

    def later(self, delay: float, fn, *args) -> None:
        fn(*args)


@pytest.fixture(autouse=True)
def _fast_password_hashing_and_inline_provider_actions(settings, monkeypatch):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Provider REST actions run inline so unit tests see their effects at once (a retry too).
    monkeypatch.setattr(actions, "runner", InlineRunner())
    # In-process tests have no client that could ack while a ring report waits for a
    # receipt; they ack afterwards (Socket.ack). tests/notifications and tests/e2e
    # cover the wait itself with real consumers.
    settings.RING_ACK_WAIT_SECONDS = 0
    # The fixtures' SIP targets (sip:…@pbx.example) are on the operator's list, so they count as verified.
    settings.SIP_DOMAINS = ["pbx.example"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api():
    return APIClient()


def make_user(username=None, password=PASSWORD):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username=username or f"user{next(_names)}", password=password)


def make_device(user, *, kind="tablet", platform="android", name=None, connect_verified_at=_unset, **fields):
    """A registered device and its bearer token. A `client` target, or a `sip` one on
    SIP_DOMAINS, is verified as registration makes it; `connect_verified_at=` overrides that
    (e.g. a `number` target whose verification call a test does not need)."""
    registration = device_services._create_device(
        user=user, data={"name": name or f"{kind} {next(_names)}", "kind": kind, "platform": platform, **fields},
        now=timezone.now())
    device = registration.device
    if connect_verified_at is not _unset:
        Device.all_objects.filter(pk=device.pk).update(connect_verified_at=connect_verified_at)
        device.connect_verified_at = connect_verified_at
    return device, registration.token


def client_for(token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def user(db):
    return make_user("ana")


@pytest.fixture
def handset(user):
    return make_device(user, kind="handset", name="Pixel")


@pytest.fixture
def tablet(user):
    return make_device(user, kind="tablet", name="Tablet")


@pytest.fixture
def handset_api(handset):
    return client_for(handset[1])


@pytest.fixture
def tablet_api(tablet):
    return client_for(tablet[1])


@pytest.fixture
def stranger(db):
    """A device of another user, and its client."""
    other = make_user("mallory")
    device, token = make_device(other, kind="handset", name="Mallory's phone")
    return device, client_for(token)


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "fields"}, body
    return body["error"]["code"]


def rate_limits(**scopes) -> dict:
    """RATE_LIMITS with some scopes changed, for override_settings: every other scope keeps
    its configured limit (a view may count in scopes the test is not about)."""
    from django.conf import settings

    return {**settings.RATE_LIMITS, **scopes}
