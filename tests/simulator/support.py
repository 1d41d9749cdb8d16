"""Helpers for the simulator tests: a fake backend and a server that mounts the simulator.

One uvicorn server (in a thread, on a free loopback port) serves both, mounted
by the development entry point's own router (`simulators.asgi.WithSimulator`, as
around the product): /simulator/… goes to the simulator, everything else to `FakeBackend`, which records each webhook
(with whether twilio's own RequestValidator accepts its signature) and answers
with TwiML a test scripts. The backend is published as PUBLIC_URL, which does
not resolve: the simulator must reach it through the server it is mounted in,
as in the end-to-end tests. Every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

import httpx
import uvicorn
from twilio.request_validator import RequestValidator

from simulators.asgi import WithSimulator
from simulators.telephony.app import SimulatorApp
from simulators.telephony.config import SimulatorConfig

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "test-auth-token"
PUBLIC_URL = "https://callpull.example.test"
SERVER_NUMBER = "+15555550100"
LINE = "+15550001234"
CALLER = "+15550009999"


def eventually(check, *, timeout: float = 5.0, interval: float = 0.02):
    """Call `check` until it stops raising AssertionError (or LookupError, for
    `received[0]` before anything arrived); return its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, LookupError):
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def leg(sim, sid):
    """The simulator's record of one call or leg."""
    return sim.http.get(f"/simulator/calls/{sid}").json()


def until(sim, sid, **expected):
    """Wait until the record's fields have the expected values."""
    def check():
        current = leg(sim, sid)
        assert {key: current[key] for key in expected} == expected, current
        return current
    return eventually(check)


def until_event(sim, sid, event):
    """Wait until the record holds `event` (some are recorded a moment after the
    activity changes: `wait_audio` follows the fetch of the wait URL)."""
    def check():
        current = leg(sim, sid)
        assert any(entry["event"] == event for entry in current["events"]), current
        return current
    return eventually(check)


@dataclass
class Received:
    method: str
    path: str
    url: str  # the public URL it was addressed to
    params: dict[str, str]
    headers: dict[str, str]
    signature_valid: bool


class FakeBackend:
    """Records webhooks; answers `answers[path](params)` (TwiML text, (status, body), or
    (status, body, {header: value}))."""

    def __init__(self, public_url: str, auth_token: str):
        self.public_url = public_url
        self.validator = RequestValidator(auth_token)
        self.received: list[Received] = []
        self.answers: dict = {}

    def reset(self) -> None:
        self.received.clear()
        self.answers.clear()

    def to(self, path: str) -> list[Received]:
        return [request for request in list(self.received) if request.path == path]

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        query = scope["query_string"].decode()
        url = self.public_url + scope["path"] + (f"?{query}" if query else "")
        if scope["method"] == "POST":
            form = parse_qsl(body.decode(), keep_blank_values=True)  # as Django's request.POST
            params, signed_params = dict(form), dict(form)
        else:
            params, signed_params = dict(parse_qsl(query, keep_blank_values=True)), {}
        valid = self.validator.validate(url, signed_params, headers.get("x-twilio-signature", ""))
        self.received.append(Received(scope["method"], scope["path"], url, params, headers, valid))
        answer = self.answers.get(scope["path"], lambda params: "<Response/>")(params)
        status, text, extra = (answer + ({},))[:3] if isinstance(answer, tuple) else (200, answer, {})
        headers = [(b"content-type", b"text/xml")] + [(k.encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": text.encode()})


def Mounted(simulator: SimulatorApp, backend: FakeBackend) -> WithSimulator:
    """The development entry point's router with `backend` in the product's place."""
    return WithSimulator(backend, simulator)


class Stack:
    def __init__(self, app):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)
        self.http = httpx.Client(base_url=self.base_url, trust_env=False, timeout=5)

    def start(self) -> Stack:
        self.thread.start()
        eventually(lambda: self._started(), timeout=10)
        return self

    def _started(self):
        assert self.server.started

    def stop(self) -> None:
        try:
            self.http.delete("/simulator/state")
        finally:
            self.http.close()
            self.server.should_exit = True
            self.thread.join(timeout=10)


def make_config(public_url: str, **overrides) -> SimulatorConfig:
    values = dict(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_base_url=public_url,
                  server_numbers=(SERVER_NUMBER,), answer_delay_seconds=0.05, webhook_timeout_seconds=5)
    values.update(overrides)
    return SimulatorConfig(**values)
