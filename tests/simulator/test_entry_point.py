"""The development entry point (simulators.asgi): chosen by settings in the embedded default
only, it mounts the simulator beside the product and closes it when the product has stopped."""

import asyncio
import importlib

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

import callpull.settings as settings_module
from callpull.management.commands import serve
from simulators.asgi import WithSimulator
from simulators.telephony.app import create_app
from simulators.telephony.config import SimulatorConfig
from tests.e2e.support import asgi_entry
from tests.simulator.support import CALLER, SERVER_NUMBER, make_config

CREDENTIALS = {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "prod-auth-token"}


@pytest.fixture
def reload_settings(monkeypatch):
    """Load callpull/settings.py again with some variables (None: unset); restored after."""
    def reload(**variables):
        for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_BASE", "DEBUG", "SECRET_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(settings_module)
    try:
        yield reload
    finally:
        monkeypatch.undo()
        importlib.reload(settings_module)


def test_the_embedded_default_runs_the_entry_point_and_has_the_stand_ins_commands(reload_settings):
    embedded = reload_settings()
    assert embedded.ASGI_APPLICATION == "simulators.asgi.application"
    assert "simulators" in embedded.INSTALLED_APPS
    assert asgi_entry({}) == "simulators.asgi:application"  # what the e2e servers run, likewise


def test_with_credentials_the_product_runs_alone(reload_settings):
    production = reload_settings(DEBUG="false", SECRET_KEY="s" * 50, **CREDENTIALS)
    assert production.ASGI_APPLICATION == "callpull.asgi.application"
    assert "simulators" not in production.INSTALLED_APPS
    assert production.TWILIO_API_BASE == "https://api.twilio.com"
    assert asgi_entry(CREDENTIALS) == "callpull.asgi:application"


def test_serve_runs_what_asgi_application_names(settings, monkeypatch):
    served = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **options: served.append(app))
    settings.ASGI_APPLICATION = "callpull.asgi.application"
    call_command("serve")
    settings.ASGI_APPLICATION = "simulators.asgi.application"
    call_command("serve")
    assert served == ["callpull.asgi:application", "simulators.asgi:application"]


def test_the_simulator_reads_its_own_variables_and_refuses_bad_ones(monkeypatch):
    monkeypatch.setenv("SIMULATOR_ANSWER_DELAY_SECONDS", "0.25")
    monkeypatch.setenv("SIMULATOR_BACKEND_URL", "http://127.0.0.1:8000/")
    config = SimulatorConfig.from_settings()
    assert (config.answer_delay_seconds, config.backend_url) == (0.25, "http://127.0.0.1:8000")
    assert not hasattr(settings_module, "SIMULATOR_ANSWER_DELAY_SECONDS")  # not a product setting
    for name, value in [("SIMULATOR_ANSWER_DELAY_SECONDS", "soon"), ("SIMULATOR_ANSWER_DELAY_SECONDS", "-1"),
                        ("SIMULATOR_BACKEND_URL", "127.0.0.1:8000")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ImproperlyConfigured, match=name):
            SimulatorConfig.from_settings()
        monkeypatch.delenv(name)


# The router and its lifespan, around a product that records what reaches it ----------

class Product:
    """An ASGI application in the product's place: answers 200 "product" to every request
    and, on lifespan shutdown, asks the simulator (through the router) for its calls."""

    def __init__(self):
        self.router = None
        self.seen: list[tuple[str, str]] = []
        self.calls_at_shutdown = None

    async def __call__(self, scope, receive, send):
        self.seen.append((scope["type"], scope.get("path", "")))
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.calls_at_shutdown = (await request(self.router, "GET", "/simulator/calls"))[1]
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"product"})


async def request(app, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "scheme": "http",
             "headers": [(b"content-type", b"application/json")], "server": ("127.0.0.1", 9)}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


async def lifespan(app) -> list[str]:
    inbox = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    sent = []

    async def send(message):
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    return sent


def test_the_simulator_answers_under_its_prefix_and_the_product_everything_else():
    product = Product()
    router = product.router = WithSimulator(product, create_app(make_config("http://127.0.0.1:9"), embedded=True))

    async def scenario():
        index = await request(router, "GET", "/simulator/")
        others = [await request(router, "GET", path) for path in ("/simulatorx", "/api/v1/", "/")]
        return index, others

    (status, body), others = asyncio.run(scenario())
    assert status == 200 and b"/simulator/carrier/mmi" in body
    assert others == [(200, b"product")] * 3
    assert product.seen == [("http", "/simulatorx"), ("http", "/api/v1/"), ("http", "/")]


def test_the_simulator_is_closed_once_the_product_has_shut_down():
    product = Product()
    router = product.router = WithSimulator(product, create_app(make_config("http://127.0.0.1:9"), embedded=True))

    async def scenario():
        placed = await request(router, "POST", "/simulator/calls",
                               f'{{"from": "{CALLER}", "to": "{SERVER_NUMBER}"}}'.encode())
        sent = await lifespan(router)
        return placed, sent, await request(router, "GET", "/simulator/calls")

    (created, _), sent, (_, after) = asyncio.run(scenario())
    assert created == 201
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert b'"sid"' in product.calls_at_shutdown  # still there while the product shut down
    assert b'"sid"' not in after  # then forgotten: the simulator was closed
