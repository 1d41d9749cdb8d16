"""Processes, databases, load and resource readings shared by the benchmarks."""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RAW = RESULTS / "raw"
SERVER_NUMBER = "+15555550100"
PUBLIC_BASE_URL = "https://callpull.bench.test"
TWILIO_AUTH_TOKEN = "simulator-auth-token"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# Product variables a developer's shell may set; the benchmark servers get only ours.
_SCRUB = ("DATABASE_URL", "REDIS_URL", "FCM_CREDENTIALS_FILE", "FCM_ENDPOINT", "TWILIO_API_BASE",
          "PUBLIC_BASE_URL", "SERVER_NUMBERS", "DEBUG", "LOG_LEVEL", "SECRET_KEY", "ALLOWED_HOSTS",
          "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "APNS_KEY_FILE", "APNS_KEY_ID", "APNS_TEAM_ID",
          "APNS_BUNDLE_ID", "APNS_ENDPOINT", "APNS_CA_FILE")
# What server_env(production=True) adds that takes the stand-ins away (settings.SIMULATOR_ENABLED).
_PRODUCTION = ("DEBUG", "SECRET_KEY", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_BASE")
NCPU = os.cpu_count() or 1
SERVER_CORES = {0}
CLIENT_CORES = {1} if NCPU > 1 else {0}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pin_self_to_client_cores() -> None:
    if NCPU > 1:
        os.sched_setaffinity(0, CLIENT_CORES)


def raise_nofile(n: int = 65536) -> int:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(n, soft), hard) if hard != resource.RLIM_INFINITY else n
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Database:
    """A fresh database: SQLite file, or a PostgreSQL database dropped at close()."""

    def __init__(self, kind: str, tmp: Path):
        self.kind = kind
        self.name = f"callpull_bench_{uuid.uuid4().hex[:10]}"
        if kind == "postgres":
            import psycopg
            with psycopg.connect(_pg_admin(), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self.name}"')
            self.url = urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{self.name}"))
        else:
            self.url = f"sqlite:///{tmp / (self.name + '.sqlite3')}"

    def close(self) -> None:
        if self.kind == "postgres":
            import psycopg
            with psycopg.connect(_pg_admin(), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _pg_admin() -> str:
    return urlunsplit(urlsplit(POSTGRES_URL)._replace(path="/postgres"))


def claim_redis_db() -> tuple[str, object]:
    """A Redis database of our own (lock key, as tests/e2e does), flushed of asgi keys."""
    import redis
    me = uuid.uuid4().hex
    for db in range(14, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
        if client.set("callpull-bench:lock", me, nx=True, ex=1800):
            for key in client.scan_iter(match="asgi*", count=500):
                client.delete(key)
            return f"{REDIS_BASE}/{db}", client
        client.close()
    raise RuntimeError("no free Redis database")


def server_env(database_url: str, redis_url: str | None, *, production: bool = False, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update({"DJANGO_SETTINGS_MODULE": "callpull.settings", "PYTHONUNBUFFERED": "1",
                "DATABASE_URL": database_url, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                "SERVER_NUMBERS": SERVER_NUMBER, "LOG_LEVEL": "WARNING"})
    if production and os.environ.get("BENCH_DEBUG", "false").lower() != "true":
        # As production runs (docs/SECURITY.md): DEBUG off, which needs the provider's
        # credentials; the ring path never reaches the provider's REST API. DEBUG on (the
        # `make run` default, kept by BENCH_DEBUG=true) records every query's SQL.
        env.update({"DEBUG": "false", "SECRET_KEY": "bench-" + "k" * 50, "ALLOWED_HOSTS": "127.0.0.1,localhost",
                    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
                    "TWILIO_API_BASE": "http://127.0.0.1:9", "SECURE_SSL_REDIRECT": "false",
                    "SECURE_HSTS_SECONDS": "0", "SECURE_COOKIES": "false"})
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update({k: str(v) for k, v in extra.items()})
    return env


def migrate(env: dict) -> None:
    done = subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")


def seed(env: dict, users: int, secondaries: int, policy: str, out: Path, prefix: str = "b") -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "bench.seed", str(users), str(secondaries), policy, str(out),
                           prefix], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"seed failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(out.read_text())


def start_fake_fcm(tmp: Path, env: dict, *, latency_ms: int = 20,
                   pin: set | None = None) -> tuple[subprocess.Popen, str, Path]:
    """`manage.py fakefcm` in its own process; returns (process, its URL, the
    service-account file that points firebase-admin at it). The command exists in the
    embedded default only (the `simulators` app), so it runs without the production
    variables a server's `env` may hold."""
    port = free_port()
    creds = tmp / "fake-fcm-service-account.json"
    env = {key: value for key, value in env.items() if key not in _PRODUCTION}
    with open(tmp / "fakefcm.log", "ab") as log_file:
        fake = subprocess.Popen([sys.executable, "manage.py", "fakefcm", "--port", str(port), "--latency-ms",
                                 str(latency_ms), "--credentials-out", str(creds)], cwd=ROOT, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/_fake/rules", timeout=1, trust_env=False)
            if creds.exists():
                return fake, url, creds
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_process(fake)
    raise RuntimeError("the fake FCM did not start")


class FakeAPNsControl:
    """The control paths of a `manage.py fakeapns` in another process (HTTP/2 only; over
    TLS, trusting the CA it wrote), and what setting up a new connection to it costs."""

    def __init__(self, url: str, ca_file: Path | None):
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else False
        self.url = url
        self.client = httpx.Client(http1=False, http2=True, verify=verify, trust_env=False, timeout=10)
        self.handshake: ssl.SSLContext | None = None
        if url.startswith("https:"):
            self.handshake = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if not ca_file:
                self.handshake.check_hostname, self.handshake.verify_mode = False, ssl.CERT_NONE
            self.handshake.set_alpn_protocols(["h2"])

    def setup_ms(self, samples: int = 5) -> float:
        """Median ms, over `samples` new connections from this process, from connect() to a
        connection a request could go on: TCP connect and the TLS handshake (ALPN h2), or
        over h2c the client's preface until the server's first frame arrives. What a sender
        that opens a connection per send pays before its first request; `--connect-latency-ms`
        adds to it (TCP's own handshake is never delayed by the fake)."""
        parts = urlsplit(self.url)
        took = []
        for _ in range(samples):
            start = time.perf_counter()
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
                if self.handshake is not None:
                    with self.handshake.wrap_socket(raw, server_hostname=parts.hostname) as tls:
                        took.append(time.perf_counter() - start)
                        if tls.selected_alpn_protocol() != "h2":
                            raise RuntimeError(f"the fake APNs chose {tls.selected_alpn_protocol()!r}, not h2")
                else:  # h2c: the preface and an empty SETTINGS frame, then the server's SETTINGS
                    raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes((0, 0, 0, 4, 0, 0, 0, 0, 0)))
                    if not raw.recv(9):
                        raise RuntimeError("the fake APNs closed a new h2c connection")
                    took.append(time.perf_counter() - start)
        took.sort()
        return round(took[len(took) // 2] * 1000, 1)

    def counts(self) -> dict:
        return self.client.get(self.url + "/_fake").raise_for_status().json()

    def records(self, start: int = 0) -> list[dict]:
        return self.client.get(f"{self.url}/_fake/requests?from={start}").raise_for_status().json()

    def clear_rules(self) -> None:
        self.client.delete(self.url + "/_fake/rules").raise_for_status()

    def add_rule(self, rule: dict) -> None:
        self.client.post(self.url + "/_fake/rules", json=rule).raise_for_status()

    def close(self) -> None:
        self.client.close()


def start_fake_apns(tmp: Path, env: dict, *, latency_ms: float = 20, connect_latency_ms: float = 0,
                    tls: bool = True, pin: set | None = None) -> tuple[subprocess.Popen, dict]:
    """`manage.py fakeapns` in its own process (TLS by default, as APNs); returns (process,
    the APNS_* settings that send to it, APNS_CA_FILE included with TLS). `latency_ms` delays
    every answer, `connect_latency_ms` every new connection's handshake (its first flight
    back). Like the fake FCM, it runs without the production variables a server's `env` may
    hold."""
    port = free_port()
    key, ca = tmp / "AuthKey_FAKEKEY001.p8", tmp / "fake-apns-ca.pem"
    for stale in (key, ca):
        stale.unlink(missing_ok=True)
    env = {key_: value for key_, value in env.items() if key_ not in _PRODUCTION}
    command = [sys.executable, "manage.py", "fakeapns", "--port", str(port), "--latency-ms", str(latency_ms),
               "--connect-latency-ms", str(connect_latency_ms), "--key-out", str(key)] + (
        ["--tls", "--ca-out", str(ca)] if tls else [])
    with open(tmp / "fakeapns.log", "ab") as log_file:
        fake = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    settings = {"APNS_KEY_FILE": str(key), "APNS_KEY_ID": "FAKEKEY001", "APNS_TEAM_ID": "CALLPULL01",
                "APNS_BUNDLE_ID": "org.callpull.app", "APNS_ENDPOINT": url}
    if tls:
        settings["APNS_CA_FILE"] = str(ca)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if fake.poll() is not None:
            break
        if key.exists() and (ca.exists() or not tls):
            control = FakeAPNsControl(url, ca if tls else None)
            try:
                control.counts()
                return fake, settings
            except httpx.HTTPError:
                pass
            finally:
                control.close()
        time.sleep(0.1)
    stop_process(fake)
    raise RuntimeError(f"the fake APNs did not start:\n{(tmp / 'fakeapns.log').read_text()[-2000:]}")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


class Server:
    """The product (`manage.py serve`: the application settings.ASGI_APPLICATION names, so the
    development entry point simulators.asgi in the embedded default, callpull.asgi alone with
    the provider's credentials) or the floor (uvicorn on bench.floor.app:application)."""

    def __init__(self, app: str, env: dict, log_path: Path, *, workers: int = 1, deflate: bool = False,
                 pin: bool = True):
        self.app, self.env, self.log_path = app, env, log_path
        self.workers, self.deflate, self.pin = workers, deflate, pin
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/v1/"

    def start(self, timeout: float = 60) -> Server:
        if self.app == "callpull.asgi:application":
            # The product as it is deployed: `manage.py serve` (its WebSocket protocol, ping
            # settings and lifespan), not a hand-made uvicorn command line.
            command = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                       "--log-level", "warning", "--ws-per-message-deflate", "true" if self.deflate else "false",
                       "--workers", str(self.workers)]
        else:
            command = [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port),
                       "--lifespan", "auto", "--ws-per-message-deflate", "true" if self.deflate else "false",
                       "--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "3",
                       "--backlog", "8192"]
            if self.workers > 1:
                command += ["--workers", str(self.workers)]
        pin = SERVER_CORES if (self.pin and NCPU > 1) else None
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.app} died:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/api/v1/", timeout=1, trust_env=False).status_code < 500:
                    if self.workers == 1 or len(self.worker_processes()) >= self.workers:
                        time.sleep(0.3 if self.workers == 1 else 1.5)
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server {self.app} not ready:\n{self.log_path.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root] + root.children(recursive=True)

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: uvicorn's spawned workers when --workers > 1."""
        procs = self.processes()
        if self.workers > 1:
            return [p for p in procs[1:] if "resource_tracker" not in " ".join(p.cmdline())]
        return procs[:1]

    def rss_bytes(self) -> int:
        """VmRSS (from /proc/<pid>/status) summed over the serving processes."""
        total = 0
        for proc in self.worker_processes():
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.worker_processes():
            times = proc.cpu_times()
            total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q):
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 3)}
