"""A local APNs-compatible server for tests, the demo and the benchmarks, speaking
Apple's provider API over HTTP/2 (its frames and HPACK written at the end of this module,
on an asyncio Protocol; checked against h2 and hpack by the tests): h2c with
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
it; a stream opened beyond the limit is reset with REFUSED_STREAM, never processed.
`peak_streams`: the most requests in progress at once on one connection; `connections`:
how many were made. As any HTTP/2 server must (RFC 9113 §8.1.1, §8.2), it resets a
malformed request's stream (PROTOCOL_ERROR: an upper-case or invalid field name, a
pseudo-header missing, repeated or after a regular field, a connection-specific field, a
content-length the body does not match) and ends the connection with GOAWAY on a frame
that breaks the protocol (a bad header block: COMPRESSION_ERROR).

`latency_ms` (and scripted delays) count from when the request's bytes were read, as a
network's round trip would. `connect_latency_ms` (0 by default) holds a new connection's
first flight back that long (the TLS ServerHello, or over h2c the server's SETTINGS): the
round trip of a handshake with a server that far away (TCP's own is not modelled).
Requests that arrive together and wait the same time share one timer; answers ready in
one loop iteration go out in one write; a provider token that checked out is not verified
again (its age is checked every time), and the body of a fan-out is parsed once.

Over HTTP/2 (`curl --http2-prior-knowledge`, or `curl --http2 --cacert CA` with
`--tls`) when run as `python manage.py fakeapns`: GET /_fake (counts), GET /_fake/requests
(`?from=N`: from the N-th on), DELETE /_fake (reset), DELETE /_fake/rules (the rules only),
POST /_fake/rules {"fail": "Unregistered", "token": "…", "times": 1} or {"delay_ms": 500}.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import ipaddress
import itertools
import json
import os
import re
import ssl
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


@dataclass(slots=True)
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
                 first_max_streams: int | None = None, connect_latency_ms: float = 0):
        self.host, self.port = host, port
        self.tls = tls
        self.ca_file: Path | None = Path(ca_file) if ca_file else None
        self._ssl: ssl.SSLContext | None = None
        self.team_id, self.key_id, self.bundle_id = team_id, key_id, bundle_id
        self.latency_ms = latency_ms
        # A new connection's round trip: its first flight (TLS ServerHello, or our SETTINGS
        # over h2c) leaves this long after the client's (0: at once).
        self.connect_latency_ms = connect_latency_ms
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
        # The last body and the JSON it holds (records share it: they are read-only).
        self._last_body: bytes | None = None
        self._last_payload: dict | None = None
        self._connections: set[ServerConnection | _Held] = set()  # open, to close at stop()
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
            if self.connect_latency_ms:
                self._server = self._loop.run_until_complete(self._loop.create_server(
                    lambda: _Held(self), self.host, self.port))
            else:
                self._server = self._loop.run_until_complete(self._loop.create_server(
                    lambda: ServerConnection(self), self.host, self.port, ssl=self._ssl))
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
            for connection in list(self._connections):
                connection.abort()
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
        if body == self._last_body:  # a fan-out: the same payload to every token
            payload = self._last_payload
        else:
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                payload = None
            self._last_body, self._last_payload = body, payload
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


# --- HTTP/2 (RFC 9113) and HPACK (RFC 7541), the server's side ----------------------------------
#
# Written here rather than on the `h2` state machine, whose per-stream Python (event objects,
# state transitions, header validation, HPACK) held the whole benchmark to ~3,000 requests a
# second on one core. Checked against h2 and hpack themselves: httpx (control paths),
# aioapns (django-push-notifications) and raw h2 clients speak to it in the tests.

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
MAX_WINDOW = 2**31 - 1
WINDOW = 65535           # our receive windows (connection and stream), replenished as read
FRAME_SIZE = 16384       # the largest frame we accept
MAX_HEADER_LIST = 65536  # SETTINGS_MAX_HEADER_LIST_SIZE we announce (h2's default)
ANSWERS_PER_WRITE = 16   # answers due at once go out in writes of this many
_FRAME = struct.Struct(">HBBBL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")

_STATIC = tuple((name.encode(), value.encode()) for name, value in (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", "")))
_STATIC_NAME = {name: index for index, (name, _) in reversed(list(enumerate(_STATIC, 1)))}
_STATUS_INDEX = {200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14}
# RFC 7541 Appendix B, the Huffman code's length in bits per symbol (0-255, then EOS) as
# chr(48 + bits); the code is canonical, so these define it.
_HUFFMAN_BITS = (
    "=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=67777777777777777777777878=C=>6?5656566"
    "6577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGFFHEFGGEEFEGFGGDFFFGFFGJJDCFGFIJJJKKJH"
    "ICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN")
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
_INDEX_RUN = re.compile(rb"[\x80-\xfe]+")  # one-byte indexed fields (RFC 7541 §6.1)
_TOKEN_NAME = re.compile(rb"^:?[!#$%&'*+\-.^_`|~0-9a-z]+$")  # lower-case field names (RFC 9113 §8.2.1)


class CompressionError(Exception):
    pass


class _Huffman:
    """The decoder as a state machine fed 4 bits at a time: `steps[state * 16 + nibble]` is
    (next state, decoded bytes), or None where EOS would be decoded; `final[state]`: the
    string may end there (padding of at most 7 bits, all 1s)."""

    steps: list | None = None
    final: list[bool] = []

    @classmethod
    def decode(cls, data: bytes) -> bytes:
        if cls.steps is None:
            cls._build()
        steps, state, out = cls.steps, 0, bytearray()
        for byte in data:
            for nibble in (byte >> 4, byte & 0x0F):
                step = steps[state * 16 + nibble]
                if step is None:
                    raise CompressionError("EOS in a Huffman string")
                state, decoded = step
                out += decoded
        if not cls.final[state]:
            raise CompressionError("bad Huffman padding")
        return bytes(out)

    @classmethod
    def _build(cls) -> None:
        bits = [ord(c) - 48 for c in _HUFFMAN_BITS]
        tree: list[list] = [[None, None]]  # internal nodes: child = node number, or ("leaf", symbol)
        all_ones = [0]
        code, last = -1, min(bits)
        for symbol in sorted(range(257), key=lambda s: (bits[s], s)):
            code = (code + 1) << (bits[symbol] - last)
            last = bits[symbol]
            node = 0
            for position in reversed(range(bits[symbol])):
                bit = code >> position & 1
                if position == 0:
                    tree[node][bit] = ("leaf", symbol)
                    break
                if tree[node][bit] is None:
                    tree.append([None, None])
                    all_ones.append(all_ones[node] + 1 if bit and all_ones[node] >= 0 else -1)
                    tree[node][bit] = len(tree) - 1
                node = tree[node][bit]
        steps: list = []
        for node in range(len(tree)):
            for nibble in range(16):
                state, decoded, ok = node, bytearray(), True
                for position in (3, 2, 1, 0):
                    child = tree[state][nibble >> position & 1]
                    if isinstance(child, tuple):
                        if child[1] == 256:
                            ok = False
                            break
                        decoded.append(child[1])
                        state = 0
                    else:
                        state = child
                steps.append((state, bytes(decoded)) if ok else None)
        cls.final = [0 <= ones <= 7 for ones in all_ones]
        cls.steps = steps


def _hpack_int(value: int, bits: int, flags: int = 0) -> bytes:
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(value: bytes) -> bytes:
    return _hpack_int(len(value), 7) + value


class RequestDecoder:
    """HPACK decoding of the requests' header blocks, dynamic table included (4096 bytes,
    the default SETTINGS_HEADER_TABLE_SIZE, which we do not change)."""

    def __init__(self, limit: int = 4096):
        self.limit = self.max_size = limit
        self.table: collections.deque[tuple[bytes, bytes]] = collections.deque()  # newest first
        self.size = 0
        # Runs of one-byte indexes (a client's shared headers) → their fields, while the table
        # stays as it is.
        self.runs: dict[bytes, tuple[list[tuple[bytes, bytes]], int]] = {}  # … and their size

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        pos, end, total = 0, len(block), 0
        while pos < end:
            first = block[pos]
            if first & 0x80 and first != 0xFF:  # indexed fields, one byte each (the usual case)
                run = _INDEX_RUN.match(block, pos).group()
                known = self.runs.get(run)
                if known is None:
                    entries = [self._entry(byte & 0x7F) for byte in run]
                    known = (entries, sum(len(name) + len(value) + 32 for name, value in entries))
                    if len(self.runs) < 1024:
                        self.runs[run] = known
                fields += known[0]
                total += known[1]
                pos += len(run)
                continue
            if first & 0x80:  # indexed field, a longer index
                index, pos = self._int(block, pos, 7)
                field_ = self._entry(index)
            elif first & 0x40 or not first & 0x20:  # literal: incremental indexing (6-bit index), or not (4-bit)
                indexing = bool(first & 0x40)
                index = first & (0x3F if indexing else 0x0F)
                if index == (0x3F if indexing else 0x0F):
                    index, pos = self._int(block, pos, 6 if indexing else 4)
                else:
                    pos += 1
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._str(block, pos)
                value, pos = self._str(block, pos)
                field_ = (name, value)
                if indexing:
                    self._insert(name, value)
            else:  # dynamic table size update, before any field
                if fields:
                    raise CompressionError("table size update after a field")
                size, pos = self._int(block, pos, 5)
                if size > self.limit:
                    raise CompressionError("table size update over the limit")
                self.max_size = size
                self._shrink(0)
                continue
            total += len(field_[0]) + len(field_[1]) + 32
            fields.append(field_)
        if total > MAX_HEADER_LIST:
            raise CompressionError("header list too long")
        return fields

    @staticmethod
    def _int(block: bytes, pos: int, bits: int) -> tuple[int, int]:
        limit = (1 << bits) - 1
        value, pos = block[pos] & limit, pos + 1
        if value < limit:
            return value, pos
        for shift in range(0, 35, 7):
            if pos >= len(block):
                break
            byte, pos = block[pos], pos + 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
        raise CompressionError("bad integer")

    def _str(self, block: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(block):
            raise CompressionError("truncated block")
        if block[pos] < 0x7F:  # raw, its length in one byte
            end = pos + 1 + block[pos]
            if end > len(block):
                raise CompressionError("truncated string")
            return block[pos + 1:end], end
        huffman = block[pos] & 0x80
        length, pos = self._int(block, pos, 7)
        if pos + length > len(block):
            raise CompressionError("truncated string")
        raw = block[pos:pos + length]
        return (_Huffman.decode(raw) if huffman else raw), pos + length

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 1 <= index <= len(_STATIC):
            return _STATIC[index - 1]
        if 0 <= index - len(_STATIC) - 1 < len(self.table):
            return self.table[index - len(_STATIC) - 1]
        raise CompressionError(f"no entry {index}")

    def _insert(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self.max_size:
            self.table.clear()
            self.size = 0
            self.runs.clear()
            return
        self._shrink(size)
        self.table.appendleft((name, value))
        self.size += size
        self.runs.clear()  # every dynamic index moved

    def _shrink(self, room: int) -> None:
        while self.table and self.size + room > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32
            self.runs.clear()


_LEGAL_VALUE = re.compile(rb"^[^\0\r\n]*$")


def _malformed(fields: list[tuple[bytes, bytes]], checked: set, layouts: dict) -> str | None:
    """Why a request's header list is malformed (RFC 9113 §8.1.1, §8.2, §8.3.1), or None.
    `checked`: fields found valid on this connection; `layouts`: the verdict on each
    sequence of names seen (pseudo-headers first, once each, the required ones present;
    no connection-specific field)."""
    for field_ in fields:
        if field_ not in checked:
            name, value = field_
            if not _TOKEN_NAME.match(name):
                return f"field name {name!r}"
            if not _LEGAL_VALUE.match(value):
                return f"field value of {name.decode()}"
            if name == b":path":
                if not value:
                    return "empty :path"
            elif len(checked) < 4096:
                checked.add(field_)
            if name == b"te" and value != b"trailers":
                return "te other than trailers"
    names = tuple([name for name, _ in fields])
    problem = layouts.get(names, "")
    if problem == "":
        problem = _layout(names)
        if len(layouts) < 256:
            layouts[names] = problem
    return problem


def _layout(names: tuple[bytes, ...]) -> str | None:
    pseudo: set[bytes] = set()
    regular = False
    for name in names:
        if name[0] == 0x3A:  # ':'
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                return f"pseudo-header {name.decode()} out of place"
            pseudo.add(name)
        else:
            regular = True
            if name in _CONNECTION_HEADERS:
                return f"connection-specific field {name.decode()}"
    if not {b":method", b":scheme", b":path"} <= pseudo:
        return "a pseudo-header missing"
    return None


class _Strings(dict):
    """Header fields (bytes) → (name, value) as str; the ones that repeat are kept."""

    def __missing__(self, field_: tuple[bytes, bytes]) -> tuple[str, str]:
        pair = (field_[0].decode("ascii"), field_[1].decode("utf-8", "replace"))
        if field_[0] != b":path" and len(self) < 4096:
            self[field_] = pair
        return pair


class _Violation(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class _Held(asyncio.Protocol):
    """A new connection, unread for `connect_latency_ms` (the network's round trip before
    the server's first flight), then TLS (or h2c) as usual."""

    def __init__(self, fake: FakeAPNs):
        self.fake = fake
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.fake._connections.add(self)
        transport.pause_reading()  # the ClientHello (or preface) waits in the socket
        loop = asyncio.get_running_loop()
        loop.call_later(self.fake.connect_latency_ms / 1000, lambda: loop.create_task(self._go(transport)))

    def abort(self) -> None:
        self.transport.abort()

    async def _go(self, transport) -> None:
        self.fake._connections.discard(self)
        if transport.is_closing():
            return
        protocol = ServerConnection(self.fake)
        if self.fake._ssl is None:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            transport.resume_reading()
            return
        try:
            secure = await asyncio.get_running_loop().start_tls(transport, protocol, self.fake._ssl,
                                                                server_side=True, ssl_handshake_timeout=10)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            transport.abort()
            return
        protocol.connection_made(secure)

    def data_received(self, data: bytes) -> None:
        pass  # never: reading is paused until the connection is handed over

    def connection_lost(self, exc) -> None:
        self.fake._connections.discard(self)


class ServerConnection(asyncio.Protocol):
    """One HTTP/2 connection to the fake: frames in, requests judged by `FakeAPNs`, answers out
    (those ready in one loop iteration in one write). Requests that arrive together and wait
    the same latency share one timer."""

    def __init__(self, fake: FakeAPNs):
        self.fake = fake
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.inbox = b""
        self.preface = False
        self.decoder = RequestDecoder()
        self.checked: set[tuple[bytes, bytes]] = set()  # header fields found valid
        self.layouts: dict[tuple, str | None] = {}  # sequences of field names and what is wrong with them
        self.strings = _Strings()  # header fields as str
        self.receiving: dict[int, list] = {}  # stream → [headers, body chunks, bytes since WINDOW_UPDATE]
        self.in_progress: set[int] = set()  # requests received, not yet answered
        self.last_stream = 0
        self.header_block: list | None = None  # [stream, END_STREAM, fragments] until END_HEADERS
        self.max_streams = fake.first_max_streams or fake.max_streams
        self.raised = fake.first_max_streams is None
        self.initial_window = 65535  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = 16384       # the client's SETTINGS_MAX_FRAME_SIZE
        self.send_window = 65535     # the connection's, for our DATA
        self.stream_windows: dict[int, int] = {}  # stream → its window minus initial_window
        self.unsent: dict[int, bytes] = {}  # stream → answer body waiting for a window
        self.received = 0  # DATA bytes on the connection since our last WINDOW_UPDATE
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closed = False
        self.first_block = True  # our first header block announces an empty dynamic table
        self.batch: dict[float, list] = {}  # this read's requests to answer after a delay, by delay
        self.timers: set[asyncio.TimerHandle] = set()

    # --- asyncio.Protocol ---

    def connection_made(self, transport) -> None:
        self.transport = transport
        with self.fake._lock:
            self.fake.connections += 1
        self.fake._connections.add(self)
        self.out.append(self._frame(SETTINGS, 0, 0, _SETTING.pack(SETTINGS_MAX_CONCURRENT_STREAMS, self.max_streams)
                                    + _SETTING.pack(SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST)))
        self.flush()
        if self.inbox:
            early, self.inbox = self.inbox, b""
            self.data_received(early)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.fake._connections.discard(self)
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.transport is None:  # TLS started by start_tls: bytes may come before connection_made
            self.inbox += data
            return
        # The added latency stands for the network's round trip: it counts from when these
        # bytes were read, not from when this one thread got through the requests before.
        arrived = self.loop.time()
        if self.inbox:
            data = self.inbox + data
        pos, end = 0, len(data)
        try:
            if not self.preface:
                if end < len(PREFACE):
                    self.inbox = data
                    return
                if not data.startswith(PREFACE):
                    raise _Violation(PROTOCOL_ERROR, "no client preface")
                self.preface, pos = True, len(PREFACE)
            while end - pos >= 9 and not self.closed:
                high, low, kind, flags, stream = _FRAME.unpack_from(data, pos)
                length = high << 8 | low
                if length > FRAME_SIZE:
                    raise _Violation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                payload = data[pos + 9:pos + 9 + length]
                pos += 9 + length
                stream &= 0x7FFFFFFF
                if self.header_block is not None and kind != CONTINUATION:
                    raise _Violation(PROTOCOL_ERROR, "header block not continued")
                if kind == HEADERS:
                    self._headers(stream, flags, payload)
                elif kind == DATA:
                    self._data(stream, flags, payload)
                elif kind == WINDOW_UPDATE:
                    self._window_update(stream, payload)
                elif kind == SETTINGS:
                    self._settings(stream, flags, payload)
                elif kind == RST_STREAM:
                    if len(payload) != 4 or not stream:
                        raise _Violation(FRAME_SIZE_ERROR if stream else PROTOCOL_ERROR, "bad RST_STREAM")
                    self.receiving.pop(stream, None)
                    self.in_progress.discard(stream)
                    self.unsent.pop(stream, None)
                    self.stream_windows.pop(stream, None)
                elif kind == PING:
                    if length != 8 or stream:
                        raise _Violation(FRAME_SIZE_ERROR if stream == 0 else PROTOCOL_ERROR, "bad PING")
                    if not flags & ACK:
                        self.out.append(self._frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    self.closed = True
                    self.transport.close()
                    return
                elif kind == CONTINUATION:
                    self._continuation(stream, flags, payload)
                elif kind == PUSH_PROMISE:
                    raise _Violation(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                # PRIORITY and unknown frame types: ignored
            self.inbox = data[pos:]
        except _Violation as violation:
            self.out.append(self._frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream, violation.code)))
            self.flush()
            self.close()
            return
        if self.received >= WINDOW // 2:
            self.out.append(self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received)))
            self.received = 0
        for delay, items in self.batch.items():
            holder: list = []
            timer = self.loop.call_at(arrived + delay / 1000, self._answer_batch, items, holder)
            holder.append(timer)
            self.timers.add(timer)
        self.batch.clear()
        self.flush()

    # --- frames in ---

    def _headers(self, stream: int, flags: int, payload: bytes) -> None:
        if not stream or not stream & 1:
            raise _Violation(PROTOCOL_ERROR, f"HEADERS on stream {stream}")
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _Violation(PROTOCOL_ERROR, "bad padding")
            payload = payload[1:len(payload) - payload[0]]
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream, flags & END_STREAM, payload)
        else:
            self.header_block = [stream, flags & END_STREAM, [payload]]

    def _continuation(self, stream: int, flags: int, payload: bytes) -> None:
        if self.header_block is None or self.header_block[0] != stream:
            raise _Violation(PROTOCOL_ERROR, "CONTINUATION out of place")
        self.header_block[2].append(payload)
        if sum(map(len, self.header_block[2])) > MAX_HEADER_LIST:
            raise _Violation(PROTOCOL_ERROR, "header block too long")
        if flags & END_HEADERS:
            _, end_stream, fragments = self.header_block
            self.header_block = None
            self._header_block(stream, end_stream, b"".join(fragments))

    def _header_block(self, stream: int, end_stream: int, block: bytes) -> None:
        try:
            fields = self.decoder.decode(block)
        except CompressionError as error:
            raise _Violation(COMPRESSION_ERROR, str(error)) from None
        receiving = self.receiving.get(stream)
        if receiving is not None:  # trailers
            if not end_stream:
                raise _Violation(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._complete(stream)
            return
        if stream <= self.last_stream:
            raise _Violation(STREAM_CLOSED if stream in self.in_progress else PROTOCOL_ERROR,
                             f"HEADERS on stream {stream}, not a new one")
        self.last_stream = stream
        if len(self.receiving) + len(self.in_progress) >= self.max_streams:
            self._reset(stream, REFUSED_STREAM)  # over SETTINGS_MAX_CONCURRENT_STREAMS: never processed
            return
        problem = _malformed(fields, self.checked, self.layouts)
        if problem is not None:
            self._reset(stream, PROTOCOL_ERROR)
            return
        headers = dict(map(self.strings.__getitem__, fields))
        self.receiving[stream] = [headers, [], 0]
        if end_stream:
            self._complete(stream)

    def _data(self, stream: int, flags: int, payload: bytes) -> None:
        self.received += len(payload)
        receiving = self.receiving.get(stream)
        if receiving is None:
            if not stream or stream > self.last_stream:
                raise _Violation(PROTOCOL_ERROR, f"DATA on stream {stream}, never opened")
            self._reset(stream, STREAM_CLOSED)
            return
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _Violation(PROTOCOL_ERROR, "bad padding")
            receiving[2] += len(payload)
            payload = payload[1:len(payload) - payload[0]]
        else:
            receiving[2] += len(payload)
        receiving[1].append(payload)
        if flags & END_STREAM:
            self._complete(stream)
        elif receiving[2] >= WINDOW // 2:
            self.out.append(self._frame(WINDOW_UPDATE, 0, stream, _U32.pack(receiving[2])))
            receiving[2] = 0

    def _window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _Violation(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream:
            if not increment or self.send_window + increment > MAX_WINDOW:
                raise _Violation(PROTOCOL_ERROR if not increment else FLOW_CONTROL_ERROR, "bad WINDOW_UPDATE")
            self.send_window += increment
        elif stream in self.in_progress or stream in self.receiving:
            self.stream_windows[stream] = self.stream_windows.get(stream, 0) + increment
        self._send_unsent()

    def _settings(self, stream: int, flags: int, payload: bytes) -> None:
        if stream:
            raise _Violation(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise _Violation(FRAME_SIZE_ERROR, "bad SETTINGS")
        for pos in range(0, len(payload), 6):
            setting, value = _SETTING.unpack_from(payload, pos)
            if setting == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _Violation(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                self.initial_window = value  # every stream's window moves with it
            elif setting == SETTINGS_MAX_FRAME_SIZE:
                if not 16384 <= value < 2**24:
                    raise _Violation(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.max_frame = value
            elif setting == SETTINGS_ENABLE_PUSH and value > 1:
                raise _Violation(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            # SETTINGS_HEADER_TABLE_SIZE: our answers never use the dynamic table (announced
            # empty in the first block); the others do not concern a server that never pushes.
        self.out.append(self._frame(SETTINGS, ACK, 0))
        self._send_unsent()

    # --- requests and answers ---

    def _complete(self, stream: int) -> None:
        headers, chunks, _ = self.receiving.pop(stream)
        body = b"".join(chunks)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) != len(body)):
            self._reset(stream, PROTOCOL_ERROR)
            return
        fake = self.fake
        self.in_progress.add(stream)
        if len(self.in_progress) > fake.peak_streams:
            fake.peak_streams = len(self.in_progress)
        method, path = headers.get(":method", ""), headers.get(":path", "")
        if path.startswith("/_fake"):
            self.answer(stream, *fake._control(method, path, body))
            return
        verdict = fake._decide(method, path, headers, body)
        if verdict.hang:
            holder: list = []
            timer = self.loop.call_later(verdict.delay_ms / 1000 + HANG_SECONDS, self._answer_batch,
                                         [(stream, verdict)], holder)
            holder.append(timer)
            self.timers.add(timer)
        elif verdict.delay_ms and verdict.failure is None:  # an HTTP/2 failure comes at once
            self.batch.setdefault(verdict.delay_ms, []).append((stream, verdict))
        else:
            self.finish(stream, verdict)

    def _answer_batch(self, items: list, holder: list) -> None:
        """Answer requests whose latency is over, written every ANSWERS_PER_WRITE answers so
        that the client reads the first while the server builds the next."""
        self.timers.discard(holder[0])
        for number, (stream, verdict) in enumerate(items, 1):
            if self.closed:
                return
            self.finish(stream, verdict)
            if not number % ANSWERS_PER_WRITE:
                self.flush()

    def finish(self, stream: int, verdict: Verdict) -> None:
        if verdict.failure is not None:
            self._transport_failure(stream, verdict.failure)
            return
        self.answer(stream, *self.fake._finish(verdict))  # recorded even if the client reset the stream

    def answer(self, stream: int, status: int, extra: dict, content: bytes) -> None:
        if self.closed or stream not in self.in_progress:
            return
        block = [b"\x20"] if self.first_block else []  # dynamic table size 0: we never index
        self.first_block = False
        if status == 200 and not content and extra.keys() == {"apns-id"}:  # the usual answer
            block.append(b"\x88\x10\x07apns-id" + _hpack_str(extra["apns-id"].encode()) + b"\x0f\x0d\x010")
            extra = {}
        else:
            index = _STATUS_INDEX.get(status)
            block.append(bytes((0x80 | index,)) if index else b"\x08" + _hpack_str(str(status).encode()))
            for name, value in extra.items():
                name_bytes, value_bytes = name.encode(), value.encode()
                if name == "apns-id":  # differs on every answer: never indexed (RFC 7541 §6.2.3)
                    block.append(b"\x10" + _hpack_str(name_bytes) + _hpack_str(value_bytes))
                else:
                    index = _STATIC_NAME.get(name_bytes)
                    block.append((_hpack_int(index, 4) if index else b"\x00" + _hpack_str(name_bytes))
                                 + _hpack_str(value_bytes))
            block.append(b"\x0f\x0d" + _hpack_str(str(len(content)).encode()))  # content-length (static name 28)
        self._send_headers(stream, b"".join(block), not content)
        if content:
            self.unsent[stream] = content
            self._send_unsent()
        else:
            self.in_progress.discard(stream)
            self.stream_windows.pop(stream, None)
        if status == 200 and not self.raised:
            self.raised = True
            self.max_streams = self.fake.max_streams
            self.out.append(self._frame(SETTINGS, 0, 0, _SETTING.pack(SETTINGS_MAX_CONCURRENT_STREAMS,
                                                                      self.max_streams)))
        self.schedule_flush()

    def _send_headers(self, stream: int, block: bytes, end_stream: bool) -> None:
        flags = END_STREAM if end_stream else 0
        size = self.max_frame
        if len(block) <= size:
            self.out.append(self._frame(HEADERS, flags | END_HEADERS, stream, block))
            return
        pieces = [block[i:i + size] for i in range(0, len(block), size)]
        self.out.append(self._frame(HEADERS, flags, stream, pieces[0]))
        for number, piece in enumerate(pieces[1:], 2):
            self.out.append(self._frame(CONTINUATION, END_HEADERS if number == len(pieces) else 0, stream, piece))

    def _send_unsent(self) -> None:
        """Answer bodies, as far as the connection's and their streams' windows allow."""
        for stream, content in list(self.unsent.items()):
            while content:
                window = self.initial_window + self.stream_windows.get(stream, 0)
                size = min(self.send_window, window, self.max_frame, len(content))
                if size <= 0:
                    break
                self.out.append(self._frame(DATA, END_STREAM if size == len(content) else 0, stream, content[:size]))
                self.send_window -= size
                self.stream_windows[stream] = self.stream_windows.get(stream, 0) - size
                content = content[size:]
            if content:
                self.unsent[stream] = content
            else:
                del self.unsent[stream]
                self.in_progress.discard(stream)
                self.stream_windows.pop(stream, None)
        self.schedule_flush()

    def _transport_failure(self, stream: int, failure: str) -> None:
        if self.closed:
            return
        if failure == "drop":
            self.abort()
            return
        if failure == "goaway":
            # the stream before this one is the last processed; the requests in progress get no answer
            self.out.append(self._frame(GOAWAY, 0, 0, _GOAWAY.pack(stream - 2 if stream > 2 else 0, NO_ERROR)))
            self.flush()
            self.close()
            return
        self._reset(stream, REFUSED_STREAM if failure == "refused" else INTERNAL_ERROR)
        self.schedule_flush()

    def _reset(self, stream: int, code: int) -> None:
        self.receiving.pop(stream, None)
        self.in_progress.discard(stream)
        self.unsent.pop(stream, None)
        self.stream_windows.pop(stream, None)
        self.out.append(self._frame(RST_STREAM, 0, stream, _U32.pack(code)))

    # --- out ---

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return _FRAME.pack(len(payload) >> 8, len(payload) & 0xFF, kind, flags, stream) + payload

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.closed:
            data = b"".join(self.out)
            self.out.clear()
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
