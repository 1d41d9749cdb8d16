"""Apple Push Notification service: the one module of the project that speaks APNs (HTTP/2
through notifications.http2, a lean client on `h2`) and signs its provider tokens (PyJWT, ES256).

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

Concurrency (notifications.pushloop's scaffolding, shared with FCM and Web Push): one
background thread runs an asyncio loop with one `notifications.http2.Client` (one HTTP/2
connection, each push a stream on it, as many at once as the server's
SETTINGS_MAX_CONCURRENT_STREAMS allows and at most MAX_IN_FLIGHT; GOAWAY and a lost
connection handled there), so a worker holds one connection to APNs, reused; a second
thread calls `on_result`. `send_many` returns at once. The first try of every push of a
burst is made from one task, each answer judged in a callback (no task or future per
push: `Sender._burst`); a push that must wait (a backoff, the breaker open) goes on in a
task of its own, by the same rules. A try that gets no answer within
APNS_HTTP_TIMEOUT_SECONDS (or by the push's deadline) counts its wait for a stream.
Against an `http://` endpoint (the local server of simulators.apns) HTTP/2 is spoken with
prior knowledge (h2c); against `https://` it is negotiated by ALPN, the server verified
against APNS_CA_FILE when set (a local server's own CA), else the system's CAs.

Per push, only `:path` differs: the other headers are built once per (push type,
expiration, collapse id) and the `authorization` header once per provider token; the JSON
body is encoded once, when the push is built (the size check), and reused by every try.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import jwt
from django.conf import settings

from notifications import http2, pushloop

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
        body = json.dumps(self.payload, separators=(",", ":")).encode()
        if len(body) > (VOIP_PAYLOAD_LIMIT if self.voip else ALERT_PAYLOAD_LIMIT):
            raise ValueError(f"APNs payload of {len(body)} bytes is over the limit")
        object.__setattr__(self, "body", body)  # what was checked is what is sent

    body: bytes = field(init=False, repr=False, compare=False, hash=False)


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
    SLOT.shutdown(timeout)


@dataclass(frozen=True)
class Config:
    key_file: str
    key_id: str
    team_id: str
    endpoint: str
    http_timeout: float
    ca_file: str | None = None  # APNS_CA_FILE: a PEM bundle to verify an https endpoint; None: the system's

    @classmethod
    def from_settings(cls) -> Config:
        return cls(str(settings.APNS_KEY_FILE), settings.APNS_KEY_ID, settings.APNS_TEAM_ID,
                   settings.APNS_ENDPOINT.rstrip("/"), float(settings.APNS_HTTP_TIMEOUT_SECONDS),
                   getattr(settings, "APNS_CA_FILE", None) or None)


SLOT: pushloop.Slot[Sender] = pushloop.Slot(Config.from_settings, lambda config: Sender(config))


def _sender() -> Sender:
    """The running sender for the current settings; a settings change (tests) replaces it."""
    return SLOT.get()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int = 0
    apns_id: str | None = None
    reason: str | None = None  # Apple's reason, or ours: timeout, unavailable, expired


class Breaker(pushloop.Breaker):
    """APNs failing as a whole (500/503 or unreachable for BREAKER_THRESHOLD different
    tokens in a row): notifications.pushloop.Breaker, whose rules notifications.fcm's
    breaker follows too. Every answer other than a failure of the service closes it (a
    timeout and a 429 included: 429 is about one device token). Lives on the sender's loop."""

    service = "APNs"

    def __init__(self):
        super().__init__("apns", limits=sys.modules[__name__])

    def outcome(self, token: str, failed_service: bool, error: str | None, probe: bool) -> None:
        self.verdict(token, pushloop.FAILED if failed_service else pushloop.ANSWERED, error, probe)


class Sender(pushloop.Sender):
    """The signing key; a loop in a thread with one HTTP/2 client; a results thread
    (notifications.pushloop).

    A burst (`send_many`) makes its pushes' first tries from one task, with no task or
    future per push (`_burst`): each request's answer is judged in a callback. A push that
    needs more (a retry after a backoff, a fresh provider token, the breaker open at the
    start) goes on in a task of its own (`_send_with_retries`), by the same rules."""

    name = "apns"

    def __init__(self, config: Config):
        self.key = Path(config.key_file).read_text()
        self.token: str | None = None
        self.token_minted_at = 0.0
        self.forced_at = -float("inf")  # when a refused token was last replaced early
        self.tokens_minted = 0
        self.breaker: Breaker | None = None
        self.client: http2.Client | None = None
        self.bearer: tuple[str | None, tuple[bytes, bytes] | None] = (None, None)  # (token, its header)
        self.fixed_headers: dict[tuple, list[tuple[bytes, bytes]]] = {}  # by (topic, voip, expiration, collapse id)
        super().__init__(config)
        log.info("apns sender started endpoint=%s team=%s key=%s", config.endpoint, config.team_id, config.key_id)

    # --- on the loop ---

    def _ensure_loop_state(self) -> None:
        if self.client is None:
            # HTTP/2 only: on http:// with prior knowledge (h2c), on https:// by ALPN, verified
            # against APNS_CA_FILE when set (a local server's own CA), else the system's CAs.
            # At most MAX_IN_FLIGHT streams at once, fewer if the server says so.
            self.client = http2.Client(self.config.endpoint, ca_file=self.config.ca_file,
                                       connect_timeout=self.config.http_timeout, max_streams=MAX_IN_FLIGHT)
            self.breaker = Breaker()

    def _start(self, pushes, on_result) -> None:
        self._ensure_loop_state()
        self._spawn(self._burst(pushes, on_result))

    async def _aclose(self) -> None:
        if self.client is not None:
            await self.client.close()

    def _unknown(self, push: Push) -> PushResult:
        return PushResult(push, False, None, "unknown", False, 0, None)

    async def _send(self, push: Push, *args) -> PushResult:
        return await self._send_with_retries(push, *args)

    def _token(self, refused: str | None = None) -> str:
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

    async def ensure_token(self, refused: str | None = None) -> str:
        """`_token` on the loop (start() mints the first one ahead of the first ring)."""
        return self._token(refused)

    async def _burst(self, pushes: list[Push], on_result) -> None:
        """The first try of every push, as `_send_with_retries` makes it, without a task per
        push: every request starts now (the HTTP/2 client queues those beyond the stream
        limit) and each answer is judged in `answered`, on the loop. A push to try again
        goes on in a task of its own; the pushes of a burst that finds the breaker open go
        there from the start. Cancelled (the sender's shutdown), the pushes still waiting
        for an answer are reported "unknown", as a cancelled task's would be."""
        if not self.breaker.closed:
            for push in pushes:
                self._spawn(self._deliver(push, on_result))
            return
        loop, client = self.loop, self.client
        outstanding: dict[http2.Request, Push] = {}
        finished = loop.create_future()
        started = False  # every request of the burst is out (an answer may come at once: client closed)

        def answered(request: http2.Request, answer: Answer | None = None) -> None:
            push = outstanding.pop(request, None)
            if push is None:
                return
            try:
                self._first_answer(push, token, answer or self._answer(request.response, request.error), on_result)
            except Exception:
                log.exception("apns push crashed call=%s device=%s", push.collapse_key, push.device_id)
                self._report(on_result, self._unknown(push))
            if not outstanding and started and not finished.done():
                finished.set_result(None)

        def time_out(requests: list[http2.Request]) -> None:
            for request in requests:
                if request in outstanding:
                    client.cancel(request)
                    answered(request, Answer(reason="timeout"))

        expiring: dict[float, list[http2.Request]] = {}  # timeouts to the next millisecond: one timer each
        timers: list[asyncio.TimerHandle] = []
        begun = 0  # pushes of the burst dealt with so far
        try:
            token = self._token()
            now, loop_now = time.time(), loop.time()
            for push in pushes:
                if now >= push.deadline:
                    self._report(on_result, PushResult(push, False, None, "expired", False, 0, None))
                    begun += 1
                    continue
                request = http2.Request(self._headers(push, token), push.body, answered)
                outstanding[request] = push
                begun += 1
                timeout = min(self.config.http_timeout, max(push.deadline - now, 0) + 0.05)
                expiring.setdefault(math.ceil((loop_now + timeout) * 1000) / 1000, []).append(request)
                client.submit(request)
            started = True
            timers = [loop.call_at(when, time_out, requests) for when, requests in expiring.items()]
            if outstanding:
                await finished
        except BaseException as exc:
            # Cancelled (shutdown), or a bug: every push without a result gets "unknown", as a
            # push's own task would report it.
            if isinstance(exc, Exception):
                log.exception("apns burst crashed: %s pushes", len(pushes))
            left = list(outstanding.values()) + pushes[begun:]
            for request in list(outstanding):
                client.cancel(request)
            outstanding.clear()
            for push in left:
                self._report(on_result, self._unknown(push))
            if not isinstance(exc, Exception):
                raise
        finally:
            for timer in timers:
                timer.cancel()

    def _first_answer(self, push: Push, token: str, answer: Answer, on_result) -> None:
        """What the burst does with a push's first answer: the result, or a task to go on."""
        if answer.reason == "ExpiredProviderToken":  # the try goes on with a fresh token
            self._spawn(self._deliver(push, on_result, (token, answer)))
            return
        result, error = self._judge(push, answer, False, 1)
        if result is None:
            delay = self._backoff(1)
            if time.time() + delay >= push.deadline:
                result = PushResult(push, False, None, error, False, 1, None)
            else:
                self._spawn(self._deliver(push, on_result, None, 1, error, delay))
                return
        self._report(on_result, result)

    async def _send_with_retries(self, push: Push, answered: tuple[str, Answer] | None = None, attempts: int = 0,
                                 error: str | None = None, wait: float = 0.0) -> PushResult:
        """Every try of one push until it is delivered, refused for good or out of time. A
        push the burst started comes with what it already has: `answered`, the token and
        answer of its first request (the try goes on), or `attempts`, the last `error` and
        the backoff to `wait` before the next try."""
        probe = False
        if wait:
            await asyncio.sleep(wait)
        while True:
            if answered is None:
                probe = await self.breaker.admit(push.deadline)
                if probe is None:
                    return PushResult(push, False, None, error or self.breaker.error or "unavailable", False,
                                      attempts, None)
                if time.time() >= push.deadline:
                    if probe:
                        self.breaker.probe_lost()
                    return PushResult(push, False, None, error or "expired", False, attempts, None)
            try:
                answer, made = await self._attempt(push, answered)
            except BaseException:
                if probe:
                    self.breaker.probe_lost()
                raise
            answered = None
            attempts += made
            result, error = self._judge(push, answer, probe, attempts)
            if result is not None:
                return result
            delay = self._backoff(attempts)
            if time.time() + delay >= push.deadline:
                return PushResult(push, False, None, error, False, attempts, None)
            await asyncio.sleep(delay)

    def _judge(self, push: Push, answer: Answer, probe: bool, attempts: int) -> tuple[PushResult | None, str | None]:
        """Tell the breaker; (the push's result, or None to try again; the error so far)."""
        error = answer.reason
        service_failure = answer.status in RETRY_STATUSES or answer.reason == "unavailable"
        # 429 is about one device token ("too many requests for the same device token"):
        # retried, but it says nothing about APNs as a whole, so the breaker ignores it.
        self.breaker.outcome(push.token, service_failure and answer.status != 429, error, probe)
        if answer.status == 200:
            return PushResult(push, True, answer.apns_id, None, False, attempts, time.time()), error
        if answer.reason in DROP_REASONS:
            log.info("apns token dead call=%s device=%s reason=%s", push.collapse_key, push.device_id,
                     answer.reason)
            return PushResult(push, False, None, answer.reason, True, attempts, None), error
        if not service_failure and answer.reason != "timeout":
            log.warning("apns push failed call=%s device=%s status=%s reason=%s", push.collapse_key,
                        push.device_id, answer.status, answer.reason)
            return PushResult(push, False, None, answer.reason or f"http_{answer.status}", False, attempts,
                              None), error
        return None, error

    @staticmethod
    def _backoff(attempts: int) -> float:
        backoff = BACKOFF_SECONDS * 2 ** (attempts - 1)
        return backoff + random.uniform(0, backoff / 2)

    async def _attempt(self, push: Push, answered: tuple[str, Answer] | None = None) -> tuple[Answer, int]:
        """One try; a second request when APNs refused the provider token as expired.
        `answered`: the token and answer of the try's first request, already made."""
        if answered is None:
            token = self._token()
            answer = await self._post(push, token)
        else:
            token, answer = answered
        if answer.reason != "ExpiredProviderToken":
            return answer, 1
        fresh = self._token(refused=token)
        if fresh == token:
            return answer, 1
        return await self._post(push, fresh), 2

    def _headers(self, push: Push, token: str) -> list[tuple[bytes, bytes]]:
        """The request's headers: `:path` is the push's own; the rest is shared by every push
        of the same type, expiration and collapse id (a fan-out), and built once."""
        apns_topic = topic(push.voip)
        key = (apns_topic, push.voip, int(push.deadline), push.collapse_key)
        fixed = self.fixed_headers.get(key)
        if fixed is None:
            if len(self.fixed_headers) >= 256:
                self.fixed_headers.clear()
            fixed = self.fixed_headers[key] = [
                (b"apns-push-type", b"voip" if push.voip else b"alert"),
                (b"apns-topic", apns_topic.encode()),
                (b"apns-priority", b"10"),
                (b"apns-expiration", str(int(push.deadline)).encode()),
                (b"apns-collapse-id", push.collapse_key.encode()),
                (b"content-type", b"application/json"),  # no content-length: HTTP/2's END_STREAM ends the body
            ]
        bearer_token, bearer = self.bearer
        if bearer_token != token or bearer is None:
            bearer = (b"authorization", f"bearer {token}".encode())
            self.bearer = (token, bearer)
        client = self.client
        return [(b":method", b"POST"), (b":scheme", client.scheme), (b":authority", client.authority),
                http2.unindexed(b":path", b"/3/device/" + quote(push.token, safe="").encode()), bearer, *fixed]

    async def _post(self, push: Push, token: str) -> Answer:
        headers = self._headers(push, token)
        now = time.time()
        try:
            async with asyncio.timeout(min(self.config.http_timeout, max(push.deadline - now, 0) + 0.05)):
                response = await self.client.request(headers, push.body)
        except TimeoutError:
            return Answer(reason="timeout")
        except http2.HTTP2Error as exc:
            return self._answer(None, exc)
        return self._answer(response, None)

    @staticmethod
    def _answer(response: http2.Response | None, error: Exception | None) -> Answer:
        if response is None:
            log.warning("apns unreachable: %s", error or type(error).__name__)
            return Answer(reason="unavailable")
        apns_id = response.header(b"apns-id")
        apns_id = apns_id.decode() if apns_id is not None else None
        if response.status == 200:
            return Answer(200, apns_id)
        try:
            reason = json.loads(response.body).get("reason")
        except (ValueError, AttributeError):
            reason = None
        return Answer(response.status, apns_id, reason if isinstance(reason, str) else None)
