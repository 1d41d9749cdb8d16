"""A local FCM server for tests and the demo, speaking the real wire protocol.

Real firebase-admin works against it unchanged: point a service-account file's
`token_uri` at the fake (see `write_service_account`) and `FCM_ENDPOINT` at its URL.

- `POST /token`: the OAuth2 JWT-bearer grant google-auth makes for a service
  account; answers a bearer token valid for an hour.
- `POST /v1/projects/{project}/messages:send`: the FCM HTTP v1 send. Answers
  `{"name": "projects/{project}/messages/{id}"}`, or an error in FCM v1's shape
  (`{"error": {"code", "message", "status", "details": [FcmError …]}}`) so that
  firebase-admin raises the same exception class it would for real FCM. Like FCM
  it refuses (see `FakeFCM._send`):
  - a request without a bearer token it issued or signed by a key it wrote (401
    UNAUTHENTICATED), or for another project (403 PERMISSION_DENIED);
  - a body that is not JSON (`Content-Type` other than application/json, or not
    parseable) or not the v1 `SendMessageRequest` schema: unknown fields, wrong types,
    non-string data values, an `android.priority` not NORMAL/HIGH, an `android.ttl`
    that is not a Duration such as "30s" (400 INVALID_ARGUMENT with a
    google.rpc.BadRequest field violation, as FCM's documented example);
  - a message FCM cannot send: no target or more than one (token, topic, condition),
    an empty token, reserved data keys ("from", "gcm", "message_type", "notification",
    "google…", "gcm.…"), data over 4096 bytes (keys and values), a ttl over 4 weeks
    (400 INVALID_ARGUMENT with the FcmError errorCode INVALID_ARGUMENT as well).
  Any other path answers Google's HTML 404 page, not FCM's error JSON.

Every send request is recorded with its receive time. Failures are scripted as
rules: per token or for every token, forever or for the next N matching
requests, plus a latency added to every request.

Control, in-process (`FakeFCM(...).start()`, then `.fail()`, `.delay()`,
`.latency_ms`, `.messages()`, `.requests()`, `.reset()`, `.stop()`) or over HTTP
when run as `python manage.py fakefcm`:

    GET    /_fake/messages   accepted messages      DELETE /_fake/messages  forget them
    GET    /_fake/requests   every send request     DELETE /_fake           reset everything
    GET    /_fake/rules      scripted rules         DELETE /_fake/rules     drop them
    POST   /_fake/rules      {"fail": "unavailable", "token": "…", "times": 2, "retry_after": 1,
                              "event": "call.ringing"}   (event: only messages of that data type)
                             {"delay_ms": 500, "token": "…"}
    PUT    /_fake/latency    {"ms": 20}

Failure kinds (named like `notifications.fcm` errors): unregistered,
invalid_token, sender_id_mismatch, invalid_argument, third_party_auth,
quota_exceeded (429), internal (500), unavailable (503) (each with Retry-After
when `retry_after` is given), timeout (the request hangs until the client gives
up, at most HANG_SECONDS).

It runs on uvicorn (already the project's ASGI server), so hundreds of
concurrent requests, hung ones included, cost a coroutine each.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from simulators.serving import ThreadedServer

DEFAULT_PROJECT = "callpull-fake"
# A hung request is released after this long even if the client never gives up,
# so a forgotten rule cannot pin a connection for ever.
HANG_SECONDS = 60.0
TOKEN_LIFETIME_SECONDS = 3600
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_TTL = re.compile(r"^\d+(\.\d{1,9})?s$")
_RESERVED_DATA_KEYS = {"from", "gcm", "message_type", "notification"}
_RESERVED_DATA_PREFIXES = ("google", "gcm.")
MAX_DATA_BYTES = 4096  # keys and values of message.data, UTF-8
MAX_TTL_SECONDS = 4 * 7 * 24 * 3600
# The v1 schema (projects.messages.send): a field may be named in lowerCamelCase or as in
# the proto, as Google's JSON parser accepts both.
_REQUEST_FIELDS = {"message", "validate_only", "validateOnly"}
_MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "fcmOptions",
                   "token", "topic", "condition"}
_ANDROID_FIELDS = {"collapse_key", "collapseKey", "priority", "ttl", "restricted_package_name",
                   "restrictedPackageName", "data", "notification", "fcm_options", "fcmOptions", "direct_boot_ok",
                   "directBootOk"}
_ANDROID_PRIORITIES = {"NORMAL", "HIGH", 0, 1}
_RETRY_AFTER_FAILURES = {"quota_exceeded", "internal", "unavailable"}
# What Google's front end answers for a path it does not serve.
NOT_FOUND_HTML = (b"<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
                  b"<p><b>404.</b> <ins>That\xe2\x80\x99s an error.</ins><p>The requested URL was not found on "
                  b"this server. <ins>That\xe2\x80\x99s all we know.</ins>\n")

# kind -> (HTTP status, google.rpc status, message, FcmError errorCode or None)
FAILURES = {
    "unregistered": (404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
    "invalid_token": (400, "INVALID_ARGUMENT",
                      "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT"),
    "sender_id_mismatch": (403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
    "invalid_argument": (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT"),
    "third_party_auth": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service",
                         "THIRD_PARTY_AUTH_ERROR"),
    "quota_exceeded": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests'.",
                       "QUOTA_EXCEEDED"),
    "internal": (500, "INTERNAL", "Internal error encountered.", "INTERNAL"),
    "unavailable": (503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
    "timeout": None,
}


def fcm_error_body(status: int, rpc_status: str, message: str, error_code: str | None = None,
                   field_violations: list[dict] | None = None) -> dict:
    """An error body shaped like FCM HTTP v1's."""
    details = []
    if error_code:
        details.append({"@type": _FCM_ERROR, "errorCode": error_code})
    if field_violations:
        details.append({"@type": _BAD_REQUEST, "fieldViolations": field_violations})
    error = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return {"error": error}


def _failure_body(kind: str) -> tuple[int, dict]:
    status, rpc_status, message, error_code = FAILURES[kind]
    violations = None
    if kind == "invalid_token":
        violations = [{"field": "message.token", "description": "Invalid registration token"}]
    elif kind == "invalid_argument":
        violations = [{"field": "message.data", "description": "Invalid data payload."}]
    return status, fcm_error_body(status, rpc_status, message, error_code, violations)


def _unknown(name: str, where: str) -> tuple[str, str]:
    text = f'Invalid JSON payload received. Unknown name "{name}" at \'{where}\': Cannot find field.'
    return where, text


def _wrong_type(where: str, expected: str, value) -> tuple[str, str]:
    return where, f"Invalid value at '{where}' ({expected}), {json.dumps(value)}"


def _schema_problem(content_type: str, request) -> tuple[str, str] | None:
    """What Google's front end refuses before FCM sees the message: a body that is not
    JSON, or not the v1 schema (`SendMessageRequest`, `Message`, `AndroidConfig`).
    (field, description), or None."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return "", f"Invalid JSON payload received. Expected Content-Type application/json, not {content_type!r}."
    if not isinstance(request, dict):
        return "", "Invalid JSON payload received. Expected a JSON object."
    for name in request:
        if name not in _REQUEST_FIELDS:
            return _unknown(name, "")
    if "message" not in request:
        return "message", "Missing message."
    message = request["message"]
    if not isinstance(message, dict):
        return _wrong_type("message", "type.googleapis.com/google.firebase.fcm.v1.Message", message)
    for name, value in message.items():
        if name not in _MESSAGE_FIELDS:
            return _unknown(name, "message")
        if name in ("name", "token", "topic", "condition") and not isinstance(value, str):
            return _wrong_type(f"message.{name}", "TYPE_STRING", value)
        if name in ("notification", "android", "webpush", "apns", "fcm_options", "fcmOptions") \
                and not isinstance(value, dict):
            return _wrong_type(f"message.{name}", "TYPE_MESSAGE", value)
    data = message.get("data", {})
    if not isinstance(data, dict):
        return _wrong_type("message.data", "map", data)
    for index, value in enumerate(data.values()):
        if not isinstance(value, str):
            return _wrong_type(f"message.data[{index}].value", "TYPE_STRING", value)
    android = message.get("android", {})
    for name, value in android.items():
        where = f"message.android.{name}"
        if name not in _ANDROID_FIELDS:
            return _unknown(name, "message.android")
        if name in ("collapse_key", "collapseKey", "restricted_package_name", "restrictedPackageName") \
                and not isinstance(value, str):
            return _wrong_type(where, "TYPE_STRING", value)
        if name == "priority" and not (value in _ANDROID_PRIORITIES or
                                       (isinstance(value, str) and value.upper() in _ANDROID_PRIORITIES)):
            return _wrong_type(where, "TYPE_ENUM", value)
        if name == "ttl" and not (isinstance(value, str) and _TTL.match(value)):
            return _wrong_type(where, "type.googleapis.com/google.protobuf.Duration", value)
        if name == "data" and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            return _wrong_type(where, "map", value)
    return None


def _message_problem(message: dict) -> tuple[str, str] | None:
    """What FCM refuses in a well-formed message (INVALID_ARGUMENT): (field, description),
    or None."""
    targets = [name for name in ("token", "topic", "condition") if name in message]
    if not targets:
        return "message", "Recipient of the message is not set."
    if len(targets) > 1:
        return "message", f"Only one of token, topic or condition may be set, not {', '.join(targets)}."
    if "token" in message and not message["token"]:
        return "message.token", "The registration token is not a valid FCM registration token"
    data = message.get("data", {})
    for key in data:
        if key in _RESERVED_DATA_KEYS or key.startswith(_RESERVED_DATA_PREFIXES):
            return "message.data", f"Invalid data payload key: {key}"
    size = sum(len(key.encode()) + len(value.encode()) for key, value in data.items())
    if size > MAX_DATA_BYTES:
        return "message", f"Message is too big: {size} bytes of data, at most {MAX_DATA_BYTES}."
    ttl = message.get("android", {}).get("ttl")
    if ttl is not None and float(ttl[:-1]) > MAX_TTL_SECONDS:
        return "message.android.ttl", f"Invalid TTL: {ttl}, at most 4 weeks."
    return None


# A universe domain of our own keeps google-auth away from Google: for the default
# one (googleapis.com) it looks up a "regional access boundary" at
# iamcredentials.googleapis.com in the background after every token. With any other
# domain it skips that and signs its own JWT bearer tokens, which the fake verifies.
FAKE_UNIVERSE_DOMAIN = "fakefcm.invalid"


def write_service_account(path: str | Path, *, token_uri: str, project_id: str = DEFAULT_PROJECT,
                          client_email: str | None = None, on_key=None) -> Path:
    """Write a service-account JSON file with a freshly generated RSA key.

    It is what `FCM_CREDENTIALS_FILE` points at in tests and the demo; google-auth
    signs JWT bearer tokens with the key (see FAKE_UNIVERSE_DOMAIN). `on_key(email,
    public_key)` lets the fake learn the key it must accept.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    client_email = client_email or f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": client_email,
        "client_id": str(uuid.uuid4().int)[:21],
        "auth_uri": token_uri,
        "token_uri": token_uri,
        "universe_domain": FAKE_UNIVERSE_DOMAIN,
    }
    if on_key is not None:
        on_key(client_email, key.public_key())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    return path


@dataclass
class Rule:
    """A scripted behaviour: fail with `fail`, or add `delay_ms`, for `token` (None: every
    token) and for messages whose data `type` is `event` (None: every message), for the
    next `times` matching requests (None: for ever)."""

    fail: str | None = None
    delay_ms: float = 0
    token: str | None = None
    times: int | None = None
    retry_after: float | None = None
    event: str | None = None
    id: int = 0

    def __post_init__(self):
        if self.fail is None and not self.delay_ms:
            raise ValueError("A rule needs fail or delay_ms")
        if self.fail is not None and self.fail not in FAILURES:
            raise ValueError(f"Unknown failure {self.fail!r}; one of {', '.join(FAILURES)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1")

    def matches(self, token: str | None, event: str | None = None) -> bool:
        return (self.token is None or self.token == token) and (self.event is None or self.event == event)


@dataclass(frozen=True)
class Received:
    """One send request as the fake saw it."""

    project: str
    token: str | None
    message: dict
    received_at: float
    status: int
    error: str | None = None          # the scripted failure kind or FCM status, None when accepted
    message_id: str | None = None
    validate_only: bool = False
    headers: dict = field(default_factory=dict, compare=False)

    @property
    def accepted(self) -> bool:
        return self.status == 200


class FakeFCM:
    """The fake server. `start()` runs it in a background thread; `serve_forever()` in
    the foreground (the management command)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0,
                 project_id: str = DEFAULT_PROJECT):
        self.host = host
        self.project_id = project_id
        self._initial_latency_ms = latency_ms
        self.latency_ms = latency_ms
        self._lock = threading.Lock()
        self._records: list[Received] = []
        self._rules: list[Rule] = []
        self._rule_ids = itertools.count(1)
        self._issued_tokens: set[str] = set()
        self._keys: dict = {}
        self._verified: dict[str, float] = {}  # self-signed JWT → its expiry, once verified
        self._token_grants = 0
        self._release_generation = 0  # bumped to let hung requests go
        self._serving = ThreadedServer(self, host, port, name="fakefcm", backlog=4096, timeout_graceful_shutdown=1,
                                       timeout_keep_alive=30)
        self.port = self._serving.port

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._serving.url

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def start(self, timeout: float = 10.0) -> FakeFCM:
        self._serving.start(timeout)
        return self

    def serve_forever(self) -> None:
        self._serving.serve_forever()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._release_generation += 1
        self._serving.stop(timeout)

    def __enter__(self) -> FakeFCM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_credentials(self, path: str | Path) -> Path:
        """A service-account file whose token_uri is this server."""
        return write_service_account(path, token_uri=self.token_uri, project_id=self.project_id,
                                     on_key=self._accept_key)

    def _accept_key(self, client_email: str, public_key) -> None:
        self._keys[client_email] = public_key

    def _authorized(self, auth: str) -> bool:
        """An access token this server issued, or a JWT signed by a key it wrote."""
        if not auth.startswith("Bearer "):
            return False
        token = auth[len("Bearer "):]
        if token in self._issued_tokens:
            return True
        expires = self._verified.get(token)
        if expires is not None and expires > time.time():
            return True
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            key = self._keys.get(issuer)
            if key is None:
                return False
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"verify_aud": False})
        except jwt.PyJWTError:
            return False
        # Verified once, trusted until it expires, as FCM's front end caches tokens: an
        # RSA check per request made this fake, not the sender under test, the bottleneck.
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified[token] = float(claims.get("exp") or time.time() + 300)
        return True

    # --- scripting ---------------------------------------------------------------------

    def fail(self, kind: str, *, token: str | None = None, times: int | None = None,
             retry_after: float | None = None, event: str | None = None) -> Rule:
        """Answer matching send requests with the failure `kind` (see FAILURES)."""
        return self.add_rule(Rule(fail=kind, token=token, times=times, retry_after=retry_after, event=event))

    def delay(self, ms: float, *, token: str | None = None, times: int | None = None,
              event: str | None = None) -> Rule:
        """Add `ms` of latency to matching send requests, on top of `latency_ms`."""
        return self.add_rule(Rule(delay_ms=ms, token=token, times=times, event=event))

    def add_rule(self, rule: Rule) -> Rule:
        with self._lock:
            rule.id = next(self._rule_ids)
            self._rules.append(rule)
        return rule

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()
            self._release_generation += 1

    def clear_records(self) -> None:
        with self._lock:
            self._records.clear()

    def reset(self) -> None:
        """Forget records and rules, release hung requests, restore the start latency.
        Issued access tokens stay valid, as they would at Google."""
        with self._lock:
            self._records.clear()
            self._rules.clear()
            self._release_generation += 1
            self.latency_ms = self._initial_latency_ms

    # --- inspection --------------------------------------------------------------------

    def requests(self, token: str | None = None) -> list[Received]:
        """Every send request, in arrival order (optionally only those for `token`)."""
        with self._lock:
            return [r for r in self._records if token is None or r.token == token]

    def messages(self, token: str | None = None) -> list[Received]:
        """Accepted (delivered, not validate-only) messages, in arrival order."""
        return [r for r in self.requests(token) if r.accepted and not r.validate_only]

    @property
    def token_grants(self) -> int:
        """How many OAuth2 token grants were answered."""
        return self._token_grants

    # --- the ASGI application ------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/_fake" or path.startswith("/_fake/"):
            status, payload, extra = self._control(method, path.rstrip("/"), bytes(body))
        elif method == "POST" and path == "/token":
            status, payload, extra = await self._token(bytes(body))
        elif method == "POST" and _SEND_PATH.match(path):
            status, payload, extra = await self._send(_SEND_PATH.match(path)["project"], headers, bytes(body))
        else:
            status, payload, extra = 404, NOT_FOUND_HTML, {}
        if isinstance(payload, bytes):
            data, content_type = payload, b"text/html; charset=UTF-8"
        else:
            data, content_type = json.dumps(payload).encode(), b"application/json; charset=UTF-8"
        response_headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
        response_headers += [(k.encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})

    async def _latency(self, extra_ms: float = 0) -> None:
        total = self.latency_ms + extra_ms
        if total > 0:
            await asyncio.sleep(total / 1000)

    async def _token(self, body: bytes):
        await self._latency()
        form = parse_qs(body.decode("latin-1"))
        if form.get("grant_type") != [JWT_BEARER_GRANT] or not form.get("assertion"):
            return 400, {"error": "invalid_grant", "error_description": "Expected a JWT-bearer grant."}, {}
        token = f"fake-access-{uuid.uuid4().hex}"
        with self._lock:
            self._issued_tokens.add(token)
            self._token_grants += 1
        return 200, {"access_token": token, "expires_in": TOKEN_LIFETIME_SECONDS, "token_type": "Bearer"}, {}

    def _pick(self, token: str | None, event: str | None = None) -> tuple[Rule | None, float]:
        """The failure rule that applies to this request (consuming one of its times) and
        the extra delay of the delay rules that apply."""
        failure, delay_ms = None, 0.0
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(token, event):
                    continue
                if rule.fail is None:
                    delay_ms += rule.delay_ms
                elif failure is None:
                    failure = rule
                else:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
        return failure, delay_ms

    async def _hang(self) -> None:
        with self._lock:
            generation = self._release_generation
        limit = time.monotonic() + HANG_SECONDS
        while time.monotonic() < limit and self._release_generation == generation:
            await asyncio.sleep(0.05)

    async def _send(self, project: str, headers: dict, body: bytes):
        received_at = time.time()
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        message = request.get("message") if isinstance(request, dict) else None
        message = message if isinstance(message, dict) else {}
        token = message.get("token") if isinstance(message.get("token"), str) else None
        validate_only = bool(request.get("validate_only") or request.get("validateOnly")) \
            if isinstance(request, dict) else False

        status, payload, extra, error = 200, None, {}, None
        auth = headers.get("authorization", "")
        if not self._authorized(auth):
            status, error = 401, "UNAUTHENTICATED"
            payload = fcm_error_body(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. "
                                     "Expected OAuth 2 access token.")
        elif project != self.project_id:
            status, error = 403, "PERMISSION_DENIED"
            payload = fcm_error_body(403, "PERMISSION_DENIED", f"Permission denied on project {project}.")
        else:
            problem = _schema_problem(headers.get("content-type", ""), request)
            error_code = None
            if problem is None:
                problem, error_code = _message_problem(message), "INVALID_ARGUMENT"
            if problem:
                status, error = 400, "INVALID_ARGUMENT"
                payload = fcm_error_body(400, "INVALID_ARGUMENT", problem[1], error_code,
                                         [{"field": problem[0], "description": problem[1]}])

        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        rule, delay_ms = self._pick(token, data.get("type")) if status == 200 else (None, 0.0)
        if rule is not None:
            error = rule.fail
            if rule.fail == "timeout":  # answered only if the client is still waiting after the hang
                status, payload = 504, fcm_error_body(504, "DEADLINE_EXCEEDED", "Deadline exceeded.")
            else:
                status, payload = _failure_body(rule.fail)
                if rule.fail in _RETRY_AFTER_FAILURES and rule.retry_after is not None:
                    extra["Retry-After"] = f"{rule.retry_after:g}"
        message_id = None
        if status == 200:
            message_id = "fake_message_id" if validate_only else f"0:{time.time_ns() // 1000}%{uuid.uuid4().hex[:16]}"
            payload = {"name": f"projects/{project}/messages/{message_id}"}
        record = Received(project=project, token=token, message=message, received_at=received_at, status=status,
                          error=error, message_id=message_id, validate_only=validate_only,
                          headers={k: v for k, v in headers.items() if k != "authorization"})
        with self._lock:
            self._records.append(record)
        if error == "timeout":
            await self._hang()
        await self._latency(delay_ms)
        return status, payload, extra

    # --- control over HTTP ---------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes):
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "body must be JSON"}, {}
        if path == "/_fake" and method == "DELETE":
            self.reset()
            return 200, {"reset": True}, {}
        if path == "/_fake" and method == "GET":
            with self._lock:
                counts = {"requests": len(self._records), "rules": len(self._rules)}
            return 200, {"url": self.url, "project_id": self.project_id, "latency_ms": self.latency_ms,
                         "token_grants": self._token_grants, **counts}, {}
        if path in ("/_fake/messages", "/_fake/requests"):
            if method == "GET":
                records = self.messages() if path.endswith("messages") else self.requests()
                return 200, {path.rsplit("/", 1)[1]: [_record_json(r) for r in records]}, {}
            if method == "DELETE":
                self.clear_records()
                return 200, {"cleared": True}, {}
        if path == "/_fake/rules":
            if method == "GET":
                return 200, {"rules": [asdict(rule) for rule in self.rules()]}, {}
            if method == "DELETE":
                self.clear_rules()
                return 200, {"cleared": True}, {}
            if method == "POST":
                try:
                    rule = self.add_rule(Rule(
                        fail=payload.get("fail"), delay_ms=float(payload.get("delay_ms", 0)),
                        token=payload.get("token"), times=payload.get("times"),
                        retry_after=payload.get("retry_after"), event=payload.get("event")))
                except (ValueError, TypeError) as error:
                    return 400, {"error": str(error)}, {}
                return 201, {"rule": asdict(rule)}, {}
        if path == "/_fake/latency" and method in ("PUT", "POST"):
            try:
                self.latency_ms = max(0.0, float(payload["ms"]))
            except (KeyError, TypeError, ValueError):
                return 400, {"error": 'expected {"ms": number}'}, {}
            return 200, {"latency_ms": self.latency_ms}, {}
        return 404, {"error": f"No control route {method} {path}"}, {}


def _record_json(record: Received) -> dict:
    data = asdict(record)
    data["accepted"] = record.accepted
    return data
