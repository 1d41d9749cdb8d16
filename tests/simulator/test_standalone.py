"""The simulator on its own server (`manage.py simulator`): webhooks go to the backend's address."""

import socket

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from simulators.telephony.app import create_app
from tests.simulator.support import (
    AUTH_TOKEN,
    CALLER,
    PUBLIC_URL,
    SERVER_NUMBER,
    FakeBackend,
    Stack,
    eventually,
    make_config,
)


@pytest.fixture
def backend_server():
    backend = FakeBackend("", AUTH_TOKEN)
    server = Stack(backend)
    backend.public_url = server.base_url
    server.start()
    server.backend = backend
    yield server
    server.stop()


def place_call(simulator: Stack) -> None:
    response = simulator.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER})
    assert response.status_code == 201, response.text


def test_standalone_simulator_posts_to_the_public_url(backend_server):
    simulator = Stack(create_app(make_config(backend_server.base_url), embedded=False)).start()
    try:
        place_call(simulator)
        voice = eventually(lambda: backend_server.backend.to("/telephony/twilio/voice")[0])
    finally:
        simulator.stop()
    assert voice.url == backend_server.base_url + "/telephony/twilio/voice"
    assert voice.signature_valid


def test_a_backend_url_receives_what_is_addressed_to_the_public_url(backend_server):
    backend_server.backend.public_url = PUBLIC_URL
    config = make_config(PUBLIC_URL, backend_url=backend_server.base_url)
    simulator = Stack(create_app(config, embedded=False)).start()
    try:
        place_call(simulator)
        voice = eventually(lambda: backend_server.backend.to("/telephony/twilio/voice")[0])
    finally:
        simulator.stop()
    assert voice.headers["host"] == "callpull.example.test"
    assert voice.signature_valid  # signed for https://callpull.example.test/telephony/twilio/voice


def test_simulate_call_says_plainly_when_the_server_is_not_running():
    with socket.socket() as bound_but_not_listening:
        bound_but_not_listening.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{bound_but_not_listening.getsockname()[1]}"
        with pytest.raises(CommandError, match=r"cannot reach http://127\.0\.0\.1:\d+/.*Is the server running"):
            call_command("simulate_call", base=base, timeout=2)


def test_simulate_call_names_the_endpoint_that_answered_an_error(sim):
    sim.backend.answers["/api/v1/devices"] = lambda params: (
        500, '{"error": {"code": "server_error", "message": "Something broke.", "fields": {}}}')
    with pytest.raises(CommandError, match=r"POST http://.*/api/v1/devices answered 500: server_error: Something"):
        call_command("simulate_call", base=sim.base_url, timeout=2)
