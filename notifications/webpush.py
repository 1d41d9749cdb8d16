"""Web Push: the one module of the project that imports pywebpush (and py_vapid, which
signs VAPID tokens): `call.ringing`, `call.answered_elsewhere` and `call.ended` to the
push service of each browser device with a subscription, so the page's service worker
shows the call (and closes it) with the tab closed.

Pure transport, shaped like notifications.fcm and notifications.apns (the background
sender of notifications.pushloop): `send_many(pushes, on_result)` returns at once and
`on_result` gets one `PushResult` per push from a background thread; recording deliveries
and dropping dead subscriptions is notifications.push_results' job.

What the standards say, and how this module follows it (docs/PUSH.md cites them):

- The request (RFC 8030 §5): `POST {subscription endpoint}` with the message encrypted as
  RFC 8291 says (`Content-Encoding: aes128gcm`, RFC 8188; pywebpush's `WebPusher` with
  http_ece underneath), and `TTL` (§5.2) = whole seconds left in the ring window (0 at
  least: "deliver now or never"), `Urgency` (§5.3) `high` for `call.ringing` and `normal`
  for the rest, and `Topic` (§5.4) = the call id as base64url (22 characters, at most 32),
  so a later message of the same call replaces one still undelivered.
- VAPID (RFC 8292): `Authorization: vapid t=<JWT>, k=<public key>`; the JWT (ES256) has
  `aud` = the endpoint's origin, `exp` 12 hours ahead (at most 24 allowed), `sub` =
  VAPID_SUBJECT. One token per push service origin, reused until an hour before it expires.
- The answer: 201 Created (200/202 taken as well) accepted; 404 and 410 (§7.3: the
  subscription expired or was removed) drop the subscription at once; 429 and 5xx are
  retried (backoff 0.1 s doubling, with jitter, or the service's Retry-After) within the
  ring window; 400, 401, 403 and 413 are logged and not retried.
- A push service failing as a whole (5xx, 429, unreachable for BREAKER_THRESHOLD different
  subscriptions in a row) opens its circuit breaker (one per push service origin).

Concurrency: pywebpush encrypts (`WebPusher.encode`, what its `send_async` does first) and
the request goes over one connection pool per worker (notifications.httpclient, aiohttp), on
the pushloop's event loop, without following redirects (what `send_async` would do, which
follows them), through the proxy the environment names for the push service's origin
(HTTPS_PROXY, NO_PROXY: as FCM's requests). Measured against
simulators.webpush (docs/PUSH.md): faster than pywebpush's blocking `send` (requests) on a
thread pool, which also holds a thread per request.

The VAPID key: VAPID_PRIVATE_KEY_FILE (PEM, EC P-256). In the embedded default (no key
given, `VAPID_KEY_GENERATED`) it is generated on first use, written once with mode 0600, and
read back from then on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from py_vapid import Vapid02
from pywebpush import WebPusher, WebPushException

from devices.webpush import push_service_allowed
from notifications import httpclient, pushloop

log = logging.getLogger(__name__)

# The events a browser's service worker hears by Web Push: the ring, and what closes it.
EVENTS = frozenset({"call.ringing", "call.answered_elsewhere", "call.ended"})
MAX_IN_FLIGHT = 100
BACKOFF_SECONDS = 0.1
BREAKER_THRESHOLD = 5
BREAKER_OPEN_SECONDS = 0.25
BREAKER_MAX_OPEN_SECONDS = 2.0
# RFC 8030 §7.2: a push service must accept messages of up to 4096 bytes of body. The
# aes128gcm encoding adds a 86-byte header (one record), a delimiter byte and a 16-byte tag.
MAX_BODY_BYTES = 4096
MAX_PLAINTEXT_BYTES = MAX_BODY_BYTES - 86 - 1 - 16
VAPID_TOKEN_SECONDS = 12 * 3600      # RFC 8292 §2: exp at most 24 hours ahead
VAPID_REUSE_MARGIN_SECONDS = 3600    # a token is replaced this long before it expires
ACCEPTED = frozenset({200, 201, 202})
DROP_STATUSES = {404: "not_found", 410: "gone"}
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ERRORS_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 413: "too_large",
                    429: "rate_limited", 500: "internal", 502: "unavailable", 503: "unavailable",
                    504: "unavailable"}


def topic_for(collapse_key: str) -> str:
    """RFC 8030 §5.4's Topic for a call: at most 32 characters of the URL- and
    filename-safe base64 alphabet. A UUID is its 16 bytes (22 characters); anything else
    the first 24 bytes of its SHA-256 (32 characters)."""
    try:
        raw = uuid.UUID(collapse_key).bytes
    except ValueError:
        raw = hashlib.sha256(collapse_key.encode()).digest()[:24]
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Push:
    """One message to one browser subscription."""

    device_id: str                               # opaque here, echoed back in the result
    subscription: dict = field(hash=False)       # {endpoint, keys: {p256dh, auth}}
    payload: dict = field(hash=False)            # the message: JSON, encrypted on the way
    collapse_key: str                            # the call id (Topic)
    deadline: float                              # time.time() after which it is worthless
    urgency: str = "normal"                      # RFC 8030 §5.3: high for call.ringing

    def __post_init__(self):
        if not isinstance(self.subscription, dict) or not isinstance(self.subscription.get("endpoint"), str):
            raise ValueError("Push.subscription must be {endpoint, keys: {p256dh, auth}}")
        if self.urgency not in ("very-low", "low", "normal", "high"):
            raise ValueError(f"Urgency {self.urgency!r} is not one of RFC 8030's")
        if len(self.body) > MAX_PLAINTEXT_BYTES:
            raise ValueError(f"Web Push payload of {len(self.body)} bytes is over {MAX_PLAINTEXT_BYTES}")

    @property
    def endpoint(self) -> str:
        return self.subscription["endpoint"]

    @property
    def token(self) -> str:
        """The subscription's endpoint: what identifies it (push_results drops it by this)."""
        return self.endpoint

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()

    @property
    def topic(self) -> str:
        return topic_for(self.collapse_key)


@dataclass(frozen=True)
class PushResult:
    """The shape of notifications.fcm.PushResult, so notifications.push_results records all three."""

    push: Push
    ok: bool
    message_id: str | None  # the push message's URL (the answer's Location)
    error: str | None       # None on success, else gone, not_found, rate_limited, unavailable, …
    drop_token: bool        # the subscription is gone: forget it
    attempts: int
    sent_at: float | None


def enabled() -> bool:
    """Whether Web Push is on: a VAPID key configured (or generated: the embedded default)."""
    return bool(getattr(settings, "WEBPUSH_ENABLED", False) and settings.VAPID_PRIVATE_KEY_FILE)


def pushes_for(event_type: str, devices, *, data: dict, collapse_key: str, deadline: float,
               no_push=frozenset()) -> list[Push]:
    """The Web Push messages of an event: EVENTS only, to each device with a subscription
    whose endpoint is still on WEBPUSH_PUSH_SERVICES (the list may have shrunk since)."""
    if event_type not in EVENTS:
        return []
    urgency = "high" if event_type == "call.ringing" else "normal"
    pushes = []
    for device in devices:
        subscription = getattr(device, "webpush_subscription", None)
        if not subscription or device.pk in no_push:
            continue
        if not push_service_allowed(str(subscription.get("endpoint", ""))):
            log.warning("webpush push not sent device=%s: the endpoint is not on WEBPUSH_PUSH_SERVICES", device.pk)
            continue
        try:
            pushes.append(Push(device_id=str(device.pk), subscription=subscription, payload=dict(data),
                               collapse_key=collapse_key, deadline=deadline, urgency=urgency))
        except ValueError as error:
            log.warning("webpush push not built event=%s device=%s: %s", event_type, device.pk, error)
    return pushes


def send_many(pushes: Iterable[Push], on_result: Callable[[PushResult], None]) -> None:
    """Start sending every push and return at once; `on_result` once per push, from a
    background thread, in completion order."""
    pushes = list(pushes)
    if not pushes:
        return
    if not enabled():
        raise RuntimeError("Web Push is off: no VAPID key (check webpush.enabled() first)")
    SLOT.get().submit(pushes, on_result)


def start(timeout: float = 10.0) -> None:
    """Load (or generate) the VAPID key and start the sender now, so the first ring does
    not pay for them. Nothing happens when Web Push is off."""
    if enabled():
        SLOT.get()


def shutdown(timeout: float = 5.0) -> None:
    SLOT.shutdown(timeout)


# --- VAPID ------------------------------------------------------------------------------------

_key_lock = threading.Lock()


def load_private_key(path: str, generate: bool = False) -> ec.EllipticCurvePrivateKey:
    """The VAPID key from a PEM file (EC P-256). With `generate`, a missing file is
    created first: a new key, written once (never over another worker's) with mode 0600."""
    file = Path(path)
    with _key_lock:
        if generate and not file.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            file.parent.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another worker wrote it first: read theirs
            else:
                with os.fdopen(descriptor, "wb") as out:
                    out.write(pem)
                log.info("webpush: generated a VAPID key in %s", file)
        key = serialization.load_pem_private_key(file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"VAPID key {path} is not an EC P-256 private key")
    return key


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The applicationServerKey: base64url (no padding) of the 65-byte uncompressed point."""
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def vapid_key() -> ec.EllipticCurvePrivateKey:
    """The configured VAPID key (generated in the embedded default). Web Push must be on."""
    return load_private_key(settings.VAPID_PRIVATE_KEY_FILE, generate=bool(settings.VAPID_KEY_GENERATED))


def vapid_public_key() -> str | None:
    """The applicationServerKey a page passes to `pushManager.subscribe`; None when off."""
    if not enabled():
        return None
    return public_key_b64(vapid_key())


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    netloc = parts.hostname or ""
    if parts.port is not None and parts.port != default:
        netloc = f"{netloc}:{parts.port}"
    return f"{parts.scheme}://{netloc}"


class Signer:
    """VAPID Authorization headers (RFC 8292 §3), one per push service origin, reused until
    VAPID_REUSE_MARGIN_SECONDS before they expire."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str):
        self.vapid = Vapid02(private_key=key)
        self.subject = subject
        self.tokens: dict[str, tuple[str, float]] = {}

    def authorization(self, endpoint: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        audience = origin_of(endpoint)
        cached = self.tokens.get(audience)
        if cached is not None and cached[1] - VAPID_REUSE_MARGIN_SECONDS > now:
            return cached[0]
        expires = int(now) + VAPID_TOKEN_SECONDS
        header = self.vapid.sign({"aud": audience, "exp": expires, "sub": self.subject})["Authorization"]
        self.tokens[audience] = (header, expires)
        return header


# --- the sender -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    key_file: str
    generated: bool
    subject: str
    http_timeout: float

    @classmethod
    def from_settings(cls) -> Config:
        return cls(str(settings.VAPID_PRIVATE_KEY_FILE), bool(settings.VAPID_KEY_GENERATED),
                   str(settings.VAPID_SUBJECT), float(settings.WEBPUSH_HTTP_TIMEOUT_SECONDS))


@dataclass(frozen=True)
class Answer:
    status: int = 0
    error: str | None = None
    location: str | None = None
    retry_after: float | None = None


class Breaker(pushloop.Breaker):
    """One push service failing as a whole (notifications.pushloop.Breaker, keyed by
    subscription endpoint)."""

    service = "the push service"

    def __init__(self, name: str):
        super().__init__(name, limits=sys.modules[__name__])


class Sender(pushloop.Sender):
    """The VAPID signer; the pushloop's loop with one connection pool (notifications.httpclient)."""

    name = "webpush"

    def __init__(self, config: Config):
        self.signer = Signer(load_private_key(config.key_file, generate=config.generated), config.subject)
        self.pool = httpclient.Pool(MAX_IN_FLIGHT)
        self.slots: asyncio.Semaphore | None = None
        self.breakers: dict[str, Breaker] = {}
        super().__init__(config)
        log.info("webpush sender started subject=%s", config.subject)

    def _start(self, pushes, on_result) -> None:
        if self.slots is None:  # on the sender's loop: asyncio.timeout bounds each request (_post)
            self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        super()._start(pushes, on_result)

    async def _aclose(self) -> None:
        await self.pool.close()

    def _unknown(self, push: Push) -> PushResult:
        return PushResult(push, False, None, "unknown", False, 0, None)

    def breaker(self, endpoint: str) -> Breaker:
        origin = origin_of(endpoint)
        if origin not in self.breakers:
            self.breakers[origin] = Breaker(f"webpush {origin}")
        return self.breakers[origin]

    async def _send(self, push: Push) -> PushResult:
        breaker = self.breaker(push.endpoint)
        attempts, error = 0, None
        while True:
            probe = await breaker.admit(push.deadline)
            if probe is None:
                return PushResult(push, False, None, error or breaker.error or "unavailable", False, attempts, None)
            if time.time() >= push.deadline:
                if probe:
                    breaker.probe_lost()
                return PushResult(push, False, None, error or "expired", False, attempts, None)
            try:
                answer = await self._post(push)
            except BaseException:
                if probe:
                    breaker.probe_lost()
                raise
            attempts += 1
            error = answer.error
            failed = answer.status in RETRY_STATUSES or error == "unavailable" or (probe and error == "timeout")
            verdict = (pushloop.FAILED if failed
                       else pushloop.UNKNOWN if error == "timeout" else pushloop.ANSWERED)
            breaker.verdict(push.endpoint, verdict, error, probe, answer.retry_after)
            if answer.status in ACCEPTED:
                return PushResult(push, True, answer.location, None, False, attempts, time.time())
            if answer.status in DROP_STATUSES:
                log.info("webpush subscription gone call=%s device=%s status=%s", push.collapse_key,
                         push.device_id, answer.status)
                return PushResult(push, False, None, error, True, attempts, None)
            if not (answer.status in RETRY_STATUSES or error in ("unavailable", "timeout")):
                log.warning("webpush push refused call=%s device=%s status=%s error=%s", push.collapse_key,
                            push.device_id, answer.status, error)
                return PushResult(push, False, None, error, False, attempts, None)
            delay = pushloop.retry_delay(answer.retry_after, attempts, BACKOFF_SECONDS)
            if time.time() + delay >= push.deadline:
                log.info("webpush push gave up call=%s device=%s error=%s attempts=%s", push.collapse_key,
                         push.device_id, error, attempts)
                return PushResult(push, False, None, error, False, attempts, None)
            await asyncio.sleep(delay)

    def headers(self, push: Push) -> dict[str, str]:
        return {"Authorization": self.signer.authorization(push.endpoint), "Urgency": push.urgency,
                "Topic": push.topic}

    async def _post(self, push: Push) -> Answer:
        """Encrypt (pywebpush's `WebPusher.encode`: RFC 8291, aes128gcm) and POST one message.
        Redirects are not followed: the request goes to the subscription's endpoint, which
        is on WEBPUSH_PUSH_SERVICES, and nowhere else."""
        now = time.time()
        headers = {**self.headers(push), "TTL": str(max(0, int(push.deadline - now))),
                   "Content-Encoding": "aes128gcm"}
        try:
            body = WebPusher(push.subscription).encode(push.body, "aes128gcm")["body"]
        except (WebPushException, ValueError, TypeError) as exc:
            log.warning("webpush push not encrypted call=%s device=%s: %s", push.collapse_key, push.device_id, exc)
            return Answer(error="bad_subscription")
        async with self.slots:
            try:
                async with asyncio.timeout(min(self.config.http_timeout, max(push.deadline - now, 0) + 0.05)):
                    reply = await self.pool.post(push.endpoint, body, headers, follow_redirects=False,
                                                 proxy=httpclient.proxy_for(push.endpoint))
            except TimeoutError:
                return Answer(error="timeout")
            except httpclient.Unreachable as exc:
                log.warning("webpush push service unreachable: %s", exc)
                return Answer(error="unavailable")
            except httpclient.BadReply as exc:
                log.warning("webpush push not sent call=%s device=%s: %s", push.collapse_key, push.device_id, exc)
                return Answer(error="unknown")
        status = reply.status
        if status in ACCEPTED:
            return Answer(status, location=reply.headers.get("Location"))
        error = DROP_STATUSES.get(status) or ERRORS_BY_STATUS.get(status) or f"http_{status}"
        retry_after = (pushloop.retry_after_seconds(reply.headers.get("Retry-After"))
                       if status in RETRY_STATUSES else None)
        return Answer(status, error, retry_after=retry_after)


SLOT: pushloop.Slot[Sender] = pushloop.Slot(Config.from_settings, lambda config: Sender(config))
