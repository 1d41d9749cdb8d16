"""A local APNs-compatible server for tests, the demo and the benchmarks, speaking
Apple's provider API over HTTP/2, built on the `h2` library directly on asyncio: h2c with
prior knowledge (plain TCP, no TLS) by default, or with `tls=True` over TLS 1.2+ offering
ALPN `h2`, as Apple's servers do, with a certificate for 127.0.0.1 and localhost issued at
start by a throwaway CA whose PEM is written where the caller asks (`ca_file`; a client
trusts it through APNS_CA_FILE, or SSL_CERT_FILE for one that only reads the default trust
store). A TLS client that offers no ALPN is spoken HTTP/2 all the same: aioapns offers none
and works against Apple's servers. The checks below are the same in both modes.

`POST /3/device/{hex token}` with Apple's request headers. Like APNs it answers 200 with
an `apns-id` header, or a status, `apns-id` and `{"reason": "…"}` (plus `timestamp` for
410). It refuses, as Apple documents:

- no `authorization: bearer …` (403 MissingProviderToken); a JWT not signed with the key
  it generated, or of another key id or team (403 InvalidProviderToken); one issued
  more than an hour ago (403 ExpiredProviderToken);
- a method other than POST (405 MethodNotAllowed), another path (404 BadPath);
- no or a wrong `apns-topic` (400 MissingTopic / 400 TopicDisallowed), a `voip` push
  whose topic does not end in `.voip` or an `alert` push whose topic does (400
  DeviceTokenNotForTopic), an unknown `apns-push-type` (400 InvalidPushType; Apple requires
  the header for watchOS only and recommends it for iOS, so a request without it is taken
  as `voip` on the `.voip` topic and `alert` on the others: django-push-notifications'
  aioapns path cannot set it), a priority other than 5, 10 or 1 (400 BadPriority), an
  `apns-expiration` that is not a number (400 BadExpirationDate), an `apns-collapse-id`
  over 64 bytes (400 BadCollapseId);
- a token that is not hex (400 BadDeviceToken), an empty or non-JSON body (400
  PayloadEmpty / BadMessageId…: 400 PayloadEmpty), a payload over 5120 bytes for VoIP or
  4096 for others (413 PayloadTooLarge).

Failures are scripted as rules (`fail(reason, token=…, times=…)`, `delay(ms, token=…)`),
like simulators.fcm's: `Unregistered` (410), `BadDeviceToken`, `DeviceTokenNotForTopic`
(400), `ExpiredProviderToken` (403), `TooManyRequests` (429), `InternalServerError`
(500), `ServiceUnavailable` (503), and `timeout` (no answer until the client gives up);
and HTTP/2 failures, at once when the request arrives, not recorded: `reset` (RST_STREAM
INTERNAL_ERROR), `refused` (RST_STREAM REFUSED_STREAM), `goaway` (GOAWAY naming the
previous stream as the last processed, then the connection closes: the requests in
progress get no answer) and `drop` (the connection closed with no word).
Every answered request is recorded (`requests()`, `accepted()`), headers and JWT included.

SETTINGS_MAX_CONCURRENT_STREAMS is `max_streams` (1000); with `first_max_streams`, that
lower limit holds until a push is accepted on the connection, then a SETTINGS frame raises
it (h2 refuses a client that opens more). `peak_streams`: the most requests in progress at
once on one connection; `connections`: how many were made. Answers ready in one loop
iteration go out in one write; a provider token that checked out is not verified again
(its age is checked every time).

Over HTTP/2 (`curl --http2-prior-knowledge`, or `curl --http2 --cacert CA` with
`--tls`) when run as `python manage.py fakeapns`: GET /_fake (counts), GET /_fake/requests
(`?from=N`: from the N-th on), DELETE /_fake (reset), DELETE /_fake/rules (the rules only),
POST /_fake/rules {"fail": "Unregistered", "token": "…", "times": 1} or {"delay_ms": 500}.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import json
import os
import re
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hpack import NeverIndexedHeaderTuple

DEFAULT_TEAM = "CALLPULL01"
DEFAULT_KEY_ID = "FAKEKEY001"
DEFAULT_BUNDLE = "org.callpull.app"
TOKEN_MAX_AGE_SECONDS = 3600
HANG_SECONDS = 60.0
VOIP_LIMIT, OTHER_LIMIT = 5120, 4096
_PATH = re.compile(r"^/3/device/(?P<token>[^/]*)$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
PUSH_TYPES = {"alert", "background", "voip", "location", "complication", "fileprovider", "mdm",
              "liveactivity", "pushtotalk", "widgets", "controls"}
FAILURES = {"Unregistered": 410, "BadDeviceToken": 400, "DeviceTokenNotForTopic": 400,
            "ExpiredProviderToken": 403, "TooManyRequests": 429, "InternalServerError": 500,
            "ServiceUnavailable": 503, "timeout": 0,
            # HTTP/2 itself: RST_STREAM (INTERNAL_ERROR / REFUSED_STREAM) instead of an answer;
            # GOAWAY naming the stream before this one as the last processed, then the
            # connection closes; the connection dropped with no word.
            "reset": 0, "refused": 0, "goaway": 0, "drop": 0}
TRANSPORT_FAILURES = frozenset({"reset", "refused", "goaway", "drop"})
MAX_STREAMS = 1000  # SETTINGS_MAX_CONCURRENT_STREAMS once a push is accepted on the connection


def write_key(path: str | Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A fresh P-256 key as a .p8 file (PKCS#8 PEM, as Apple's download is)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path, key


def issue_certificate(ca_file: str | Path) -> ssl.SSLContext:
    """A throwaway CA (its PEM written to `ca_file`) and a server certificate it signs for
    127.0.0.1 and localhost; returns the server's TLS context: TLS 1.2 or later, ALPN `h2`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callpull fake APNs CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = Path(ca_file)
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    # load_cert_chain reads files: the key lives on disk only for that call.
    with tempfile.TemporaryDirectory(prefix="fake-apns-tls-") as folder:
        chain = Path(folder) / "server.pem"
        with open(os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
            out.write(leaf.public_bytes(serialization.Encoding.PEM))
        context.load_cert_chain(chain)
    return context


@dataclass
class Rule:
    fail: str | None = None
    delay_ms: float = 0
    token: str | None = None
    times: int | None = None
    id: int = 0

    def __post_init__(self):
        if self.fail is None and not self.delay_ms:
            raise ValueError("A rule needs fail or delay_ms")
        if self.fail is not None and self.fail not in FAILURES:
            raise ValueError(f"Unknown failure {self.fail!r}; one of {', '.join(FAILURES)}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the server will answer one push request, decided when it arrives."""
    token: str
    headers: dict
    payload: dict | None
    status: int
    reason: str | None
    apns_id: str
    bearer: str
    delay_ms: float
    hang: bool  # a scripted timeout: no answer for HANG_SECONDS (then 503)
    failure: str | None = None  # a scripted HTTP/2 failure instead of an answer (TRANSPORT_FAILURES)


@dataclass(frozen=True)
class Received:
    token: str
    headers: dict
    payload: dict | None
    status: int
    reason: str | None
    apns_id: str
    received_at: float
    jwt: str = field(default="", repr=False)

    @property
    def accepted(self) -> bool:
        return self.status == 200


class FakeAPNs:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, team_id: str = DEFAULT_TEAM,
                 key_id: str = DEFAULT_KEY_ID, bundle_id: str = DEFAULT_BUNDLE, latency_ms: float = 0,
                 tls: bool = False, ca_file: str | Path | None = None, max_streams: int = MAX_STREAMS,
                 first_max_streams: int | None = None):
        self.host, self.port = host, port
        self.tls = tls
        self.ca_file: Path | None = Path(ca_file) if ca_file else None
        self._ssl: ssl.SSLContext | None = None
        self.team_id, self.key_id, self.bundle_id = team_id, key_id, bundle_id
        self.latency_ms = latency_ms
        # SETTINGS_MAX_CONCURRENT_STREAMS: `first_max_streams` (when set) until a push is
        # accepted on the connection, then `max_streams` (a SETTINGS frame raising it).
        self.max_streams, self.first_max_streams = max_streams, first_max_streams
        self.peak_streams = 0  # the most requests in progress at once on one connection
        self.connections = 0
        self.public_key = None
        self.key_file: Path | None = None
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._records: list[Received] = []
        self._ids = itertools.count(1)
        self._id_prefix, self._answers = str(uuid.uuid4()).upper()[:24], itertools.count(1)
        # Provider tokens whose signature, key id and team checked out, by their exact text:
        # (claims' iat), so a token is verified once, not on every request; its age is
        # checked on every request all the same.
        self._verified: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # --- set-up ---

    def write_key(self, path: str | Path) -> Path:
        self.key_file, key = write_key(path)
        self.public_key = key.public_key()
        self._verified = {}
        return self.key_file

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def settings(self) -> dict:
        """What a server needs to send to this fake (APNS_* settings; with TLS, APNS_CA_FILE
        to trust its certificate)."""
        values = {"APNS_KEY_FILE": str(self.key_file), "APNS_KEY_ID": self.key_id, "APNS_TEAM_ID": self.team_id,
                  "APNS_BUNDLE_ID": self.bundle_id, "APNS_ENDPOINT": self.url}
        if self.tls:
            values["APNS_CA_FILE"] = str(self.ca_file)
        return values

    def start(self, timeout: float = 10.0) -> FakeAPNs:
        ready = threading.Event()
        if self.tls and self._ssl is None:
            if self.ca_file is None:
                self.ca_file = Path(tempfile.mkdtemp(prefix="fake-apns-")) / "ca.pem"
            self._ssl = issue_certificate(self.ca_file)

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, self.port, ssl=self._ssl))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-apns", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("fake APNs did not start")
        return self

    def serve_forever(self) -> None:
        if self._thread is None:
            self.start()
        self._thread.join()

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None:
            return

        async def close_all() -> None:
            # Close every connection while the loop runs (a TLS transport left to the
            # garbage collector would try to shut down on a closed loop).
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)
        try:
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> FakeAPNs:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- control ---

    def fail(self, reason: str, *, token: str | None = None, times: int | None = None) -> Rule:
        return self.add_rule(Rule(fail=reason, token=token, times=times))

    def delay(self, ms: float, *, token: str | None = None, times: int | None = None) -> Rule:
        return self.add_rule(Rule(delay_ms=ms, token=token, times=times))

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
        return rule

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._records.clear()
        self.latency_ms = 0

    def clear_rules(self) -> None:
        """The scripted failures and delays only (records and latency stay)."""
        with self._lock:
            self._rules.clear()

    def requests(self, token: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._records if token is None or r.token == token]

    def accepted(self, token: str | None = None) -> list[Received]:
        return [r for r in self.requests(token) if r.accepted]

    def _pick(self, token: str) -> tuple[Rule | None, float]:
        fail, delay = None, self.latency_ms
        with self._lock:
            for rule in list(self._rules):
                if rule.token not in (None, token):
                    continue
                if rule.fail is not None and fail is not None:
                    continue
                if rule.fail is not None:
                    fail = rule
                else:
                    delay += rule.delay_ms
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
        return fail, delay

    # --- the protocol ---

    def _check_jwt(self, authorization: str) -> tuple[str | None, str]:
        if not authorization.lower().startswith("bearer "):
            return "MissingProviderToken", ""
        token = authorization[7:].strip()
        iat = self._verified.get(token)
        if iat is not None:
            if time.time() - iat > TOKEN_MAX_AGE_SECONDS:
                return "ExpiredProviderToken", token
            return None, token
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"],
                                options={"verify_iat": False, "require": ["iss", "iat"]})
        except jwt.PyJWTError:
            return "InvalidProviderToken", token
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            return "InvalidProviderToken", token
        if not isinstance(claims["iat"], int) or time.time() - claims["iat"] > TOKEN_MAX_AGE_SECONDS:
            return "ExpiredProviderToken", token
        if len(self._verified) >= 1024:
            self._verified = {}
        self._verified[token] = claims["iat"]
        return None, token

    def _judge(self, method: str, path: str, headers: dict, body: bytes) -> tuple[str, int, str | None, dict | None,
                                                                                  str]:
        """(token, status, reason, payload, jwt) of one request, before scripted rules."""
        match = _PATH.match(path)
        token = match["token"] if match else ""
        if match is None:
            return token, 404, "BadPath", None, ""
        if method != "POST":
            return token, 405, "MethodNotAllowed", None, ""
        problem, bearer = self._check_jwt(headers.get("authorization", ""))
        if problem:
            return token, 403, problem, None, bearer
        topic = headers.get("apns-topic")
        push_type = headers.get("apns-push-type") or ("voip" if (topic or "").endswith(".voip") else "alert")
        if push_type not in PUSH_TYPES:
            return token, 400, "InvalidPushType", None, bearer
        if not topic:
            return token, 400, "MissingTopic", None, bearer
        if topic not in (self.bundle_id, self.bundle_id + ".voip"):
            return token, 400, "TopicDisallowed", None, bearer
        if (push_type == "voip") != topic.endswith(".voip"):
            return token, 400, "DeviceTokenNotForTopic", None, bearer
        if headers.get("apns-priority", "10") not in ("10", "5", "1"):
            return token, 400, "BadPriority", None, bearer
        if not headers.get("apns-expiration", "0").isdigit():
            return token, 400, "BadExpirationDate", None, bearer
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return token, 400, "BadCollapseId", None, bearer
        if not token or not _HEX.match(token) or len(token) < 64:
            return token, 400, "BadDeviceToken", None, bearer
        if len(body) > (VOIP_LIMIT if push_type == "voip" else OTHER_LIMIT):
            return token, 413, "PayloadTooLarge", None, bearer
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return token, 400, "PayloadEmpty", None, bearer
        return token, 200, None, payload, bearer

    def _apns_id(self) -> str:
        """A fresh apns-id in UUID form: a random prefix per server and a counter (uuid4 for
        each answer costs the server more than the rest of its checks)."""
        return f"{self._id_prefix}{next(self._answers):012X}"

    def _decide(self, method: str, path: str, headers: dict, body: bytes) -> Verdict:
        """Apple's checks and the scripted rules of one push request: what to answer, after how long."""
        apns_id = headers.get("apns-id") or self._apns_id()
        token, status, reason, payload, bearer = self._judge(method, path, headers, body)
        rule, delay = self._pick(token) if status == 200 else (None, self.latency_ms)
        hang, failure = False, None
        if rule is not None:
            if rule.fail == "timeout":
                hang, status, reason = True, 503, "ServiceUnavailable"
            elif rule.fail in TRANSPORT_FAILURES:
                failure = rule.fail
            else:
                status, reason = FAILURES[rule.fail], rule.fail
        return Verdict(token, headers, payload, status, reason, apns_id, bearer, delay, hang, failure)

    def _finish(self, verdict: Verdict) -> tuple[int, dict, bytes]:
        """Record the answer (when it is given) and build it."""
        token, headers, payload, status, reason = (verdict.token, verdict.headers, verdict.payload, verdict.status,
                                                   verdict.reason)
        apns_id, bearer = verdict.apns_id, verdict.bearer
        record = Received(token=token, headers=dict(headers), payload=payload, status=status, reason=reason,
                          apns_id=apns_id, received_at=time.time(), jwt=bearer)
        with self._lock:
            self._records.append(record)
        if status == 200:
            return 200, {"apns-id": apns_id}, b""
        answer = {"reason": reason}
        if status == 410:
            answer["timestamp"] = int(time.time() * 1000)
        return status, {"apns-id": apns_id, "content-type": "application/json"}, json.dumps(answer).encode()

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, dict, bytes]:
        ok = {"content-type": "application/json"}
        if method == "GET" and path == "/_fake":
            with self._lock:
                counts = {"requests": len(self._records), "accepted": sum(r.accepted for r in self._records),
                          "rules": len(self._rules)}
            return 200, ok, json.dumps(counts).encode()
        if method == "DELETE" and path == "/_fake/rules":
            self.clear_rules()
            return 204, {}, b""
        if method == "GET" and (path == "/_fake/requests" or path.startswith("/_fake/requests?from=")):
            start = int(path.partition("=")[2] or 0) if path.partition("=")[2].isdigit() else 0
            # vars(), not asdict(): the records are read-only; no deep copy needed to list them.
            return 200, ok, json.dumps([{**vars(r), "jwt": ""} for r in self.requests()[start:]]).encode()
        if method == "DELETE" and path == "/_fake":
            self.reset()
            return 204, {}, b""
        if method == "POST" and path == "/_fake/rules":
            try:
                rule = self.add_rule(Rule(**json.loads(body)))
            except (ValueError, TypeError) as error:
                return 400, ok, json.dumps({"error": str(error)}).encode()
            return 201, ok, json.dumps(asdict(rule)).encode()
        return 404, ok, b'{"error": "unknown control path"}'

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        # Inbound headers are validated by h2 as any HTTP/2 server does; the answers' own
        # headers (built here) are not re-validated on the way out.
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.first_max_streams or self.max_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE})
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        with self._lock:
            self.connections += 1
        streams: dict[int, tuple[dict, bytearray]] = {}
        in_progress: set[int] = set()
        tasks: set[asyncio.Task] = set()
        timers: set[asyncio.TimerHandle] = set()
        window_opened = [asyncio.Event()]  # replaced each time the peer opens a flow-control window
        state = {"flush": False, "raised": self.first_max_streams is None, "closed": False}

        def flush() -> None:
            state["flush"] = False
            if not state["closed"]:
                data = conn.data_to_send()
                if data:
                    writer.write(data)

        def schedule_flush() -> None:
            # Answers ready in one loop iteration go out in one write.
            if not state["flush"]:
                state["flush"] = True
                loop.call_soon(flush)

        def close() -> None:
            state["closed"] = True
            writer.close()

        def response_headers(status: int, extra: dict, content: bytes) -> list:
            # apns-id differs on every answer: never indexed (HPACK, RFC 7541 §6.2.3), so it
            # does not churn the dynamic table.
            return [(":status", str(status)),
                    *((NeverIndexedHeaderTuple(k, v) if k == "apns-id" else (k, v)) for k, v in extra.items()),
                    ("content-length", str(len(content)))]

        def send(stream_id: int, status: int, extra: dict, content: bytes) -> bool:
            """Send an answer that fits the windows now; False if it must wait."""
            if state["closed"]:
                return True
            if content and len(content) > min(conn.local_flow_control_window(stream_id),
                                               conn.max_outbound_frame_size):
                return False
            conn.send_headers(stream_id, response_headers(status, extra, content), end_stream=not content)
            if content:
                conn.send_data(stream_id, content, end_stream=True)
            in_progress.discard(stream_id)
            schedule_flush()
            return True

        async def respond_later(stream_id: int, status: int, extra: dict, content: bytes) -> None:
            # A body larger than a frame or the peer's window (a long GET /_fake/requests)
            # goes in pieces as the peer opens its window.
            conn.send_headers(stream_id, response_headers(status, extra, content), end_stream=not content)
            schedule_flush()
            while content:
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(content))
                if size > 0:
                    conn.send_data(stream_id, content[:size], end_stream=size == len(content))
                    content = content[size:]
                    schedule_flush()
                    continue
                opened = window_opened[0]
                await asyncio.wait_for(opened.wait(), HANG_SECONDS)
            in_progress.discard(stream_id)

        def answer(stream_id: int, status: int, extra: dict, content: bytes) -> None:
            try:
                if not send(stream_id, status, extra, content):
                    spawn(respond_later(stream_id, status, extra, content))
                    return
                if status == 200 and not state["raised"]:
                    state["raised"] = True
                    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
            except h2.exceptions.ProtocolError:
                pass  # the client reset the stream or went away

        def transport_failure(stream_id: int, failure: str) -> None:
            if state["closed"]:
                return
            if failure == "drop":
                writer.transport.abort()
                state["closed"] = True
                return
            if failure == "goaway":
                conn.close_connection(last_stream_id=stream_id - 2 if stream_id > 2 else 0)
                flush()
                close()
                return
            code = h2.errors.ErrorCodes.REFUSED_STREAM if failure == "refused" else h2.errors.ErrorCodes.INTERNAL_ERROR
            try:
                conn.reset_stream(stream_id, code)
            except h2.exceptions.ProtocolError:
                pass
            in_progress.discard(stream_id)
            schedule_flush()

        def finish(stream_id: int, verdict: Verdict, timer=None) -> None:
            timers.discard(timer)
            if verdict.failure is not None:
                transport_failure(stream_id, verdict.failure)
                return
            answer(stream_id, *self._finish(verdict))

        def spawn(coroutine) -> None:
            task = asyncio.create_task(coroutine)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def hang_then_answer(stream_id: int, verdict: Verdict) -> None:
            await asyncio.sleep(verdict.delay_ms / 1000 + HANG_SECONDS)
            finish(stream_id, verdict)

        def request(stream_id: int, headers: dict, body: bytes) -> None:
            in_progress.add(stream_id)
            if len(in_progress) > self.peak_streams:
                self.peak_streams = len(in_progress)
            method, path = headers.get(":method", ""), headers.get(":path", "")
            if path.startswith("/_fake"):
                answer(stream_id, *self._control(method, path, body))
                return
            verdict = self._decide(method, path, headers, body)
            if verdict.hang:
                spawn(hang_then_answer(stream_id, verdict))
            elif verdict.delay_ms and verdict.failure is None:  # an HTTP/2 failure comes at once
                timer = loop.call_later(verdict.delay_ms / 1000, lambda: finish(stream_id, verdict, timer))
                timers.add(timer)
            else:
                finish(stream_id, verdict)

        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = ({k: v for k, v in event.headers}, bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):  # the request is complete
                        if event.stream_id in streams:
                            headers, body = streams.pop(event.stream_id)
                            request(event.stream_id, headers, bytes(body))
                    elif isinstance(event, h2.events.StreamReset):
                        streams.pop(event.stream_id, None)
                        in_progress.discard(event.stream_id)
                    elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        window_opened[0].set()
                        window_opened[0] = asyncio.Event()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                    if state["closed"]:
                        return
                flush()
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            state["closed"] = True
            for task in tasks:
                task.cancel()
            for timer in timers:
                timer.cancel()
            writer.close()
