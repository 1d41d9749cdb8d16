"""Firebase Cloud Messaging: the one module of the project that imports firebase_admin.

Pure transport. The caller hands over `Push`es and gets one `PushResult` per push
through `on_result`; recording deliveries and dropping dead tokens is the caller's
job (no ORM here).

What a ringing phone needs from FCM, and how this module provides it:

- Data-only messages (no `notification` block), every data value a string, Android
  `priority: high`, `ttl` = whole seconds left in the ring window (at least 1),
  `collapse_key` = the call id.
- Nothing worthless: a push whose deadline has passed is reported `expired`
  without a request; retries (quota, 5xx, timeouts) back off 0.1, 0.2, 0.4 s … plus
  jitter, honour `Retry-After`, and stop at min(deadline, start +
  FCM_RETRY_BUDGET_SECONDS). Each request may take at most FCM_HTTP_TIMEOUT_SECONDS; a
  push still waiting for FCM at its deadline is reported as a timeout then.
- FCM failing as a whole (503, 500, 429 or refused connections for BREAKER_THRESHOLD
  different tokens in a row) opens a circuit breaker (`_Breaker`): every push waits
  (Retry-After, or 0.25 s doubling to 2 s) while one probe request finds out whether FCM
  is back, instead of each push retrying on its own. A push held past its own retry
  limit is reported with the breaker's error and the requests it made (maybe 0).
- Non-blocking: `send_many` returns at once. Results arrive in completion order, so
  the first device reached is known without waiting for the slowest.

The protocol is this module's own: FCM HTTP v1 is documented, and only its public parts
are used (docs/PUSH.md cites the references).

- The request: `POST {FCM_ENDPOINT}/v1/projects/{project_id}/messages:send` with
  `Authorization: Bearer {OAuth2 access token}` and a JSON body `{"message": {...}}`
  (`projects.messages.send`; the `Message` and `AndroidConfig` resources), built here
  (`_message`, `_Sender._body`).
- The answer: 200 `{"name": "projects/{project}/messages/{id}"}`, or FCM's error JSON
  `{"error": {"code", "message", "status", "details": [...]}}`, mapped here
  (`classify`) by the `errorCode` of its `google.firebase.fcm.v1.FcmError` detail (the
  `ErrorCode` enum), else its google.rpc `status`, else the HTTP status. UNREGISTERED
  (404), SENDER_ID_MISMATCH (403) and an INVALID_ARGUMENT about the registration token
  drop the token; an INVALID_ARGUMENT about the payload keeps it; QUOTA_EXCEEDED (429),
  INTERNAL (500) and UNAVAILABLE (503) are retried, after `Retry-After` when FCM sends
  one; a 401 that is not THIRD_PARTY_AUTH_ERROR means FCM refused our access token: it
  is replaced once and the request made once more.
- firebase-admin is kept for the credential only, through its public API:
  `credentials.Certificate(FCM_CREDENTIALS_FILE)`, its `project_id`, and
  `get_access_token()` (google-auth mints the token; it blocks, so it runs in a thread,
  once for all pushes, and again some minutes before the token expires). No firebase
  App, no `messaging` module: its encoder and error handler are private API.

Concurrency (the scaffolding is notifications.pushloop's, shared with APNs and Web Push):
one background thread runs an asyncio loop (uvloop) that schedules each push, waits out
backoffs, cuts a push off at its deadline, and makes the requests: at most MAX_IN_FLIGHT
at a time, first come first served, over as many pooled keep-alive connections. A second
thread calls `on_result`, so a slow callback (ORM writes) never stalls sending, and calls
come in completion order.

The requests go through notifications.httpclient (aiohttp, the one module that imports it).
Why aiohttp rather than httpx or firebase-admin's transports: sending is CPU-bound
(every push is one HTTP request; FCM v1 has no batch endpoint), so what counts is Python
per push. Measured against the fake (20 ms latency, sender and fake on separate cores of
a 2-CPU machine shared with other work, load 3-9), sender CPU per push: firebase-admin's
async path, `send_each_async` over httpx, ~4 ms (most of it in httpcore's connection
pool; the same with 100 keep-alive connections instead of 20); its `HttpxAsyncClient`
with an aiohttp transport underneath, ~0.5 ms (httpx's client layer alone); blocking
`messaging.send` on 64 threads ~0.65 ms; `send_each` (fcm-django's way) ~0.9-1.2 ms;
aiohttp ~0.15 ms. To FCM itself httpx would multiplex over HTTP/2, but the fake speaks
HTTP/1.1 only (uvicorn), and so does aiohttp. What is left per push is mostly aiohttp's
request machinery: counted with callgrind (instructions of the sender process for 5 x
100 pushes, independent of the machine's load), 887k instructions per push before the
body template and uvloop, 724k with the template (the body encoded once per payload),
643k with uvloop and the URL parsed once as well.
On Python 3.11 aiohttp writes each request's body from a task of its own, so a burst is
prepared breadth-first: the first request leaves once all of them are prepared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import uvloop
from django.conf import settings
from firebase_admin import credentials
from google.auth import exceptions as auth_exceptions

from notifications import httpclient, pushloop

log = logging.getLogger(__name__)

# Requests in flight, hence pooled connections (HTTP/1.1: one request per connection at
# a time); firebase-admin pools as many for FCM. With FCM 20 ms away that allows 5,000
# sends/s, more than one core encodes and sends (~0.2 ms of Python per push).
MAX_IN_FLIGHT = 100
# Pushes of one burst started per turn of the sender's loop (see _Sender._start_in_chunks).
START_CHUNK = 8
# First retry delay; it doubles with every attempt and gets up to 50% jitter so that
# pushes failing together do not retry together.
BACKOFF_SECONDS = 0.1

# The circuit breaker (see _Breaker): it opens once FCM answered this many different
# tokens in a row with a failure of its own (SERVICE_ERRORS), holds every push for
# BREAKER_OPEN_SECONDS (or the Retry-After FCM gave), then lets one request through; each
# failed probe doubles the wait, up to BREAKER_MAX_OPEN_SECONDS.
BREAKER_THRESHOLD = 5
BREAKER_OPEN_SECONDS = 0.25
BREAKER_MAX_OPEN_SECONDS = 2.0

ERRORS = frozenset({
    "unregistered", "invalid_token", "sender_id_mismatch", "quota_exceeded", "unavailable", "internal",
    "timeout", "expired", "third_party_auth", "invalid_argument", "unknown",
})
RETRYABLE = frozenset({"quota_exceeded", "unavailable", "internal", "timeout"})
# FCM says the token will never work again: the caller deletes it.
DROP_TOKEN = frozenset({"unregistered", "invalid_token", "sender_id_mismatch"})
# FCM failing as a whole rather than refusing one message: what the circuit breaker counts.
# A timeout is left out: a request may hang for one token (the breaker neither opens nor
# closes on it), except the breaker's own probe, which then counts as failed.
SERVICE_ERRORS = frozenset({"quota_exceeded", "unavailable", "internal"})
# FCM would accept a message too late: the access token is replaced this long before
# google-auth says it expires (google-auth itself refreshes 3 min 45 s early).
TOKEN_REFRESH_MARGIN_SECONDS = 300

# FCM HTTP v1's error answer, mapped to ERRORS: the `errorCode` of the
# google.firebase.fcm.v1.FcmError detail (the ErrorCode enum) first, else the error's
# google.rpc `status`, else the HTTP status. See `classify`.
FCM_ERROR_DETAIL = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_DETAIL = "type.googleapis.com/google.rpc.BadRequest"
ERROR_CODES = {
    "UNREGISTERED": "unregistered",              # 404: the app instance is gone; drop the token
    "SENDER_ID_MISMATCH": "sender_id_mismatch",  # 403: the token belongs to another sender; drop it
    "INVALID_ARGUMENT": "invalid_argument",      # 400: invalid_token when it is about the token
    "QUOTA_EXCEEDED": "quota_exceeded",          # 429: retry after Retry-After / backoff
    "UNAVAILABLE": "unavailable",                # 503: retry
    "INTERNAL": "internal",                      # 500: retry
    "THIRD_PARTY_AUTH_ERROR": "third_party_auth",  # 401: APNs / Web Push refused the project's key
    "APNS_AUTH_ERROR": "third_party_auth",       # its name in older answers
}
RPC_STATUSES = {
    "INVALID_ARGUMENT": "invalid_argument",
    "NOT_FOUND": "unregistered",                 # UNREGISTERED's status
    "RESOURCE_EXHAUSTED": "quota_exceeded",
    "UNAVAILABLE": "unavailable",
    "INTERNAL": "internal",
    "DEADLINE_EXCEEDED": "timeout",
}
# Without FCM's error JSON (a proxy, a load balancer): only what the status alone says.
# A bare 404 is left out: a wrong URL must not drop every token.
HTTP_STATUSES = {400: "invalid_argument", 429: "quota_exceeded", 500: "internal", 503: "unavailable"}


@dataclass(frozen=True)
class Push:
    """One message to one device. Built with a copy of `data`; refuses (ValueError) a
    data key or value that is not a string, as FCM would."""

    device_id: str          # opaque to this module, echoed back in the result
    token: str              # FCM registration token
    data: dict[str, str] = field(hash=False)  # every value a string
    collapse_key: str       # the call id
    deadline: float         # time.time() after which the push is worthless (end of the ring window)

    def __post_init__(self):
        if not isinstance(self.token, str) or not self.token:
            raise ValueError("Push.token must be a non-empty string")
        if not isinstance(self.collapse_key, str) or not self.collapse_key:
            raise ValueError("Push.collapse_key must be a non-empty string")
        if not isinstance(self.deadline, (int, float)) or isinstance(self.deadline, bool):
            raise ValueError("Push.deadline must be a time.time() value")
        _check_data(self.data)
        object.__setattr__(self, "data", dict(self.data))


@dataclass(frozen=True)
class PushResult:
    push: Push
    ok: bool
    message_id: str | None  # "projects/{project}/messages/{id}" as FCM names it
    error: str | None       # None on success, else one of ERRORS
    drop_token: bool        # FCM says the token will never work again
    attempts: int           # requests made (0 when expired before sending)
    sent_at: float | None   # time.time() when FCM accepted it


def _check_data(data) -> None:
    if not isinstance(data, dict):
        raise ValueError("Push.data must be a dict of strings")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"FCM data must map strings to strings; {key!r} is {type(value).__name__}")


def _short(token: str) -> str:
    """Enough of a token to tell two apart in a log, not enough to use it."""
    return token[:8] + "…"


def enabled() -> bool:
    """Whether FCM is configured (FCM_CREDENTIALS_FILE set); otherwise WebSocket only."""
    return bool(settings.FCM_CREDENTIALS_FILE)


def send_many(pushes: Iterable[Push], on_result: Callable[[PushResult], None]) -> None:
    """Start sending every push and return at once.

    `on_result` is called once per push, from a background thread, in the order the
    pushes finish. Raises ValueError (before sending anything) if a push carries
    non-string data, and RuntimeError if FCM is not configured.
    """
    pushes = list(pushes)
    for push in pushes:
        if not isinstance(push, Push):
            raise ValueError(f"send_many takes Push objects, not {type(push).__name__}")
        _check_data(push.data)
    if not pushes:
        return
    if not enabled():
        raise RuntimeError("FCM is off: FCM_CREDENTIALS_FILE is not set (check fcm.enabled() first)")
    _sender().submit(pushes, on_result, float(settings.FCM_RETRY_BUDGET_SECONDS))


def start(timeout: float = 10.0) -> None:
    """Build the sender now (credential, its loop) and fetch the access
    token, so the first ring does not pay for them (a few hundred ms). Nothing
    happens when FCM is off; a token that cannot be fetched yet is fetched by the
    first push instead."""
    if not enabled():
        return
    sender = _sender()
    try:
        asyncio.run_coroutine_threadsafe(sender._ensure_access_token(), sender.loop).result(timeout)
    except Exception as error:  # noqa: BLE001 - FCM unreachable at start-up is not fatal
        log.warning("fcm access token not fetched at start-up: %s", error)


def shutdown(timeout: float = 5.0) -> None:
    """Let pushes in flight finish for up to `timeout` seconds, cancel the rest (reported
    as "unknown"), deliver the last results and forget the sender (credential, access
    token, connections), so the next `send_many` starts afresh from the settings."""
    SLOT.shutdown(timeout)


# --- the machinery ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Config:
    credentials_file: str
    endpoint: str
    http_timeout: float

    @classmethod
    def from_settings(cls) -> _Config:
        return cls(str(settings.FCM_CREDENTIALS_FILE), settings.FCM_ENDPOINT.rstrip("/"),
                   float(settings.FCM_HTTP_TIMEOUT_SECONDS))


def _build(config: _Config) -> _Sender:
    return _Sender(config)


SLOT = pushloop.Slot(_Config.from_settings, _build)


def _sender() -> _Sender:
    """The running sender for the current settings; a settings change (tests) replaces it."""
    return SLOT.get()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop (pinned; uvicorn[standard] brings it): the sender's loop then costs about a
    tenth less CPU per push than asyncio's own."""
    return uvloop.new_event_loop()


def _epoch(expiry: datetime.datetime | None) -> float:
    """time.time() of an access token's expiry; google-auth gives a naive UTC datetime.
    None (no expiry known): good until FCM refuses it."""
    if expiry is None:
        return math.inf
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return expiry.timestamp()


@dataclass(frozen=True)
class _Answer:
    """What one request came to. `error` None: FCM accepted it (`message_id`, `accepted_at`);
    else one of ERRORS, with FCM's Retry-After (seconds) and a line for the log."""

    message_id: str | None = None
    accepted_at: float | None = None
    error: str | None = None
    retry_after: float | None = None
    detail: str = ""
    refused_bearer: bool = False  # a 401 about our access token (not THIRD_PARTY_AUTH_ERROR)


class _Sender(pushloop.Sender):
    """The credential; an asyncio loop in a thread that schedules every push, its
    deadline and its retries and makes the requests (aiohttp); and a thread that
    reports results (notifications.pushloop)."""

    name = "fcm"

    def __init__(self, config: _Config):
        self.credential = credentials.Certificate(config.credentials_file)
        self.project_id = self.credential.project_id
        if not self.project_id:
            raise ValueError(f"FCM_CREDENTIALS_FILE {config.credentials_file} names no project_id")
        self.url = f"{config.endpoint}/v1/projects/{self.project_id}/messages:send"
        self.target = httpclient.parse(self.url)  # parsed once, not by aiohttp on every request
        self.proxy = httpclient.proxy_for(self.url)
        # google-auth refreshes tokens with blocking requests; never on the loop.
        self.auth_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fcm-auth")
        self.access_token: str | None = None
        self.token_expires_at = 0.0  # time.time()
        self.token_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.breaker = _Breaker()
        self.templates: dict[tuple, bytes] = {}
        self.auth_headers: dict | None = None
        self.auth_headers_for: str | None = None
        self.pool = httpclient.Pool(MAX_IN_FLIGHT)
        super().__init__(config, _new_loop())
        log.info("fcm sender started endpoint=%s project=%s", config.endpoint, self.project_id)

    # --- on the loop ---

    def _start(self, pushes, on_result, retry_budget) -> None:
        if len(pushes) <= START_CHUNK:
            self._start_now(pushes, on_result, retry_budget)
        else:
            self._spawn(self._start_in_chunks(pushes, on_result, retry_budget))

    def _start_now(self, pushes, on_result, retry_budget) -> None:
        super()._start(pushes, on_result, retry_budget)

    async def _start_in_chunks(self, pushes, on_result, retry_budget) -> None:
        """A burst START_CHUNK pushes at a time, the loop turning in between: aiohttp
        writes a request from a task of its own, scheduled behind every push already
        started, so 1,000 pushes started at once would all be prepared before the first
        left, and FCM's round trips would begin only then."""
        for index in range(0, len(pushes), START_CHUNK):
            if index:
                await asyncio.sleep(0)
            self._start_now(pushes[index:index + START_CHUNK], on_result, retry_budget)

    async def _aclose(self) -> None:
        await self.pool.close()

    def _stopped(self) -> None:
        self.auth_pool.shutdown(wait=False, cancel_futures=True)

    def _unknown(self, push: Push) -> PushResult:
        return PushResult(push, False, None, "unknown", False, 0, None)

    async def _send(self, push: Push, retry_budget: float) -> PushResult:
        return await self._send_with_retries(push, retry_budget)

    async def _send_with_retries(self, push: Push, retry_budget: float) -> PushResult:
        start = time.time()
        retry_until = min(push.deadline, start + retry_budget)
        attempts = 0
        error = None
        while True:
            probe = await self.breaker.admit(retry_until)
            if probe is None:  # FCM failing as a whole, and still when this push's time ran out
                error = error or self.breaker.error or "unavailable"
                # INFO: the circuit logged FCM failing, once, at WARNING; each held push adds nothing.
                log.info("fcm push gave up, FCM failing call=%s device=%s token=%s error=%s attempts=%s",
                         push.collapse_key, push.device_id, _short(push.token), error, attempts)
                return PushResult(push, False, None, error, False, attempts, None)
            try:
                answer, requests_made = await self._attempt(push)
            except BaseException:
                if probe:
                    self.breaker.probe_lost()
                raise
            error = answer.error
            attempts += requests_made
            if requests_made:
                self.breaker.outcome(push.token, error, answer.retry_after, probe)
            elif probe:
                self.breaker.probe_lost()
            if error == "expired":
                log.info("fcm push expired before sending call=%s device=%s attempts=%s", push.collapse_key,
                         push.device_id, attempts)
                return PushResult(push, False, None, "expired", False, attempts, None)
            if error is None:
                log.debug("fcm push accepted call=%s device=%s token=%s attempts=%s", push.collapse_key,
                          push.device_id, _short(push.token), attempts)
                return PushResult(push, True, answer.message_id, None, False, attempts, answer.accepted_at)
            drop_token = error in DROP_TOKEN
            failed = PushResult(push, False, None, error, drop_token, attempts, None)
            if error not in RETRYABLE:
                log.log(logging.INFO if drop_token else logging.WARNING,
                        "fcm push failed call=%s device=%s token=%s error=%s drop_token=%s detail=%s",
                        push.collapse_key, push.device_id, _short(push.token), error, drop_token, answer.detail)
                return failed
            delay = _retry_delay(answer.retry_after, attempts)
            if time.time() + delay >= retry_until:
                log.warning("fcm push gave up call=%s device=%s token=%s error=%s attempts=%s",
                            push.collapse_key, push.device_id, _short(push.token), error, attempts)
                return failed
            log.info("fcm push retrying call=%s device=%s token=%s error=%s attempt=%s in=%.2fs",
                     push.collapse_key, push.device_id, _short(push.token), error, attempts, delay)
            await asyncio.sleep(delay)

    async def _attempt(self, push: Push) -> tuple[_Answer, int]:
        """One try: FCM's answer and the requests made, 0 with error "expired" when the
        deadline passed before it could be sent, 2 when FCM refused the access token and
        the request was repeated once with a fresh one."""
        async with self.slots:  # FIFO: pushes go out in the order they were handed over
            if time.time() >= push.deadline:
                return _Answer(error="expired"), 0
            requests_made = 0
            for fresh_token in (False, True):
                try:
                    await self._ensure_access_token(force=fresh_token)
                except auth_exceptions.TransportError as exc:
                    return _Answer(error="unavailable", detail=f"access token: {exc}"), requests_made
                except auth_exceptions.RefreshError as exc:
                    return _Answer(error="unknown", detail=f"access token refused: {exc}"), requests_made
                requests_made += 1
                answer = await self._post(push)
                if not answer.refused_bearer:
                    break
            return answer, requests_made

    def _body(self, push: Push, ttl: int) -> bytes:
        """The request body: `{"message": _message(push, ttl)}` as JSON. The pushes of one
        event differ only in their token, which is the message's last field, so the rest is
        encoded once per payload, collapse key and ttl (whole seconds) and the token
        appended: encoding every message whole was a third of the sender's CPU per push."""
        key = (push.collapse_key, ttl, tuple(push.data.items()))
        prefix = self.templates.get(key)
        if prefix is None:
            prefix = self.templates[key] = _body_prefix(push, ttl)
            if len(self.templates) > 256:
                self.templates.pop(next(iter(self.templates)))
        return prefix + json.dumps(push.token).encode() + b"}}"

    def _auth_headers(self) -> dict:
        """The request's headers, built once per access token."""
        if self.auth_headers_for != self.access_token or self.auth_headers is None:
            self.auth_headers = {"Content-Type": "application/json; charset=UTF-8",
                                 "Authorization": f"Bearer {self.access_token}"}
            self.auth_headers_for = self.access_token
        return self.auth_headers

    async def _post(self, push: Push) -> _Answer:
        """POST one message and map FCM's answer.

        The request may take FCM_HTTP_TIMEOUT_SECONDS, and never past the push's deadline
        (it is worthless then): either way it is cancelled and reported as a timeout."""
        now = time.time()
        body = self._body(push, max(1, math.floor(push.deadline - now)))
        headers = self._auth_headers()
        try:
            async with asyncio.timeout(min(self.config.http_timeout, max(push.deadline - now, 0) + 0.05)):
                reply = await self.pool.post(self.target, body, headers, proxy=self.proxy)
        except TimeoutError:
            return _Answer(error="timeout", detail="FCM did not answer in time")
        except httpclient.Unreachable as exc:  # refused, reset, closed: FCM unreachable
            return _Answer(error="unavailable", detail=str(exc))
        except httpclient.BadReply as exc:  # a malformed answer
            return _Answer(error="unknown", detail=str(exc))
        if reply.status == 200:
            try:
                return _Answer(message_id=json.loads(reply.body)["name"], accepted_at=time.time())
            except (ValueError, KeyError, TypeError) as exc:
                return _Answer(error="unknown", detail=f"FCM accepted the message with an unreadable answer: {exc}")
        return classify(reply.status, reply.body, reply.headers.get("Retry-After"))

    def _token_fresh(self) -> bool:
        return self.access_token is not None and time.time() < self.token_expires_at - TOKEN_REFRESH_MARGIN_SECONDS

    async def _ensure_access_token(self, force: bool = False) -> None:
        """Fetch the OAuth2 access token (firebase-admin's `Certificate.get_access_token`,
        google-auth underneath: it blocks, so in a thread) once for all pushes in flight,
        and again TOKEN_REFRESH_MARGIN_SECONDS before it expires. `force` replaces a token
        FCM refused though it looked valid."""
        if not force and self._token_fresh():
            return
        stale = self.access_token
        async with self.token_lock:
            if (force and self.access_token == stale) or not self._token_fresh():
                info = await self.loop.run_in_executor(self.auth_pool, self.credential.get_access_token)
                self.access_token, self.token_expires_at = info.access_token, _epoch(info.expiry)


class _Breaker(pushloop.Breaker):
    """FCM failing as a whole (503, 500, 429, connection refused): one wait for everyone
    instead of every push retrying on its own, which costs a request, an error to parse
    and a log line per push per retry, in the server's process, while FCM can take none.

    notifications.pushloop.Breaker, keyed by token: it opens once FCM answered
    BREAKER_THRESHOLD different tokens in a row with a SERVICE_ERRORS failure, holds every
    push for BREAKER_OPEN_SECONDS (or FCM's Retry-After), then lets one probe through; a
    failed (or timed out) probe doubles the wait up to BREAKER_MAX_OPEN_SECONDS; FCM
    answering about a message (accepting or refusing it) closes it. A push waits for it
    only until its own retry limit (end of the ring window, FCM_RETRY_BUDGET_SECONDS). A
    timeout outside a probe says nothing either way: a request may hang for one token."""

    service = "FCM"

    def __init__(self):
        super().__init__("fcm", limits=sys.modules[__name__])

    def outcome(self, token: str, error: str | None, retry_after: float | None, probe: bool) -> None:
        """What FCM answered one request (`error` None: accepted; `retry_after`: its
        Retry-After, seconds); `probe`: what admit said."""
        if error in SERVICE_ERRORS or (probe and error == "timeout"):
            verdict = pushloop.FAILED
        elif error == "timeout":
            verdict = pushloop.UNKNOWN
        else:
            verdict = pushloop.ANSWERED
        self.verdict(token, verdict, error, probe, retry_after)


def _message(push: Push, ttl: int, token: str | None = None) -> dict:
    """The FCM HTTP v1 `Message` of a push (projects.messages#Message): a data message to
    one registration token, Android delivery at high priority, for `ttl` seconds (a
    google.protobuf.Duration: "30s"), replacing an earlier undelivered one of the same
    call (`collapse_key`). The token comes last (see `_Sender._body`)."""
    return {
        "data": push.data,
        "android": {"priority": "high", "ttl": f"{ttl}s", "collapse_key": push.collapse_key},
        "token": push.token if token is None else token,
    }


def _body_prefix(push: Push, ttl: int) -> bytes:
    """`{"message": _message(push, ttl)}` as JSON, up to the token's value."""
    message = _message(push, ttl)
    del message["token"]
    text = json.dumps({"message": message}, separators=(",", ":"))
    return (text[:-2] + ',"token":').encode()  # text ends with "}}"; the token and "}}" follow


def classify(status: int, content: bytes, retry_after: str | None = None) -> _Answer:
    """FCM HTTP v1's refusal (an HTTP status other than 200, its body, its Retry-After
    header) as an error of ERRORS.

    The body is FCM's error JSON: `{"error": {"code", "message", "status", "details":
    [{"@type": FCM_ERROR_DETAIL, "errorCode": ...}, {"@type": BAD_REQUEST_DETAIL,
    "fieldViolations": [...]}]}}`. Its `errorCode` decides (ERROR_CODES), else its
    google.rpc `status` (RPC_STATUSES), else the HTTP status (HTTP_STATUSES); anything
    else is "unknown" and keeps the token. A 401 other than THIRD_PARTY_AUTH_ERROR is FCM
    refusing our access token (`refused_bearer`).

    INVALID_ARGUMENT covers both a malformed token and a bad payload; only the former
    means the token is dead. FCM says which in the message ("The registration token is
    not a valid FCM registration token") or a field violation on `message.token`. This
    is the distinction fcm-django means to make (its "Invalid registration" check, and
    issue #223): deactivating on every INVALID_ARGUMENT would drop good tokens whenever
    a payload is wrong.
    """
    error = {}
    try:
        parsed = json.loads(content)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            error = parsed["error"]
    except ValueError:
        pass
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    rpc_status = error.get("status") if isinstance(error.get("status"), str) else None
    details = [d for d in error.get("details", []) if isinstance(d, dict)] \
        if isinstance(error.get("details"), list) else []
    error_code = next((d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR_DETAIL), None)
    kind = ERROR_CODES.get(error_code)
    refused_bearer = False
    if kind is None and status == 401:
        kind, refused_bearer = "unknown", True
    if kind is None:
        kind = RPC_STATUSES.get(rpc_status) if error else None
    if kind is None:
        kind = HTTP_STATUSES.get(status, "unknown")
    if kind == "invalid_argument" and _blames_token(message, details):
        kind = "invalid_token"
    detail = f"{status} {rpc_status or '-'} {error_code or '-'}: {message or content[:200]!r}"
    return _Answer(error=kind, retry_after=_retry_after(retry_after) if kind in RETRYABLE else None,
                   detail=detail, refused_bearer=refused_bearer)


def _blames_token(message: str, details: list[dict]) -> bool:
    if "registration token" in message.lower():
        return True
    return any(
        violation.get("field") == "message.token"
        for detail in details if detail.get("@type") == BAD_REQUEST_DETAIL
        for violation in (detail.get("fieldViolations") or []) if isinstance(violation, dict)
    )


def _retry_delay(retry_after: float | None, attempts: int) -> float:
    """Retry-After as FCM gave it (plus a little jitter), else the backoff."""
    return pushloop.retry_delay(retry_after, attempts, BACKOFF_SECONDS)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if any."""
    return pushloop.retry_after_seconds(value)
