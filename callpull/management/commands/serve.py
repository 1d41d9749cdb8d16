"""Run the ASGI application under uvicorn: `python manage.py serve`.

It serves the application settings.ASGI_APPLICATION names: `callpull.asgi:application`,
or in the embedded default the development entry point `simulators.asgi:application`
(the product with the bundled simulator mounted). Any ASGI server on that works; this
command only saves typing, refuses setups that cannot work (several workers without Redis), and
serves WebSockets with `DeviceWebSocketProtocol`, which holds less per idle
socket than uvicorn's own (devices keep their socket open all day).

uvicorn's internals, pinned: this is the one module that touches them.
`DeviceWebSocketProtocol` subclasses uvicorn's websockets-sansio protocol (an
undocumented module; uvicorn documents only the `ws=` names) and replaces three
of its attributes; uvicorn documents none of that, so it is checked against
exactly UVICORN_CHECKED and WEBSOCKETS_CHECKED, and
tests/notifications/test_library_uvicorn.py fails on any other installed version.
It stays because it pays: uvicorn's own protocol (`--ws websockets-sansio`) held
27.1 KB per idle socket against this one's 17.6 KB (2,000 sockets, in-memory
layer, permessage-deflate off; bench/README.md). `--ws websockets-sansio` is the
fallback that needs nothing of uvicorn's but its documented options.
"""

import argparse
import asyncio
import logging
import os
import socket
from pathlib import Path

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol

from notifications.layers import Inbox

# The versions DeviceWebSocketProtocol was written and checked against. On an upgrade,
# re-check in uvicorn's websockets_sansio_impl.py: the constructor's signature, that
# `queue` is used only through put_nowait/get/get_nowait/empty and `writable` only
# through set/clear/is_set/wait, that `conn` is built in __init__ and nothing keeps
# the first one, that `request`/`response` are not read after start_keepalive();
# and in websockets, ServerProtocol's and ServerPerMessageDeflateFactory's
# arguments. Then run `python -m bench memory` with `--variants 'default;--ws
# websockets-sansio'` to see that it still pays.
UVICORN_CHECKED = "0.54.0"
WEBSOCKETS_CHECKED = "17.4"

# --ws: ours, or uvicorn's own protocols by their uvicorn names (wsproto is not installed).
WS_PROTOCOLS = {"device": f"{__name__}:DeviceWebSocketProtocol", "websockets-sansio": "websockets-sansio",
                "websockets": "websockets"}


class _Flag:
    """asyncio.Event (set, clear, is_set, wait) with its waiters in a list, not a deque."""

    __slots__ = ("_value", "_waiters")

    def __init__(self):
        self._value = False
        self._waiters = []

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class DeviceWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol (no task per socket beyond the app's),
    with differences that only change what an idle socket holds:

    - the application's inbox and the writability flag are `Inbox`
      (notifications.layers) and `_Flag` rather than an asyncio.Queue and an
      asyncio.Event;
    - the handshake's request and response (headers and all) are released once the
      socket is accepted; uvicorn keeps them for the socket's life but never reads
      them again. websockets (17.4) keeps the request too, as a local of the parser
      generator that then reads frames for the socket's life, so its headers are
      emptied in place (about 3 KB per socket);
    - permessage-deflate is negotiated without context takeover in either
      direction, so the zlib compressor and decompressor exist only while a
      message is being compressed or decompressed instead of for the socket's
      life (about 40 KB of zlib state per socket with uvicorn's settings). Our
      frames are small, independent JSON objects: they compress nearly as well on
      their own.
    """

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.queue = Inbox()
        self.writable = _Flag()
        self.writable.set()
        if config.ws_per_message_deflate:
            self.conn = ServerProtocol(
                extensions=[ServerPerMessageDeflateFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5},
                    server_no_context_takeover=True, client_no_context_takeover=True)],
                max_size=config.ws_max_size, logger=self.conn.logger)

    def start_keepalive(self) -> None:
        # Called once, right after the accepting response was written; the scope
        # already has its own copy of the headers.
        if self.request is not None:
            self.request.headers.clear()
        self.request = self.response = None
        super().start_keepalive()


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _seconds_or_off(value: str) -> float | None:
    seconds = float(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError("must be 0 (off) or more")
    return seconds or None


def _empty_metrics_directory() -> int:
    """Empty PROMETHEUS_MULTIPROC_DIR (create it if missing) before the workers start:
    prometheus_client's multiprocess mode adds up every `*.db` file there, and a previous
    run's files would be counted again (its documentation: the directory must be wiped
    between runs). Only its `*.db` files go. Returns how many were removed."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return 0
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def _bind_error(host: str, port: int) -> OSError | None:
    """Why the server could not listen on host:port (a port in use, an address not ours), or
    None: checked before start-up, so a busy port is one line, not a start-up summary and a
    traceback. Bound as uvicorn binds (SO_REUSEADDR), then released at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        return OSError(error.errno, f"unknown host ({error.strerror})")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with uvicorn."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--log-level", default="info")
        parser.add_argument("--ws", choices=sorted(WS_PROTOCOLS), default="device",
                            help="WebSocket protocol: ours (device, the default) or one of uvicorn's.")
        parser.add_argument("--ws-per-message-deflate", type=_boolean, default=False, metavar="true|false",
                            help="Offer permessage-deflate (default false: it costs CPU and, with uvicorn's "
                                 "protocols, about 40 KB per socket; ours holds no zlib state between messages).")
        parser.add_argument("--ws-ping-interval", type=_seconds_or_off, default=20.0, metavar="SECONDS",
                            help="Ping every socket this often (0: never); default 20.")
        parser.add_argument("--ws-ping-timeout", type=_seconds_or_off, default=20.0, metavar="SECONDS",
                            help="Close a socket whose pong is this late (0: never); default 20.")

    def handle(self, *args, host, port, workers, log_level, ws, ws_per_message_deflate, ws_ping_interval,
               ws_ping_timeout, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        if workers > 1 and not settings.REDIS_URL:
            raise CommandError("Several workers need a shared channel layer: set REDIS_URL.")
        embedded_simulator = settings.SIMULATOR_ENABLED and \
            settings.TWILIO_API_BASE == settings.PUBLIC_BASE_URL + "/simulator"
        if workers > 1 and embedded_simulator:
            raise CommandError("The bundled simulator keeps its calls in one process: with several workers run "
                               "it on its own (manage.py simulator --port 8001) and set "
                               "TWILIO_API_BASE=http://127.0.0.1:8001/simulator.")
        if ws_ping_interval is not None and ws_ping_timeout is None:
            logging.getLogger("callpull").warning("--ws-ping-timeout 0: sockets of vanished clients are only "
                                                  "noticed by TCP, which can take hours")
        taken = _bind_error(host, port)
        if taken is not None:
            raise CommandError(f"Cannot listen on {host}:{port}: {taken.strerror}. Stop what holds it, or choose "
                               f"another port with the PORT variable (make run PORT={port + 1}).")
        removed = _empty_metrics_directory()
        if removed:
            logging.getLogger("callpull").info("PROMETHEUS_MULTIPROC_DIR: %d file(s) of an earlier run removed",
                                               removed)
        # proxy_headers=False: uvicorn would otherwise take X-Forwarded-For (and -Proto) from any
        # client on loopback as the client's address. The app reads X-Forwarded-For itself, and
        # only from TRUSTED_PROXIES (devices.api.client_ip).
        module, _, attribute = settings.ASGI_APPLICATION.rpartition(".")
        uvicorn.run(f"{module}:{attribute}", host=host, port=port, workers=workers, lifespan="on",
                    log_level=log_level, ws=WS_PROTOCOLS[ws], proxy_headers=False,
                    ws_per_message_deflate=ws_per_message_deflate, ws_ping_interval=ws_ping_interval,
                    ws_ping_timeout=ws_ping_timeout)
