"""Helpers for the end-to-end tests: real server processes and real clients.

A `Server` is a uvicorn process on the application its settings name (`asgi_entry`):
the product alone with Twilio credentials, the development entry point (the
product with the bundled simulator at /simulator/) without; on a free loopback
port, logging to a file. `Environment` makes fresh databases for
servers (a PostgreSQL database when DATABASE_URL points at PostgreSQL, else a
SQLite file) and a Redis database of their own when REDIS_URL is set.

Clients are what an app would use: httpx for HTTP, the `websockets` sync client
for the WebSocket. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from callpull import settings as product_settings

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"

# Variables of the product's configuration that a developer's shell might set;
# servers under test get only what a test asks for.
_NAMED_VARIABLES = (
    "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "WEBSOCKET_ALLOWED_ORIGINS", "ALLOW_SIGNUP",
    "SERVER_NUMBERS", "PUBLIC_BASE_URL", "FCM_CREDENTIALS_FILE", "FCM_ENDPOINT", "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN", "TWILIO_API_BASE", "PAIRING_CODE_TTL_SECONDS", "WS_TICKET_TTL_SECONDS",
    "PRESENCE_HEARTBEAT_SECONDS", "PRESENCE_STALE_SECONDS", "RATE_LIMIT_LOGIN", "RATE_LIMIT_PAIRING",
    "RATE_LIMIT_SIGNUP", "RATE_LIMIT_WS_TICKET", "LOG_LEVEL", "SECRET_KEY", "DEBUG",
    "CALL_RING_SECONDS", "CALL_FORWARD_WAIT_SECONDS", "CALL_MATCH_WINDOW_SECONDS", "DIAL_TIMEOUT_SECONDS",
    "SWEEPER_IN_PROCESS", "SWEEP_INTERVAL_SECONDS", "FCM_HTTP_TIMEOUT_SECONDS", "FCM_RETRY_BUDGET_SECONDS",
    "SIMULATOR_ANSWER_DELAY_SECONDS", "SIMULATOR_BACKEND_URL", "SIMULATOR_CARRIER_TIMER_SCALE",
    "MAX_REQUEST_BODY_BYTES", "API_JSON_MAX_DEPTH",
    "SIP_DOMAINS", "TRUSTED_PROXIES", "HOLDER_LOST_HOLD_SECONDS", "NUMBER_VERIFICATION_TTL_SECONDS",
    "RATE_LIMIT_LOGIN_ADDRESS", "RATE_LIMIT_TRANSFER_PIN", "RATE_LIMIT_DIAL_IN_PIN", "RATE_LIMIT_PIN_PER_ACCOUNT",
    "RATE_LIMIT_PAIRING_CODE", "RATE_LIMIT_NUMBER_VERIFICATION", "RATE_LIMIT_NUMBER_VERIFICATION_DAILY",
)
# ... and every name callpull.settings defines (APNS_*, VOICE_*, METRICS_TOKEN…), so a setting added
# later cannot leak from a developer's shell into a server under test either.
_CONFIG_VARIABLES = frozenset(_NAMED_VARIABLES) | {name for name in vars(product_settings) if name.isupper()}

# The server number every e2e server hands out, and the origin it believes it is
# published at (deliberately not its loopback address, so a same-origin browser
# socket is allowed by its Host, not by PUBLIC_BASE_URL).
SERVER_NUMBER = "+15555550100"
PUBLIC_BASE_URL = "https://callpull.example.test"

# The settings servers run with: the product's, with a fast password hasher (see the module).
SERVER_SETTINGS_MODULE = "tests.e2e.server_settings"

_unique = itertools.count(1)


def simulator_api_base(port: int) -> str:
    """TWILIO_API_BASE for a server whose embedded simulator must be reached on its
    own loopback port (PUBLIC_BASE_URL is a name that does not resolve). Pass the
    function itself as a setting: `servers.start(TWILIO_API_BASE=simulator_api_base)`."""
    return f"http://127.0.0.1:{port}/simulator"


def asgi_entry(env: dict[str, str]) -> str:
    """What uvicorn serves for a server with this environment: the application
    settings.ASGI_APPLICATION names there (callpull/settings.py), as module:attribute."""
    if env.get("TWILIO_ACCOUNT_SID", "").strip():
        return "callpull.asgi:application"
    return "simulators.asgi:application"  # embedded default: the simulator mounted


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_unique)}"


def eventually(check, *, timeout: float = 5.0, interval: float = 0.05):
    """Call `check` until it stops raising AssertionError; return its result.
    After `timeout` seconds the last AssertionError is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Servers -------------------------------------------------------------------

class ServerFailed(RuntimeError):
    pass


class Server:
    """One uvicorn process. Start with `start()`, stop with `stop()` (SIGTERM,
    then SIGKILL) or `kill()` (SIGKILL at once, as a crash)."""

    every: list[Server] = []  # for the failure report: whose log to show

    def __init__(self, *, name: str, env: dict[str, str], log_path: Path, per_port: dict | None = None):
        self.name = name
        self.env = env
        self.per_port = per_port or {}  # settings computed from the port: {name: f(port) -> value}
        self.log_path = log_path
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.stopped_at: float | None = None

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/v1/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout: float = 30.0) -> Server:
        for _attempt in range(3):
            self.port = free_port()
            self.env = {**self.env, **{key: str(value(self.port)) for key, value in self.per_port.items()}}
            with open(self.log_path, "ab") as log:
                log.write(f"--- starting {self.name} on port {self.port}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", asgi_entry(self.env),
                     "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "on",
                     "--ws-per-message-deflate", "false", "--timeout-graceful-shutdown", "5"],
                    cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self not in Server.every:
                Server.every.append(self)
            self.stopped_at = None
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log_tail(20).lower():
                break  # a real failure, not a lost race for the port
        raise ServerFailed(f"server {self.name} did not start:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(self.base_url + "/", timeout=1, trust_env=False).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        return False

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
        if not self.running:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.stopped_at = time.monotonic()
        return self.process.returncode

    def kill(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait(timeout=10)
        self.stopped_at = time.monotonic()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self):
        return f"<Server {self.name} {self.base_url} log={self.log_path}>"


class Environment:
    """What servers of one test session share: a temporary directory, the
    PostgreSQL server (if any) and a Redis database claimed for this run."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.database_url = os.environ.get("DATABASE_URL", "").strip()
        self.postgres = urlsplit(self.database_url).scheme in {"postgres", "postgresql", "pgsql"}
        self.redis_url: str | None = None
        self._redis = None
        self._redis_lock = f"callpull-e2e:{uuid.uuid4().hex}"
        self._template: str | None = None  # the migrated database every server's is copied from

    # Redis ---------------------------------------------------------------

    LOCK_KEY = "callpull-e2e:lock"
    CLAIM_SECONDS = 900  # the claim's expiry, renewed whenever a server's database is made

    def claim_redis(self) -> str | None:
        """A Redis database of our own, so that neither another run nor the unit
        suite (whose cache.clear() is a FLUSHDB on REDIS_URL's database) can
        touch our servers' groups and counters. The claim is a lock key inside
        the database, with an expiry in case this run dies."""
        url = os.environ.get("REDIS_URL", "").strip()
        if not url:
            return None
        import redis

        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss"}:
            self.redis_url = url  # a unix socket: share it as is
            return url
        base_db = int(parts.path.strip("/") or 0)
        probe = redis.Redis.from_url(url)
        try:
            count = int(probe.config_get("databases")["databases"])
        except Exception:  # CONFIG may be disabled
            count = 16
        finally:
            probe.close()
        # 0 (the default) and the last one (CI's REDIS_URL) are the likeliest to be in use.
        candidates = list(range(count - 2, 0, -1)) + [count - 1, 0]
        for db in candidates:
            if db == base_db:
                continue
            candidate = urlunsplit(parts._replace(path=f"/{db}"))
            client = redis.Redis.from_url(candidate)
            if client.set(self.LOCK_KEY, self._redis_lock, nx=True, ex=self.CLAIM_SECONDS):
                self._redis, self.redis_url = client, candidate
                self._clear_redis()
                return candidate
            client.close()
        raise RuntimeError(f"every Redis database but {base_db} is claimed by another e2e run")

    def _renew_redis_claim(self) -> None:
        """Push the claim's expiry back: one environment serves the whole session (tests/web,
        tests/e2e, tests/security…), which may outlast CLAIM_SECONDS."""
        if self._redis is not None and self._redis.get(self.LOCK_KEY) == self._redis_lock.encode():
            self._redis.expire(self.LOCK_KEY, self.CLAIM_SECONDS)

    def _clear_redis(self) -> None:
        for pattern in ("asgi*", "callpull:*"):  # channels_redis and the Django cache
            for key in self._redis.scan_iter(match=pattern, count=500):
                self._redis.delete(key)

    def release_redis(self) -> None:
        if self._redis is None:
            return
        try:
            self._clear_redis()
            if self._redis.get(self.LOCK_KEY) == self._redis_lock.encode():
                self._redis.delete(self.LOCK_KEY)
        finally:
            self._redis.close()
            self._redis = None

    # Databases -----------------------------------------------------------

    def _postgres_admin(self):
        import psycopg

        parts = urlsplit(self.database_url)
        return psycopg.connect(
            host=parts.hostname or None, port=parts.port or 5432, user=parts.username or None,
            password=parts.password or None, dbname="postgres", autocommit=True, connect_timeout=10)

    def database(self, stack: ExitStack) -> str:
        """A fresh, migrated database; dropped when `stack` closes. A copy of one migrated
        once per session (`manage.py migrate` in a process of its own cost ~2 s of CPU per
        server, and a session starts dozens): PostgreSQL's CREATE DATABASE … TEMPLATE, or
        SQLite's backup API."""
        template = self._migrated_template()
        self._renew_redis_claim()
        if self.postgres:
            name = f"callpull_e2e_{uuid.uuid4().hex[:12]}"
            with self._postgres_admin() as admin:
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            stack.callback(self._drop_postgres, name)
            return urlunsplit(urlsplit(self.database_url)._replace(path=f"/{name}"))
        path = self.tmp_dir / f"{unique('db')}.sqlite3"
        source, copy = sqlite3.connect(template), sqlite3.connect(path)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        return f"sqlite:///{path}"

    def _migrated_template(self) -> str:
        """The session's template: a PostgreSQL database name or an SQLite file path, migrated
        once (nobody connects to it afterwards, as CREATE DATABASE … TEMPLATE requires)."""
        if self._template is not None:
            return self._template
        if self.postgres:
            name = f"callpull_e2e_template_{uuid.uuid4().hex[:12]}"
            with self._postgres_admin() as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            url = urlunsplit(urlsplit(self.database_url)._replace(path=f"/{name}"))
        else:
            name = str(self.tmp_dir / "template.sqlite3")
            url = f"sqlite:///{name}"
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input"], cwd=ROOT, env=self.server_env(url),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        self._template = name
        return name

    def drop_template(self) -> None:
        if self._template is not None and self.postgres:
            self._drop_postgres(self._template)
        self._template = None

    def _drop_postgres(self, name: str) -> None:
        with self._postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def server_env(self, database_url: str, **settings) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in _CONFIG_VARIABLES}
        env.update({
            "DJANGO_SETTINGS_MODULE": SERVER_SETTINGS_MODULE,
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "SERVER_NUMBERS": SERVER_NUMBER,
            "LOG_LEVEL": "INFO",
            # Every test signs up from 127.0.0.1; the sign-up limit is not under test here.
            "RATE_LIMIT_SIGNUP": "100000",
        })
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env.update({key: str(value) for key, value in settings.items()})
        return env


class Servers:
    """Databases and servers owned by one fixture scope; all stopped and dropped
    when that scope ends (servers first)."""

    def __init__(self, environment: Environment, name: str):
        self.environment = environment
        self.name = name
        self._databases = ExitStack()
        self._servers = ExitStack()

    def database(self) -> str:
        return self.environment.database(self._databases)

    def start(self, database: str | None = None, *, name: str | None = None, **settings) -> Server:
        """A server on `database` (a fresh one if not given), with extra settings
        as environment variables, e.g. PRESENCE_STALE_SECONDS=3. A callable value is
        called with the server's port (see `simulator_api_base`)."""
        database = database or self.database()
        label = name or unique(self.name)
        fixed = {key: value for key, value in settings.items() if not callable(value)}
        per_port = {key: value for key, value in settings.items() if callable(value)}
        server = Server(name=label, env=self.environment.server_env(database, **fixed),
                        log_path=self.environment.tmp_dir / f"{label}.log", per_port=per_port)
        self._servers.callback(server.stop)
        return server.start()

    def close(self) -> None:
        try:
            self._servers.close()
        finally:
            self._databases.close()


# HTTP ----------------------------------------------------------------------

def call(server: Server, method: str, path: str, *, token: str | None = None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.base_url + path, headers=headers, timeout=10, trust_env=False, **kwargs)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "fields"}, body
    return body["error"]["code"]


@dataclass
class Device:
    id: str
    token: str
    name: str
    kind: str


@dataclass
class Account:
    server: Server
    username: str
    password: str = PASSWORD

    def register(self, kind: str = "tablet", *, name: str | None = None, platform: str = "android",
                 via: Server | None = None, **fields) -> Device:
        """Register a device; `fields` go into `device` as they are (fcm_token, connect, …)."""
        name = name or f"{kind} of {self.username}"
        response = call(via or self.server, "POST", "/api/v1/devices", json={
            "username": self.username, "password": self.password,
            "device": {"name": name, "kind": kind, "platform": platform, **fields}})
        assert response.status_code == 201, response.text
        body = response.json()
        return Device(id=body["device"]["id"], token=body["token"], name=name, kind=kind)


def sign_up(server: Server, prefix: str = "user") -> Account:
    account = Account(server=server, username=unique(prefix))
    response = call(server, "POST", "/api/v1/accounts", json={"username": account.username,
                                                              "password": account.password})
    assert response.status_code == 201, response.text
    return account


def devices_by_id(server: Server, token: str) -> dict[str, dict]:
    response = call(server, "GET", "/api/v1/devices", token=token)
    assert response.status_code == 200, response.text
    return {device["id"]: device for device in response.json()}


def assert_online(server: Server, token: str, device_id: str, online: bool) -> None:
    seen = devices_by_id(server, token)[device_id]["online"]
    assert seen is online, f"{server.name}: device {device_id} online={seen}, expected {online}"


# WebSocket -----------------------------------------------------------------

def ws_connect(server: Server, token: str | None = None, *, ticket: str | None = None,
               origin: str | None = None, headers: dict | None = None) -> ClientConnection:
    """Open the device socket the way a client would (handshake must succeed)."""
    url = server.ws_url + (f"?ticket={ticket}" if ticket is not None else "")
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return connect(url, additional_headers=all_headers, origin=origin, proxy=None, compression=None,
                   open_timeout=5, close_timeout=3, ping_interval=None)


def next_frame(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def reply(ws: ClientConnection, timeout: float = 5.0) -> dict:
    """The next frame that is not a `device.presence` broadcast (a device hears
    its own presence too, right after `hello`)."""
    return wait_for_frame(ws, lambda frame: frame.get("type") != "device.presence", timeout=timeout)


def wait_for_frame(ws: ClientConnection, match, *, timeout: float = 5.0) -> dict:
    """The first frame for which `match(frame)` is true; other frames are skipped."""
    deadline = time.monotonic() + timeout
    skipped = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame within {timeout}s; got {skipped}")
        try:
            frame = next_frame(ws, timeout=remaining)
        except TimeoutError:
            continue
        if match(frame):
            return frame
        skipped.append(frame)


def hello(ws: ClientConnection, timeout: float = 5.0) -> dict:
    frame = next_frame(ws, timeout)
    assert frame["type"] == "hello", frame
    return frame


def presence_of(device: Device, online: bool):
    return lambda frame: (frame.get("type") == "device.presence" and frame["device"]["id"] == device.id
                          and frame["online"] is online)


def close_code(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, list]:
    """Wait for the server to close the socket: (close code, frames before it)."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            frames.append(json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        except ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else None), frames
        except TimeoutError:
            raise AssertionError(f"socket still open after {timeout}s; frames: {frames}") from None


# Faults --------------------------------------------------------------------
#
# Tools that break the parts a server depends on, the way they break in real life,
# without touching the shared PostgreSQL and Redis: a TCP proxy of our own in front
# of a service (cut it, restore it), a private redis-server (restart it), an
# exclusive lock on a SQLite file, and a device client that reconnects.

class TcpProxy:
    """A TCP proxy on a free loopback port in front of `target` ((host, port)), served
    by an asyncio loop in a thread.

    - `cut()`: every open connection is reset and new ones are accepted and reset at
      once, until `restore()` (to the client: the server went away).
    - `cut_on(pattern, seconds)`: armed; the first client→server chunk that contains
      `pattern` (bytes, e.g. a table name in an SQL statement) is not forwarded, and
      the proxy cuts for `seconds` from then (a fault at a chosen step, every time).
    """

    def __init__(self, target: tuple[str, int]):
        import asyncio
        import threading

        self.target = target
        self.is_cut = False
        self.cuts = 0
        self.tripped = threading.Event()
        self._pattern: bytes | None = None
        self._trip_seconds = 0.0
        self._writers: set = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy->{target[1]}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    def url_for(self, url: str) -> str:
        """`url` (postgres://…, redis://…) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)

        async def start():
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _serve(self, reader, writer) -> None:
        import asyncio

        if self.is_cut:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, upstream_writer)
        self._writers.update(pair)

        async def pump(source, sink, inspect: bool):
            try:
                while chunk := await source.read(65536):
                    if inspect and self._pattern is not None and self._pattern in chunk:
                        self._pattern = None
                        if self._trip_seconds >= 0:
                            self._cut(self._trip_seconds)
                        self.tripped.set()
                        return  # this connection is dropped in any case
                    sink.write(chunk)
                    await sink.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                for each in pair:
                    each.transport.abort()

        await asyncio.gather(pump(reader, upstream_writer, True), pump(upstream_reader, writer, False))
        self._writers.difference_update(pair)

    def _cut(self, seconds: float = 0.0) -> None:
        self.is_cut = True
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if seconds > 0:
            self._loop.call_later(seconds, self._restore)

    def _restore(self) -> None:
        self.is_cut = False

    def _call(self, function, *args) -> None:
        import concurrent.futures

        done = concurrent.futures.Future()

        def run():
            try:
                done.set_result(function(*args))
            except Exception as error:  # pragma: no cover - surfaced to the caller
                done.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        done.result(10)

    def cut(self, seconds: float = 0.0) -> None:
        """Reset every connection and refuse new ones; for `seconds`, or until restore()."""
        self._call(self._cut, seconds)

    def restore(self) -> None:
        self._call(self._restore)

    def cut_on(self, pattern: bytes, seconds: float) -> None:
        """Armed: the first client→server chunk containing `pattern` is not forwarded and
        its connection is dropped; then the proxy cuts for `seconds` (0: until restore();
        negative: it does not cut, only that one connection dies)."""
        def arm():
            self.tripped.clear()
            self._pattern, self._trip_seconds = pattern, seconds
        self._call(arm)

    def close(self) -> None:
        import asyncio

        async def shut():
            self._server.close()
            self._cut()
            pumps = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def redis_server_binary() -> str | None:
    import shutil

    return shutil.which("redis-server")


class PrivateRedis:
    """A redis-server of our own on a free loopback port, nothing saved to disk, so a
    test can kill and restart it (the shared Redis is never touched)."""

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary on PATH")
        log = open(self.tmp_dir / f"redis-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp_dir), "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL, as a crash: every client connection drops, every key is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.kill()
        time.sleep(down_seconds)
        self.restarts += 1
        for _attempt in range(50):  # the port may linger a moment after the kill
            try:
                self.start()
                return
            except RuntimeError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not come back")

    stop = kill

    def flush(self) -> None:
        """FLUSHALL: every key gone while every connection stays up (what a restart
        without persistence, or a failover to an empty replica, leaves behind)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            if not conn.recv(64).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")


def sqlite_path(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite:"):
        return None
    return Path(urlsplit(database_url).path)


class SqliteLock:
    """Hold `BEGIN EXCLUSIVE` on a SQLite database from another connection, the way a
    long write by another process would: `with SqliteLock(path, seconds=3): …`, or
    `start()` and `release()`. (In WAL mode readers go on; writers wait for it, up to
    their busy timeout.)"""

    def __init__(self, path: Path, seconds: float | None = None):
        import threading

        self.path = path
        self.seconds = seconds
        self._held = threading.Event()
        self._release = threading.Event()
        self._thread = None

    def _hold(self) -> None:
        import sqlite3

        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            self._held.set()
            self._release.wait(self.seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def start(self) -> SqliteLock:
        import threading

        self._thread = threading.Thread(target=self._hold, name="sqlite-lock", daemon=True)
        self._thread.start()
        if not self._held.wait(30):
            raise RuntimeError(f"could not lock {self.path}")
        return self

    def release(self) -> None:
        self._release.set()
        if self._thread is not None:
            self._thread.join(30)

    def wait(self) -> None:
        """Until the lock is released (after `seconds`)."""
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> SqliteLock:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.release()


class Companion:
    """A device's app on its WebSocket, as a real app behaves: it acks every frame that
    has an id, and when the socket drops it reconnects (after `reconnect_delay`, to the
    next of `servers` if one refuses) until closed. Frames are kept with their arrival
    time; `connections` lists (connected_at, disconnected_at or None) per socket."""

    def __init__(self, servers: list[Server] | Server, device: Device, *, reconnect_delay: float = 0.2,
                 connect: bool = True):
        import threading

        self.servers = servers if isinstance(servers, list) else [servers]
        self.device = device
        self.reconnect_delay = reconnect_delay
        self.frames: list[tuple[float, dict]] = []
        self.connections: list[list] = []
        self.acks_sent = 0
        self.errors: list[str] = []
        self._closing = threading.Event()
        self._changed = threading.Condition()
        self._ws: ClientConnection | None = None
        self._server_index = 0
        self._thread = threading.Thread(target=self._run, name=f"companion-{device.kind}", daemon=True)
        if connect:
            self.start()

    def start(self) -> Companion:
        self._thread.start()
        self.wait_connected()
        return self

    @property
    def server(self) -> Server:
        return self.servers[self._server_index % len(self.servers)]

    @property
    def connected(self) -> bool:
        with self._changed:
            return bool(self.connections) and self.connections[-1][1] is None

    def _open(self) -> ClientConnection | None:
        for _ in range(len(self.servers)):
            try:
                ws = ws_connect(self.server, self.device.token).__enter__()  # closed in _run
                first = json.loads(ws.recv(timeout=5))
                if first.get("type") != "hello":
                    ws.close()
                    raise ConnectionError(f"expected hello, got {first}")
                return ws
            except (OSError, TimeoutError, ConnectionClosed, ConnectionError, ValueError) as error:
                self.errors.append(f"{self.server.name}: {type(error).__name__}: {error}")
                self._server_index += 1
        return None

    def _run(self) -> None:
        while not self._closing.is_set():
            ws = self._open()
            if ws is None:
                self._closing.wait(self.reconnect_delay)
                continue
            with self._changed:
                self._ws = ws
                self.connections.append([time.time(), None])
                self._changed.notify_all()
            try:
                while True:
                    frame = json.loads(ws.recv())
                    arrived = time.time()
                    if frame.get("id"):
                        ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
                        self.acks_sent += 1
                    with self._changed:
                        self.frames.append((arrived, frame))
                        self._changed.notify_all()
            except (ConnectionClosed, OSError, ValueError):
                pass
            with self._changed:
                self.connections[-1][1] = time.time()
                self._ws = None
                self._changed.notify_all()
            try:
                ws.close()
            except Exception:
                pass
            self._closing.wait(self.reconnect_delay)

    def wait_connected(self, timeout: float = 10.0, *, after: int = 0) -> None:
        """Until a socket (the `after`+1-th one or later) is open and greeted."""
        with self._changed:
            if not self._changed.wait_for(
                    lambda: len(self.connections) > after and self.connections[-1][1] is None, timeout):
                raise AssertionError(f"{self.device.name}: not connected within {timeout}s; {self.errors[-3:]}")

    def drop(self) -> None:
        """Lose the network: the socket dies without a close frame; the app reconnects."""
        with self._changed:
            ws = self._ws
        if ws is not None:
            try:
                ws.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def of(self, event_type: str, call_id: str | None = None) -> list[dict]:
        with self._changed:
            return [frame for _, frame in self.frames if frame.get("type") == event_type
                    and (call_id is None or frame.get("call", {}).get("id") == call_id)]

    def wait_for(self, event_type: str, call_id: str | None = None, *, timeout: float = 5.0,
                 after: float = 0.0) -> dict:
        """The first `event_type` frame (for `call_id`) that arrived after time.time() `after`."""
        def found():
            return [frame for at, frame in self.frames if at >= after and frame.get("type") == event_type
                    and (call_id is None or frame.get("call", {}).get("id") == call_id)]
        with self._changed:
            if not self._changed.wait_for(found, timeout):
                seen = [(frame.get("type"), frame.get("call", {}).get("id", "")[:8]) for _, frame in self.frames]
                raise AssertionError(f"{self.device.name}: no {event_type} for call {call_id} within {timeout}s "
                                     f"(connections {self.connections}); got {seen[-12:]}")
            return found()[0]

    def close(self) -> None:
        self._closing.set()
        with self._changed:
            ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        self._thread.join(10)

    def __enter__(self) -> Companion:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
