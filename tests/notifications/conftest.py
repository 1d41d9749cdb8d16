"""Fixtures for FCM tests: the fake FCM server, settings pointing notifications.fcm
at it, and a helper that sends pushes and waits for their results."""

import threading
import time

import pytest

from notifications import fcm
from simulators.fcm import FakeFCM


@pytest.fixture(scope="session")
def fake_fcm_server(tmp_path_factory):
    server = FakeFCM().start()
    server.credentials_file = server.write_credentials(tmp_path_factory.mktemp("fcm") / "service-account.json")
    yield server
    server.stop()


@pytest.fixture
def fake_fcm(fake_fcm_server, settings):
    """The fake, reset, with the settings pointing at it and small timeouts so that
    retry tests take fractions of a second. The sender is shut down after the test, so
    every test starts from a fresh sender built from its own settings."""
    fake_fcm_server.reset()
    settings.FCM_CREDENTIALS_FILE = str(fake_fcm_server.credentials_file)
    settings.FCM_ENDPOINT = fake_fcm_server.url
    settings.FCM_HTTP_TIMEOUT_SECONDS = 1.0
    settings.FCM_RETRY_BUDGET_SECONDS = 2.0
    # Built before the test's clock starts, as the server does at start-up: on a loaded
    # machine building it took longer than the short deadlines some tests set.
    fcm.start()
    yield fake_fcm_server
    fcm.shutdown()
    fake_fcm_server.reset()


class Results:
    """Collects on_result calls: the results in call order and where they were called."""

    def __init__(self):
        self.results: list[fcm.PushResult] = []
        self.arrived_at: list[float] = []
        self.threads: set[str] = set()
        self._changed = threading.Condition()

    def __call__(self, result: fcm.PushResult) -> None:
        with self._changed:
            self.results.append(result)
            self.arrived_at.append(time.time())
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[fcm.PushResult]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.results) >= count, timeout):
                raise AssertionError(f"{len(self.results)} of {count} results after {timeout} s")
            return list(self.results)


@pytest.fixture
def send(fake_fcm):
    """send(pushes) -> results in the order on_result was called, once all arrived."""

    def send(pushes, timeout=10.0):
        results = Results()
        fcm.send_many(pushes, results)
        return results.wait(len(pushes), timeout)

    return send


def wait_until(condition, timeout=5.0):
    """Poll `condition` (set by another thread) until it holds; fail after `timeout`."""
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def make_push(token="token-aaaaaaaaaaaa", *, call_id="call-1", ring_seconds=30.0, data=None, device_id=None):
    return fcm.Push(
        device_id=device_id or f"device-{token}",
        token=token,
        data=data if data is not None else {"type": "call.ringing", "call_id": call_id, "caller": "+15551234567"},
        collapse_key=call_id,
        deadline=time.time() + ring_seconds,
    )
