"""Apple Push Notification service: the one module of the project that speaks APNs
(httpx over HTTP/2, with `h2`) and signs its provider tokens (PyJWT, ES256).

Pure transport, shaped like notifications.fcm: the caller hands over `Push`es and gets
one `PushResult` per push through `on_result`, from a background thread; recording
deliveries and dropping dead tokens is the caller's job (notifications.push_results).

What Apple documents, and how this module follows it (docs/PUSH.md cites the pages):

- The request: `POST {APNS_ENDPOINT}/3/device/{hex token}` over HTTP/2 with
  `authorization: bearer {JWT}`, `apns-push-type`, `apns-topic`, `apns-priority`,
  `apns-expiration` (epoch seconds; 0 = once only) and `apns-collapse-id` (at most 64
  bytes), and a JSON body of at most 5120 bytes for a VoIP push (4096 for others).
- `call.ringing` is a PushKit VoIP push: push type `voip`, topic `{bundle id}.voip`,
  priority 10, expiring at the end of the ring window, collapsing on the call id. iOS 13
  and later terminates an app that does not report a VoIP push to CallKit, so nothing else
  is ever sent as VoIP: other events go as `alert` pushes to the topic `{bundle id}`
  (`Push.voip` False).
- The provider token: an ES256 JWT, header `{"alg": "ES256", "kid": APNS_KEY_ID}`, claims
  `{"iss": APNS_TEAM_ID, "iat": now}`, signed with the .p8 key. Apple refuses one older
  than an hour (403 ExpiredProviderToken) and one replaced more often than every 20 minutes
  (429 TooManyProviderTokenUpdates): it is minted once and reused for
  TOKEN_LIFETIME_SECONDS (50 minutes), never replaced sooner, except once after APNs
  answers ExpiredProviderToken for it (and then not again for MIN_TOKEN_AGE_SECONDS).
- The answer: 200 with an `apns-id` header, or a status and `{"reason": "…"}`. 410
  Unregistered, 400 BadDeviceToken and 400 DeviceTokenNotForTopic drop the token; 429
  TooManyRequests and 500/503 are retried (backoff 0.1 s doubling, with jitter) until the
  push's deadline; anything else fails at once.
- APNs failing as a whole (500/503 or unreachable for BREAKER_THRESHOLD different
  tokens in a row) opens a circuit breaker: pushes wait while one probe finds out whether
  APNs is back (as notifications.fcm's breaker does).

Concurrency: one background thread runs an asyncio loop with one `httpx.AsyncClient`
(HTTP/2 only: one connection, each push a stream on it), so a worker holds one
connection to APNs, reused; a second thread calls `on_result`. `send_many` returns at once.
Against an `http://` endpoint (the local server of simulators.apns) HTTP/2 is spoken with
prior knowledge (h2c); against `https://` it is negotiated by ALPN.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
from django.conf import settings

log = logging.getLogger(__name__)

# Apple refuses a provider token older than an hour and one replaced within 20 minutes.
TOKEN_LIFETIME_SECONDS = 50 * 60
MIN_TOKEN_AGE_SECONDS = 20 * 60
VOIP_PAYLOAD_LIMIT = 5120
ALERT_PAYLOAD_LIMIT = 4096
MAX_COLLAPSE_ID_BYTES = 64
MAX_IN_FLIGHT = 500  # streams at once on the connection (APNs allows a few hundred to a thousand)
BACKOFF_SECONDS = 0.1
BREAKER_THRESHOLD = 5
BREAKER_OPEN_SECONDS = 0.25
BREAKER_MAX_OPEN_SECONDS = 2.0

# Apple's reasons (lowercased into errors) that mean the token will never work for this topic.
DROP_REASONS = frozenset({"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"})
RETRY_STATUSES = frozenset({429, 500, 503})


@dataclass(frozen=True)
class Push:
    """One notification to one device token."""

    device_id: str              # opaque to this module, echoed back in the result
    token: str                  # hex device token (PushKit's for `voip`)
    payload: dict = field(hash=False)  # the JSON body, `aps` included
    collapse_key: str           # apns-collapse-id: the call id
    deadline: float             # time.time() after which the push is worthless
    voip: bool = False          # a PushKit VoIP push (call.ringing only), else an alert push

    def __post_init__(self):
        if not isinstance(self.token, str) or not self.token:
            raise ValueError("Push.token must be a non-empty string")
        if len(self.collapse_key.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise ValueError("apns-collapse-id is at most 64 bytes")
        if len(self.body) > (VOIP_PAYLOAD_LIMIT if self.voip else ALERT_PAYLOAD_LIMIT):
            raise ValueError(f"APNs payload of {len(self.body)} bytes is over the limit")

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class PushResult:
    """The shape of notifications.fcm.PushResult, so notifications.push_results records both."""

    push: Push
    ok: bool
    message_id: str | None  # the apns-id APNs answered
    error: str | None       # None on success, else Apple's reason (or timeout, expired, unavailable)
    drop_token: bool
    attempts: int
    sent_at: float | None


def enabled() -> bool:
    """Whether APNs is configured (settings check that all five APNS_* are set or none)."""
    return bool(settings.APNS_KEY_FILE)


def topic(voip: bool) -> str:
    return f"{settings.APNS_BUNDLE_ID}.voip" if voip else settings.APNS_BUNDLE_ID


def send_many(pushes: Iterable[Push], on_result: Callable[[PushResult], None]) -> None:
    """Start sending every push and return at once; `on_result` once per push, from a
    background thread, in completion order."""
    pushes = list(pushes)
    if not pushes:
        return
    if not enabled():
        raise RuntimeError("APNs is off: APNS_KEY_FILE is not set (check apns.enabled() first)")
    _sender().submit(pushes, on_result)


def start(timeout: float = 10.0) -> None:
    """Build the sender (key, loop, client) and mint the provider token now, so the first
    ring does not pay for them. Nothing happens when APNs is off."""
    if enabled():
        sender = _sender()
        asyncio.run_coroutine_threadsafe(sender.ensure_token(), sender.loop).result(timeout)


def shutdown(timeout: float = 5.0) -> None:
    global _current
    with _lock:
        sender, _current = _current, None
    if sender is not None:
        sender.close(timeout)


@dataclass(frozen=True)
class Config:
    key_file: str
    key_id: str
    team_id: str
    endpoint: str
    http_timeout: float

    @classmethod
    def from_settings(cls) -> Config:
        return cls(str(settings.APNS_KEY_FILE), settings.APNS_KEY_ID, settings.APNS_TEAM_ID,
                   settings.APNS_ENDPOINT.rstrip("/"), float(settings.APNS_HTTP_TIMEOUT_SECONDS))


_lock = threading.Lock()
_current: Sender | None = None


def _sender() -> Sender:
    """The running sender for the current settings; a settings change (tests) replaces it."""
    global _current
    config = Config.from_settings()
    with _lock:
        if _current is not None and _current.config != config:
            _current.close(1.0)
            _current = None
        if _current is None:
            _current = Sender(config)
        return _current


atexit.register(shutdown, 1.0)


@dataclass(frozen=True)
class Answer:
    status: int = 0
    apns_id: str | None = None
    reason: str | None = None  # Apple's reason, or ours: timeout, unavailable, expired


class Breaker:
    """APNs failing as a whole: one wait for everyone (see notifications.fcm's breaker,
    whose rules this follows). Lives on the sender's loop."""

    def __init__(self):
        self.open_until: float | None = None
        self.delay = BREAKER_OPEN_SECONDS
        self.failing: set[str] = set()
        self.probing = False
        self.error: str | None = None
        self.changed = asyncio.Event()

    async def admit(self, until: float) -> bool | None:
        """True: send as the probe; False: send; None: `until` came first."""
        while self.open_until is not None:
            now = time.time()
            if now >= self.open_until and not self.probing:
                self.probing = True
                return True
            if now >= until:
                return None
            wake = until if self.probing else min(until, self.open_until)
            changed = self.changed
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    await changed.wait()
            except TimeoutError:
                pass
        return False

    def outcome(self, token: str, failed_service: bool, error: str | None, probe: bool) -> None:
        if failed_service:
            if probe:
                self._open(error, self.delay * 2)
            elif self.open_until is None:
                self.failing.add(token)
                if len(self.failing) >= BREAKER_THRESHOLD:
                    self._open(error, BREAKER_OPEN_SECONDS)
            return
        self.failing.clear()
        if self.open_until is not None:
            log.warning("apns circuit closed: APNs answers again")
            self.open_until, self.delay, self.probing, self.error = None, BREAKER_OPEN_SECONDS, False, None
            self._notify()

    def probe_lost(self) -> None:
        if self.probing:
            self.probing = False
            self._notify()

    def _open(self, error: str | None, delay: float) -> None:
        self.delay = min(max(delay, BREAKER_OPEN_SECONDS), BREAKER_MAX_OPEN_SECONDS)
        if self.open_until is None:
            log.warning("apns circuit open: APNs failing (%s); holding pushes %.2fs", error, self.delay)
        self.open_until, self.error, self.probing = time.time() + self.delay, error, False
        self.failing.clear()
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Sender:
    """The signing key; a loop in a thread with one HTTP/2 client; a results thread."""

    def __init__(self, config: Config):
        self.config = config
        self.key = Path(config.key_file).read_text()
        self.token: str | None = None
        self.token_minted_at = 0.0
        self.forced_at = -float("inf")  # when a refused token was last replaced early
        self.tokens_minted = 0
        self.breaker: Breaker | None = None
        self.client: httpx.AsyncClient | None = None
        self.slots: asyncio.Semaphore | None = None
        self.tasks: set[asyncio.Task] = set()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self._run_loop, name="apns-sender", daemon=True)
        self.result_thread = threading.Thread(target=self._run_results, name="apns-results", daemon=True)
        self.loop_thread.start()
        self.result_thread.start()
        log.info("apns sender started endpoint=%s team=%s key=%s", config.endpoint, config.team_id, config.key_id)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _run_results(self) -> None:
        while (item := self.results.get()) is not None:
            on_result, result = item
            try:
                on_result(result)
            except Exception:
                log.exception("apns on_result failed call=%s device=%s", result.push.collapse_key,
                              result.push.device_id)

    def submit(self, pushes: list[Push], on_result) -> None:
        self.loop.call_soon_threadsafe(self._start, pushes, on_result)

    def close(self, timeout: float) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._drain(timeout), self.loop).result(timeout + 2)
        except Exception:
            log.exception("apns sender did not drain cleanly")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(timeout)
        if not self.loop_thread.is_alive():
            self.loop.close()
        self.results.put(None)
        self.result_thread.join(timeout)

    # --- on the loop ---

    def _ensure_loop_state(self) -> None:
        if self.client is None:
            # HTTP/2 only: on http:// with prior knowledge (h2c), on https:// by ALPN.
            self.client = httpx.AsyncClient(http1=False, http2=True, timeout=None,
                                            limits=httpx.Limits(max_connections=1))
            self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
            self.breaker = Breaker()

    def _start(self, pushes, on_result) -> None:
        self._ensure_loop_state()
        for push in pushes:
            task = self.loop.create_task(self._deliver(push, on_result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drain(self, timeout: float) -> None:
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    async def ensure_token(self, refused: str | None = None) -> str:
        """The provider token: minted once, reused TOKEN_LIFETIME_SECONDS. `refused`: APNs
        answered ExpiredProviderToken for that token; it is replaced at once if it is still
        the current one and no refused token was replaced in the last MIN_TOKEN_AGE_SECONDS."""
        now = time.time()
        replace = self.token is None or now - self.token_minted_at >= TOKEN_LIFETIME_SECONDS
        if refused is not None and refused == self.token and now - self.forced_at >= MIN_TOKEN_AGE_SECONDS:
            replace, self.forced_at = True, now
        if replace:
            self.token = jwt.encode({"iss": self.config.team_id, "iat": int(now)}, self.key, algorithm="ES256",
                                    headers={"kid": self.config.key_id})
            self.token_minted_at = now
            self.tokens_minted += 1
            log.info("apns provider token minted (%d so far)", self.tokens_minted)
        return self.token

    async def _deliver(self, push: Push, on_result) -> None:
        try:
            result = await self._send_with_retries(push)
        except asyncio.CancelledError:
            self.results.put((on_result, PushResult(push, False, None, "unknown", False, 0, None)))
            raise
        except Exception:
            log.exception("apns push crashed call=%s device=%s", push.collapse_key, push.device_id)
            result = PushResult(push, False, None, "unknown", False, 0, None)
        self.results.put((on_result, result))

    async def _send_with_retries(self, push: Push) -> PushResult:
        attempts, error = 0, None
        while True:
            probe = await self.breaker.admit(push.deadline)
            if probe is None:
                return PushResult(push, False, None, error or self.breaker.error or "unavailable", False,
                                  attempts, None)
            if time.time() >= push.deadline:
                if probe:
                    self.breaker.probe_lost()
                return PushResult(push, False, None, error or "expired", False, attempts, None)
            try:
                answer, made = await self._attempt(push)
            except BaseException:
                if probe:
                    self.breaker.probe_lost()
                raise
            attempts += made
            error = answer.reason
            service_failure = answer.status in RETRY_STATUSES or answer.reason == "unavailable"
            # 429 is about one device token ("too many requests for the same device token"):
            # retried, but it says nothing about APNs as a whole, so the breaker ignores it.
            self.breaker.outcome(push.token, service_failure and answer.status != 429, error, probe)
            if answer.status == 200:
                return PushResult(push, True, answer.apns_id, None, False, attempts, time.time())
            if answer.reason in DROP_REASONS:
                log.info("apns token dead call=%s device=%s reason=%s", push.collapse_key, push.device_id,
                         answer.reason)
                return PushResult(push, False, None, answer.reason, True, attempts, None)
            if not service_failure and answer.reason != "timeout":
                log.warning("apns push failed call=%s device=%s status=%s reason=%s", push.collapse_key,
                            push.device_id, answer.status, answer.reason)
                return PushResult(push, False, None, answer.reason or f"http_{answer.status}", False, attempts,
                                  None)
            backoff = BACKOFF_SECONDS * 2 ** (attempts - 1)
            delay = backoff + random.uniform(0, backoff / 2)
            if time.time() + delay >= push.deadline:
                return PushResult(push, False, None, error, False, attempts, None)
            await asyncio.sleep(delay)

    async def _attempt(self, push: Push) -> tuple[Answer, int]:
        """One try; a second request when APNs refused the provider token as expired."""
        async with self.slots:
            made = 0
            token = await self.ensure_token()
            for retry in (False, True):
                made += 1
                answer = await self._post(push, token)
                if answer.reason != "ExpiredProviderToken" or retry:
                    return answer, made
                fresh = await self.ensure_token(refused=token)
                if fresh == token:
                    return answer, made
                token = fresh
            return answer, made

    async def _post(self, push: Push, token: str) -> Answer:
        headers = {
            "authorization": f"bearer {token}",
            "apns-push-type": "voip" if push.voip else "alert",
            "apns-topic": topic(push.voip),
            "apns-priority": "10",
            "apns-expiration": str(int(push.deadline)),
            "apns-collapse-id": push.collapse_key,
            "content-type": "application/json",
        }
        url = f"{self.config.endpoint}/3/device/{push.token}"
        now = time.time()
        try:
            async with asyncio.timeout(min(self.config.http_timeout, max(push.deadline - now, 0) + 0.05)):
                response = await self.client.post(url, content=push.body, headers=headers)
        except TimeoutError:
            return Answer(reason="timeout")
        except httpx.TransportError as exc:
            log.warning("apns unreachable: %s", exc or type(exc).__name__)
            return Answer(reason="unavailable")
        apns_id = response.headers.get("apns-id")
        if response.status_code == 200:
            return Answer(200, apns_id)
        try:
            reason = response.json().get("reason")
        except (ValueError, AttributeError):
            reason = None
        return Answer(response.status_code, apns_id, reason if isinstance(reason, str) else None)
