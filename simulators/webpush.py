"""A local Web Push service, as a browser vendor runs one (RFC 8030), for tests, the demo and
the browser companion's end-to-end test. An ASGI application under `/simulator/webpush/`
(mounted by simulators.asgi in the embedded default; `FakeWebPush` runs it on its own port).

It plays both sides a real push service joins:

- the browser's: `POST /simulator/webpush/subscriptions` mints a subscription as
  `PushManager.subscribe` would: → 201 `{"id", "endpoint", "keys": {"p256dh", "auth"}}`. It
  keeps the private half of the P-256 key pair and the auth secret, and DECRYPTS what it
  receives (RFC 8291, aes128gcm: RFC 8188), as the browser would;
- the push service's: `POST /simulator/webpush/push/{id}` (the endpoint) refuses as real
  services do: unknown id 404; deleted 410; no or a bad `Authorization: vapid t=…, k=…`
  401 (RFC 8292: an ES256 JWT signed by k, `aud` this origin, `exp` present and at most 24
  hours ahead, `sub` present); no `TTL` 400 (RFC 8030 §5.2); a `Content-Encoding` other
  than aes128gcm 415; a body over 4096 bytes 413 (§7.2); an `Urgency` other than very-low,
  low, normal, high 400 (§5.3); a `Topic` over 32 characters or outside base64url 400
  (§5.4); a body it cannot decrypt 400. Accepted: 201 with a `Location` (§5).

Reading what arrived: `GET /simulator/webpush/subscriptions/{id}/messages` → `[{received_at,
ttl, urgency, topic, payload (the decrypted JSON), vapid (the JWT's claims), replaced (a later
message of the same Topic came: a real service would not deliver this one if still queued)}]`;
`GET …/{id}/requests` → every request's `{received_at, status}`; `DELETE
/simulator/webpush/subscriptions/{id}` (later pushes: 410).

Scripted faults, like simulators.apns: `POST /simulator/webpush/rules` with `{"fail": 410|404|
429|500|503 (any status; a 3xx carries a Location), "id": …, "times": n, "retry_after": s}`
(no id: every subscription; no times: for good) or `{"delay_ms": …, "id": …}`;
`DELETE /simulator/webpush/rules`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from simulators.serving import ThreadedServer

PREFIX = "/simulator/webpush"
MAX_BODY = 4096
MAX_VAPID_SECONDS = 24 * 3600
URGENCIES = ("very-low", "low", "normal", "high")
TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PUSH = re.compile(r"^/push/(?P<id>[A-Za-z0-9_-]+)$")
_SUBSCRIPTION = re.compile(r"^/subscriptions/(?P<id>[A-Za-z0-9_-]+)(?P<rest>/messages|/requests)?$")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    text = text.strip().rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def decrypt(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """RFC 8291 §3 (and RFC 8188's aes128gcm records) from the user agent's side: the
    plaintext of a push message, ValueError if it is not one for this key and secret."""
    if len(body) < 21:
        raise ValueError("shorter than the aes128gcm header")
    salt, (rs,), idlen = body[:16], struct.unpack("!I", body[16:20]), body[20]
    as_public = body[21:21 + idlen]
    records = body[21 + idlen:]
    if idlen != 65 or rs < 18:
        raise ValueError("keyid is not the application server's P-256 public key")
    ua_public = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)
    try:
        sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    except ValueError as exc:
        raise ValueError("keyid is not a P-256 point") from exc
    ecdh_secret = private_key.exchange(ec.ECDH(), sender)
    ikm = _hkdf(auth_secret, ecdh_secret, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    plaintext = b""
    chunks = [records[i:i + rs] for i in range(0, len(records), rs)] or [b""]
    for sequence, chunk in enumerate(chunks):
        record_nonce = (int.from_bytes(nonce, "big") ^ sequence).to_bytes(12, "big")
        try:
            padded = AESGCM(cek).decrypt(record_nonce, chunk, None)
        except InvalidTag as exc:
            raise ValueError("cannot decrypt: not for this subscription's keys") from exc
        padded = padded.rstrip(b"\x00")
        last = sequence == len(chunks) - 1
        if not padded or padded[-1] != (2 if last else 1):
            raise ValueError("bad padding delimiter")
        plaintext += padded[:-1]
    return plaintext


@dataclass
class Subscription:
    id: str
    key: ec.EllipticCurvePrivateKey
    auth: bytes
    endpoint: str
    deleted: bool = False
    messages: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def public(self) -> dict:
        raw = self.key.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
        return {"id": self.id, "endpoint": self.endpoint, "keys": {"p256dh": b64url(raw), "auth": b64url(self.auth)}}


@dataclass
class Rule:
    id: int
    subscription: str | None
    fail: int | None = None
    delay_ms: float = 0
    times: int | None = None
    retry_after: float | None = None


class WebPushService:
    """The ASGI application (every path under PREFIX) and its state, usable from Python."""

    def __init__(self):
        self.lock = threading.Lock()
        self.subscriptions: dict[str, Subscription] = {}
        self.rules: list[Rule] = []
        self.rule_ids = itertools.count(1)

    # --- from Python ---

    def subscribe(self, origin: str) -> dict:
        """A new subscription whose endpoint is on `origin` (scheme://host:port)."""
        sid = uuid.uuid4().hex
        subscription = Subscription(sid, ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16),
                                    f"{origin.rstrip('/')}{PREFIX}/push/{sid}")
        with self.lock:
            self.subscriptions[sid] = subscription
        return subscription.public()

    def messages(self, sid: str) -> list[dict]:
        with self.lock:
            subscription = self.subscriptions.get(sid)
            return list(subscription.messages) if subscription else []

    def requests(self, sid: str) -> list[dict]:
        with self.lock:
            subscription = self.subscriptions.get(sid)
            return list(subscription.requests) if subscription else []

    def delete(self, sid: str) -> bool:
        with self.lock:
            subscription = self.subscriptions.get(sid)
            if subscription is not None:
                subscription.deleted = True
            return subscription is not None

    def fail(self, status: int, sid: str | None = None, times: int | None = None,
             retry_after: float | None = None) -> int:
        return self._add_rule(Rule(next(self.rule_ids), sid, fail=status, times=times, retry_after=retry_after))

    def delay(self, ms: float, sid: str | None = None, times: int | None = None) -> int:
        return self._add_rule(Rule(next(self.rule_ids), sid, delay_ms=ms, times=times))

    def clear_rules(self) -> None:
        with self.lock:
            self.rules.clear()

    def reset(self) -> None:
        with self.lock:
            self.rules.clear()
            self.subscriptions.clear()

    def _add_rule(self, rule: Rule) -> int:
        with self.lock:
            self.rules.append(rule)
        return rule.id

    def _rule_for(self, sid: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.subscription in (None, sid):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self.rules.remove(rule)
                    return rule
        return None

    # --- ASGI ---

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        path = path[len(PREFIX):] if path.startswith(PREFIX) else path
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if len(body) > 64 * 1024 or not event.get("more_body"):
                break
        origin = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        status, answer, extra = await self.handle(method, path, headers, body, origin)
        payload = b"" if answer is None else json.dumps(answer).encode()
        out = [(b"content-type", b"application/json")] if answer is not None else []
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status,
                    "headers": out + [(b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def handle(self, method: str, path: str, headers: dict, body: bytes, origin: str):
        if path == "/subscriptions" and method == "POST":
            return 201, self.subscribe(origin), {}
        if path == "/rules" and method == "POST":
            try:
                spec = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "not JSON"}, {}
            if "fail" in spec:
                rule = self.fail(int(spec["fail"]), spec.get("id"), spec.get("times"), spec.get("retry_after"))
            elif "delay_ms" in spec:
                rule = self.delay(float(spec["delay_ms"]), spec.get("id"), spec.get("times"))
            else:
                return 400, {"error": "a rule is {fail: status} or {delay_ms: ms}"}, {}
            return 201, {"rule": rule}, {}
        if path == "/rules" and method == "DELETE":
            self.clear_rules()
            return 204, None, {}
        match = _SUBSCRIPTION.match(path)
        if match:
            sid, rest = match["id"], match["rest"]
            if sid not in self.subscriptions:
                return 404, {"error": "no such subscription"}, {}
            if method == "GET" and rest == "/messages":
                return 200, self.messages(sid), {}
            if method == "GET" and rest == "/requests":
                return 200, self.requests(sid), {}
            if method == "DELETE" and not rest:
                self.delete(sid)
                return 204, None, {}
            return 405, {"error": "method not allowed"}, {}
        match = _PUSH.match(path)
        if match:
            if method != "POST":
                return 405, {"error": "method not allowed"}, {}
            status, answer, extra = await self.push(match["id"], headers, body, origin)
            subscription = self.subscriptions.get(match["id"])
            if subscription is not None:
                with self.lock:
                    subscription.requests.append({"received_at": time.time(), "status": status})
            return status, answer, extra
        return 404, {"error": "not found"}, {}

    async def push(self, sid: str, headers: dict, body: bytes, origin: str):
        subscription = self.subscriptions.get(sid)
        if subscription is None:
            return 404, {"error": "no such subscription"}, {}
        rule = self._rule_for(sid)
        if rule is not None and rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        if rule is not None and rule.fail:
            extra = {"retry-after": str(rule.retry_after)} if rule.retry_after is not None else {}
            if 300 <= rule.fail < 400:  # a redirect, to see that senders do not follow it
                extra["location"] = f"{origin}{PREFIX}/push/redirected-{sid}"
            return rule.fail, {"error": f"scripted {rule.fail}"}, extra
        if subscription.deleted:
            return 410, {"error": "subscription expired or removed"}, {}
        claims = self.check_vapid(headers.get("authorization", ""), origin)
        if isinstance(claims, str):
            return 401, {"error": claims}, {}
        ttl = headers.get("ttl")
        if ttl is None or not ttl.isdigit():
            return 400, {"error": "TTL header missing or not a number"}, {}
        encoding = headers.get("content-encoding", "")
        if encoding.lower() != "aes128gcm":
            return 415, {"error": "Content-Encoding must be aes128gcm"}, {}
        if len(body) > MAX_BODY:
            return 413, {"error": f"payload over {MAX_BODY} bytes"}, {}
        urgency = headers.get("urgency", "normal")
        if urgency not in URGENCIES:
            return 400, {"error": "Urgency must be very-low, low, normal or high"}, {}
        topic = headers.get("topic")
        if topic is not None and not TOPIC.match(topic):
            return 400, {"error": "Topic must be 1-32 characters of base64url"}, {}
        try:
            plaintext = decrypt(body, subscription.key, subscription.auth)
            payload = json.loads(plaintext)
        except ValueError as exc:
            return 400, {"error": f"undecryptable: {exc}"}, {}
        message_id = uuid.uuid4().hex
        message = {"id": message_id, "received_at": time.time(), "ttl": int(ttl), "urgency": urgency,
                   "topic": topic, "payload": payload, "vapid": claims}
        with self.lock:
            if topic is not None:  # RFC 8030 §5.4: it replaces an undelivered one of the same topic
                for earlier in subscription.messages:
                    if earlier["topic"] == topic:
                        earlier["replaced"] = True
            subscription.messages.append({**message, "replaced": False})
        return 201, None, {"location": f"{origin}{PREFIX}/messages/{message_id}"}

    @staticmethod
    def check_vapid(authorization: str, origin: str) -> dict | str:
        """The JWT's claims, or why the header is refused (RFC 8292 §3 and §4.2)."""
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() != "vapid":
            return "Authorization is not vapid t=…, k=…"
        params = {}
        for part in rest.split(","):
            name, _, value = part.strip().partition("=")
            params[name.strip()] = value.strip()
        if not params.get("t") or not params.get("k"):
            return "vapid needs t and k"
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(params["k"]))
            claims = jwt.decode(params["t"], key, algorithms=["ES256"], audience=origin,
                                options={"require": ["exp", "aud", "sub"]})
        except (ValueError, jwt.PyJWTError) as exc:
            return f"vapid token refused: {exc}"
        if claims["exp"] > time.time() + MAX_VAPID_SECONDS:
            return "exp more than 24 hours ahead"
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            return "sub is not a mailto: or https: URL"
        return {**claims, "k": params["k"].rstrip("=")}


class FakeWebPush:
    """WebPushService on a port of its own (uvicorn in a thread), for tests in this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.service = WebPushService()
        self.host = host
        self._serving = ThreadedServer(self.service, host, port, name="fakewebpush")
        self.port = self._serving.port

    @property
    def url(self) -> str:
        return self._serving.url

    def start(self, timeout: float = 10.0) -> FakeWebPush:
        self._serving.start(timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._serving.stop(timeout)

    def subscribe(self) -> dict:
        return self.service.subscribe(self.url)

    def messages(self, sid: str) -> list[dict]:
        return self.service.messages(sid)

    def requests(self, sid: str) -> list[dict]:
        return self.service.requests(sid)

    def fail(self, status: int, sid: str | None = None, times: int | None = None,
             retry_after: float | None = None) -> int:
        return self.service.fail(status, sid, times, retry_after)

    def delay(self, ms: float, sid: str | None = None, times: int | None = None) -> int:
        return self.service.delay(ms, sid, times)

    def delete(self, sid: str) -> bool:
        return self.service.delete(sid)

    def reset(self) -> None:
        self.service.reset()
