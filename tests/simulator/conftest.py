"""Fixtures: a running simulator and the fake backend it talks to (see support.py)."""

import pytest

from simulators.telephony.app import create_app
from tests.simulator.support import AUTH_TOKEN, PUBLIC_URL, FakeBackend, Mounted, Stack, make_config


@pytest.fixture(scope="module")
def stack():
    backend = FakeBackend(PUBLIC_URL, AUTH_TOKEN)
    simulator = create_app(make_config(PUBLIC_URL), embedded=True)
    running = Stack(Mounted(simulator, backend)).start()
    running.backend = backend
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def sim(stack):
    """The running stack, with the simulator and the backend's script fresh for this test."""
    stack.http.delete("/simulator/state").raise_for_status()
    stack.backend.reset()
    return stack
