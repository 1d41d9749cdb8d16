"""`manage.py serve`: its options, the lighter WebSocket protocol's parts, and a real
server started by the command (hello, ping, permessage-deflate, keepalive)."""

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx
import pytest
from django.core.management import call_command
from websockets.sync.client import connect

from callpull.management.commands import serve
from tests.e2e.support import ROOT, Environment, Server, free_port, hello, next_frame, reply, sign_up

# Options ----------------------------------------------------------------------


@pytest.fixture
def uvicorn_run(monkeypatch):
    calls = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def test_serve_uses_the_device_protocol_without_deflate_by_default(uvicorn_run):
    call_command("serve")
    (app, options), = uvicorn_run
    assert app == "simulators.asgi:application"  # settings.ASGI_APPLICATION of the embedded default
    assert options["ws"] == "callpull.management.commands.serve:DeviceWebSocketProtocol"
    assert options["ws_per_message_deflate"] is False
    assert (options["ws_ping_interval"], options["ws_ping_timeout"]) == (20.0, 20.0)


def test_serve_passes_deflate_pings_and_uvicorns_own_protocols(uvicorn_run):
    call_command("serve", "--ws", "websockets", "--ws-per-message-deflate", "true", "--ws-ping-interval", "5",
                 "--ws-ping-timeout", "0")
    (_, options), = uvicorn_run
    assert options["ws"] == "websockets"
    assert options["ws_per_message_deflate"] is True
    assert (options["ws_ping_interval"], options["ws_ping_timeout"]) == (5.0, None)


def test_serve_empties_the_metrics_directory_of_an_earlier_run(uvicorn_run, tmp_path, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"old counts")
    (directory / "keep.txt").write_text("not prometheus_client's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    call_command("serve")
    assert uvicorn_run, "the server still starts"
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]


def test_serve_creates_a_missing_metrics_directory(uvicorn_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "new"))
    call_command("serve")
    assert (tmp_path / "new").is_dir()


# The protocol's inbox and flag behave as asyncio.Queue and asyncio.Event ----------

def test_inbox_hands_items_out_in_order_to_a_waiting_getter():
    async def scenario():
        inbox = serve.Inbox()
        getter = asyncio.ensure_future(inbox.get())
        await asyncio.sleep(0)
        inbox.put_nowait("connect")
        inbox.put_nowait("receive")
        first = await getter
        return first, await inbox.get(), inbox.empty()
    assert asyncio.run(scenario()) == ("connect", "receive", True)


def test_inbox_keeps_the_item_of_a_getter_cancelled_after_it_was_woken():
    async def scenario():
        inbox = serve.Inbox()
        first = asyncio.ensure_future(inbox.get())
        second = asyncio.ensure_future(inbox.get())
        await asyncio.sleep(0)
        inbox.put_nowait("disconnect")
        first.cancel()
        return await second, first.cancelled()
    assert asyncio.run(scenario()) == ("disconnect", True)


def test_flag_wakes_every_waiter_when_set_and_blocks_them_when_cleared():
    async def scenario():
        flag = serve._Flag()
        waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
        await asyncio.sleep(0)
        blocked_before = not any(w.done() for w in waiters)
        flag.set()
        woken = await asyncio.gather(*waiters)
        flag.clear()
        again = asyncio.ensure_future(flag.wait())
        await asyncio.sleep(0)
        blocked_after = not again.done()
        again.cancel()
        await asyncio.gather(again, return_exceptions=True)
        return blocked_before, woken, blocked_after, flag._waiters
    assert asyncio.run(scenario()) == (True, [True, True], True, [])


class _Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written = []

    def write(self, data):
        self.written.append(bytes(data))

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self):
        return False

    def close(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def test_an_accepted_socket_keeps_no_handshake_headers():
    """Neither the protocol nor websockets' parser (whose generator holds the
    request for the socket's life) keeps the handshake's headers once accepted."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await receive()

    async def scenario():
        config = Config(app, ws_ping_interval=None)
        config.load()
        protocol = serve.DeviceWebSocketProtocol(config, ServerState(), {})
        transport = _Transport()
        protocol.connection_made(transport)
        protocol.data_received(b"GET /ws/v1/ HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer secret-token\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0)
        parser_request = protocol.conn.parser.gi_frame.f_locals.get("request")
        accepted = b"".join(transport.written).startswith(b"HTTP/1.1 101")
        held = (protocol.request, protocol.response,
                parser_request is not None and list(parser_request.headers.raw_items()))
        protocol.connection_lost(None)
        for _ in range(10):
            await asyncio.sleep(0)
        return accepted, held, protocol.scope["headers"][-1]

    accepted, held, scope_header = asyncio.run(scenario())
    assert accepted
    assert held == (None, None, [])
    assert (scope_header[0].lower(), scope_header[1]) == (b"authorization", b"Bearer secret-token")  # its own copy


# A real server started by the command ---------------------------------------------

class ServeProcess(Server):
    """tests.e2e's Server, started with `manage.py serve` and its options."""

    def __init__(self, *, options: list[str], **kwargs):
        super().__init__(**kwargs)
        self.options = options

    def start(self, *, timeout: float = 30.0) -> Server:
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--port", str(self.port), "--log-level", "warning",
                 *self.options], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        if not self._wait_ready(timeout):
            raise AssertionError(f"serve did not start:\n{self.log_tail()}")
        return self


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Start `manage.py serve` with given options on a fresh database; stopped at the end."""
    environment = Environment(tmp_path_factory.mktemp("serve"))
    stack = ExitStack()
    stack.callback(environment.drop_template)  # last: after the database copied from it
    database = environment.database(stack)

    def start(*options: str) -> Server:
        server = ServeProcess(name=f"serve {' '.join(options)}", env=environment.server_env(database),
                              log_path=environment.tmp_dir / f"serve-{len(options)}-{time.monotonic_ns()}.log",
                              options=list(options))
        stack.callback(server.stop)
        return server.start()
    with stack:
        yield start


def device_socket(server, *, compression=None, ping_interval=None):
    device = sign_up(server, "serve").register("tablet")
    return connect(server.ws_url, additional_headers={"Authorization": f"Bearer {device.token}"}, proxy=None,
                   compression=compression, open_timeout=5, close_timeout=3, ping_interval=ping_interval)


@pytest.mark.e2e
def test_a_served_socket_says_hello_and_answers_pings_without_compression(started):
    server = started()
    with device_socket(server, compression="deflate") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        hello(ws)
        ws.send('{"type": "ping"}')
        assert reply(ws)["type"] == "pong"


@pytest.mark.e2e
def test_deflate_is_negotiated_without_context_takeover_and_every_frame_decodes(started):
    server = started("--ws-per-message-deflate", "true")
    with device_socket(server, compression="deflate") as ws:
        extensions = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate")
        assert "server_no_context_takeover" in extensions
        assert "client_no_context_takeover" in extensions
        hello(ws)
        pongs = 0
        for _ in range(5):  # each message compressed and decompressed on its own, both ways
            ws.send('{"type": "ping", "padding": "' + "x" * 500 + '"}')
        while pongs < 5:
            pongs += next_frame(ws)["type"] == "pong"


@pytest.mark.e2e
def test_uvicorns_own_protocol_is_still_available(started):
    server = started("--ws", "websockets-sansio")
    with device_socket(server) as ws:
        hello(ws)


def _raw_handshake(server, token: str) -> socket.socket:
    """An authenticated WebSocket that will never answer a ping: a client that vanished."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall((f"GET /ws/v1/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n").encode())
    return raw


@pytest.mark.e2e
def test_a_client_that_stops_answering_pings_is_closed_and_one_that_answers_is_kept(started):
    server = started("--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    account = sign_up(server, "keepalive")
    silent = _raw_handshake(server, account.register("tablet").token)
    with device_socket(server, ping_interval=None) as alive:  # the client library answers pings itself
        hello(alive)
        received = b""
        while True:  # read (never answer) until the server gives up on us
            chunk = silent.recv(65536)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 101")
        assert b"keepalive ping timeout" in received  # the close frame's reason
        alive.send('{"type": "ping"}')
        assert reply(alive, timeout=10)["type"] == "pong"
    silent.close()
    assert httpx.get(server.base_url + "/", trust_env=False).status_code == 200


def test_a_busy_port_is_one_line_naming_the_port_variable(tmp_path):
    """`make run` on a port another program holds: no start-up summary, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "callpull.settings",
               "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
        done = subprocess.run([sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert len(output.splitlines()) == 1 and "PORT" in output and str(port) in output, output
    assert "Traceback" not in output and "starting" not in output
