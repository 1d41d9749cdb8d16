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
  FCM_RETRY_BUDGET_SECONDS). firebase-admin's own retries (4 x on 500/503 with 0.5 s
  exponential backoff, i.e. up to ~7.5 s) are switched off. Each request may take at
  most FCM_HTTP_TIMEOUT_SECONDS; a push still waiting for FCM at its deadline is
  reported as a timeout then.
- FCM failing as a whole (503, 500, 429 or refused connections for BREAKER_THRESHOLD
  different tokens in a row) opens a circuit breaker (`_Breaker`): every push waits
  (Retry-After, or 0.25 s doubling to 2 s) while one probe request finds out whether FCM
  is back, instead of each push retrying on its own. A push held past its own retry
  limit is reported with the breaker's error and the requests it made (maybe 0).
- Non-blocking: `send_many` returns at once. Results arrive in completion order, so
  the first device reached is known without waiting for the slowest.

Division of labour: firebase-admin does everything FCM-specific; aiohttp only carries
bytes. firebase-admin builds the App and its service-account credential (google-auth
mints the bearer token; a refresh blocks, so it runs in a thread, once for all pushes),
encodes each message (`encode_message`, the JSON `messaging.send` posts), names the URL
and the headers it sends, and turns every failure into its own exception class
(`UnregisteredError`, `QuotaExceededError`, ...) through the error handler of its async
path, which is handed an `httpx.Response` rebuilt from aiohttp's answer (a connection
failure becomes `httpx.ConnectError`, a timeout `httpx.ReadTimeout`, as httpx would have
raised them). A 401 about the access token gets one fresh token and one more request,
as google-auth's session does for `messaging.send`.

Concurrency: one background thread runs an asyncio loop that schedules each push, waits
out backoffs, cuts a push off at its deadline, and makes the requests: at most
MAX_IN_FLIGHT at a time, first come first served, over as many pooled keep-alive
connections. A second thread calls `on_result`, so a slow callback (ORM writes) never
stalls sending, and calls come in completion order.

Why aiohttp under firebase-admin rather than firebase-admin's own transports: sending
is CPU-bound (every push is one HTTP request; FCM v1 has no batch endpoint), so what
counts is Python per push. Measured against the fake (20 ms latency, sender and fake on
separate cores of a 2-CPU machine shared with other work, load 3-9), sender CPU per push:
firebase-admin's async path, `send_each_async` over httpx, ~4 ms (most of it in
httpcore's connection pool; the same with 100 keep-alive connections instead of 20); its
`HttpxAsyncClient` with an aiohttp transport underneath, ~0.5 ms (httpx's client layer
alone); blocking `messaging.send` on 64 threads (this module's previous design) ~0.65 ms;
`send_each` (fcm-django's way) ~0.9-1.2 ms; this module ~0.15 ms. To FCM itself httpx
would multiplex over HTTP/2, but the fake speaks HTTP/1.1 only (uvicorn), and so does
aiohttp. What is left per push is mostly aiohttp's request machinery: counted with
callgrind (instructions of the sender process for 5 x 100 pushes, independent of the
machine's load), 887k instructions per push before the body template and uvloop, 724k
with the template (the Message encoded once per payload), 643k with uvloop and the URL
parsed once as well.
On Python 3.11 aiohttp writes each request's body from a task of its own, so a burst is
prepared breadth-first: the first request leaves once all of them are prepared.

Private API of firebase-admin 7.7.0 in use, all of it in `_Sender.__init__`,
`_configure_service` and `_firebase_error`: `messaging._get_messaging_service`, the
service's `_fcm_url` (pointed at FCM_ENDPOINT), `_fcm_headers`, `_handle_fcm_httpx_error`,
and `_http_client.METRICS_HEADERS`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import firebase_admin
import httpx
import requests.utils
import yarl
from django.conf import settings
from firebase_admin import _http_client, credentials, exceptions, messaging
from google.auth import exceptions as auth_exceptions
from google.auth.transport import requests as auth_requests

log = logging.getLogger(__name__)

APP_NAME = "callpull"
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
# FCM failing as a whole rather than refusing one message: what the circuit breaker counts.
# A timeout is left out: a request may hang for one token (the breaker neither opens nor
# closes on it), except the breaker's own probe, which then counts as failed.
SERVICE_ERRORS = frozenset({"quota_exceeded", "unavailable", "internal"})


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
    _sender().submit(pushes, on_result, retry_budget=float(settings.FCM_RETRY_BUDGET_SECONDS))


def start(timeout: float = 10.0) -> None:
    """Build the sender now (firebase App, credentials, its loop) and fetch the access
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
    as "unknown"), deliver the last results and forget the firebase App, so the next
    `send_many` starts afresh from the settings."""
    global _current
    with _lock:
        sender, _current = _current, None
    if sender is not None:
        sender.close(timeout)


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


_lock = threading.Lock()
_current: _Sender | None = None


def _sender() -> _Sender:
    """The running sender for the current settings; a settings change (tests) replaces it."""
    global _current
    config = _Config.from_settings()
    with _lock:
        stale = None
        if _current is not None and _current.config != config:
            stale, _current = _current, None
        if _current is None:
            if stale is not None:
                stale.close(timeout=1.0)
            _current = _Sender(config)
        return _current


atexit.register(shutdown, 1.0)


def _configure_service(service, config: _Config) -> None:
    """Point firebase-admin's messaging service at FCM_ENDPOINT.

    Private API of firebase-admin 7.7.0's messaging._MessagingService: `_fcm_url` is
    hard-coded to https://fcm.googleapis.com; it becomes
    `{FCM_ENDPOINT}/v1/projects/{project}/messages:send`. The sender posts to that URL.
    """
    service._fcm_url = f"{config.endpoint}/v1/projects/{service._project_id}/messages:send"


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, NO_PROXY), read once:
    looking it up per request, as aiohttp's trust_env does, costs a scan of the environment."""
    proxies = requests.utils.get_environ_proxies(url)
    return proxies.get(urlsplit(url).scheme) or proxies.get("all")


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (uvicorn[standard] brings it): the sender's loop then
    costs about a tenth less CPU per push than asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _new_app(config: _Config) -> firebase_admin.App:
    try:
        firebase_admin.delete_app(firebase_admin.get_app(APP_NAME))  # left over by a sender that died
    except ValueError:
        pass
    app = firebase_admin.initialize_app(credentials.Certificate(config.credentials_file),
                                        {"httpTimeout": config.http_timeout}, name=APP_NAME)
    _configure_service(messaging._get_messaging_service(app), config)
    return app


class _Sender:
    """The firebase App; an asyncio loop in a thread that schedules every push, its
    deadline and its retries and makes the requests (aiohttp); and a thread that
    reports results."""

    def __init__(self, config: _Config):
        self.config = config
        self.app = _new_app(config)
        self.service = messaging._get_messaging_service(self.app)
        self.credential = self.app.credential.get_credential()
        self.url = self.service._fcm_url
        self.target = yarl.URL(self.url)  # parsed once, not by aiohttp on every request
        # What firebase-admin sends with every FCM request, less what the transport adds.
        self.headers = {**self.service._fcm_headers, **_http_client.METRICS_HEADERS,
                        "Content-Type": "application/json; charset=UTF-8"}
        self.proxy = _proxy_for(self.url)
        # google-auth refreshes tokens with blocking requests; never on the loop.
        self.auth_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fcm-auth")
        self.loop = _new_loop()
        self.token_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.breaker = _Breaker()
        self.templates: dict[tuple, tuple[bytes, bytes] | bytes] = {}
        self.auth_headers: dict | None = None
        self.auth_headers_for: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task] = set()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.loop_thread = threading.Thread(target=self._run_loop, name="fcm-sender", daemon=True)
        self.result_thread = threading.Thread(target=self._run_results, name="fcm-results", daemon=True)
        self.loop_thread.start()
        self.result_thread.start()
        log.info("fcm sender started endpoint=%s project=%s", config.endpoint, self.app.project_id)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _run_results(self) -> None:
        while (item := self.results.get()) is not None:
            on_result, result = item
            try:
                on_result(result)
            except Exception:
                log.exception("fcm on_result failed call=%s device=%s", result.push.collapse_key,
                              result.push.device_id)

    # --- called from any thread ---

    def submit(self, pushes: list[Push], on_result, retry_budget: float) -> None:
        self.loop.call_soon_threadsafe(self._start, pushes, on_result, retry_budget)

    def close(self, timeout: float) -> None:
        limit = time.monotonic() + timeout
        try:
            asyncio.run_coroutine_threadsafe(self._drain(timeout), self.loop).result(timeout + 2)
        except Exception:
            log.exception("fcm sender did not drain cleanly")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(max(0.1, limit - time.monotonic()))
        if not self.loop_thread.is_alive():
            self.loop.close()
        self.auth_pool.shutdown(wait=False, cancel_futures=True)
        self.results.put(None)
        self.result_thread.join(max(0.1, limit - time.monotonic()))
        firebase_admin.delete_app(self.app)
        log.info("fcm sender stopped")

    # --- on the loop ---

    def _start(self, pushes, on_result, retry_budget) -> None:
        if len(pushes) <= START_CHUNK:
            self._start_now(pushes, on_result, retry_budget)
        else:
            task = self.loop.create_task(self._start_in_chunks(pushes, on_result, retry_budget))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _start_now(self, pushes, on_result, retry_budget) -> None:
        for push in pushes:
            task = self.loop.create_task(self._deliver(push, on_result, retry_budget))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _start_in_chunks(self, pushes, on_result, retry_budget) -> None:
        """A burst START_CHUNK pushes at a time, the loop turning in between: aiohttp
        writes a request from a task of its own, scheduled behind every push already
        started, so 1,000 pushes started at once would all be prepared before the first
        left, and FCM's round trips would begin only then."""
        for index in range(0, len(pushes), START_CHUNK):
            if index:
                await asyncio.sleep(0)
            self._start_now(pushes[index:index + START_CHUNK], on_result, retry_budget)

    async def _drain(self, timeout: float) -> None:
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("fcm shutdown cancelled %s pushes in flight", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _deliver(self, push: Push, on_result, retry_budget: float) -> None:
        try:
            result = await self._send_with_retries(push, retry_budget)
        except asyncio.CancelledError:
            self.results.put((on_result, PushResult(push, False, None, "unknown", False, 0, None)))
            raise
        except Exception:
            log.exception("fcm push crashed call=%s device=%s token=%s", push.collapse_key, push.device_id,
                          _short(push.token))
            result = PushResult(push, False, None, "unknown", False, 0, None)
        self.results.put((on_result, result))

    async def _send_with_retries(self, push: Push, retry_budget: float) -> PushResult:
        start = time.time()
        retry_until = min(push.deadline, start + retry_budget)
        attempts = 0
        error = exc = None
        while True:
            probe = await self.breaker.admit(retry_until)
            if probe is None:  # FCM failing as a whole, and still when this push's time ran out
                error = error or self.breaker.error or "unavailable"
                # INFO: the circuit logged FCM failing, once, at WARNING; each held push adds nothing.
                log.info("fcm push gave up, FCM failing call=%s device=%s token=%s error=%s attempts=%s",
                         push.collapse_key, push.device_id, _short(push.token), error, attempts)
                return PushResult(push, False, None, error, False, attempts, None)
            try:
                message_id, exc, error, accepted_at, requests_made = await self._attempt(push)
            except BaseException:
                if probe:
                    self.breaker.probe_lost()
                raise
            attempts += requests_made
            if requests_made:
                self.breaker.outcome(push.token, error, exc, probe)
            elif probe:
                self.breaker.probe_lost()
            if error == "expired":
                log.info("fcm push expired before sending call=%s device=%s attempts=%s", push.collapse_key,
                         push.device_id, attempts)
                return PushResult(push, False, None, "expired", False, attempts, None)
            if message_id is not None:
                log.debug("fcm push accepted call=%s device=%s token=%s attempts=%s", push.collapse_key,
                          push.device_id, _short(push.token), attempts)
                return PushResult(push, True, message_id, None, False, attempts, accepted_at)
            drop_token = error in {"unregistered", "invalid_token", "sender_id_mismatch"}
            failed = PushResult(push, False, None, error, drop_token, attempts, None)
            if error not in RETRYABLE:
                log.log(logging.INFO if drop_token else logging.WARNING,
                        "fcm push failed call=%s device=%s token=%s error=%s drop_token=%s detail=%s",
                        push.collapse_key, push.device_id, _short(push.token), error, drop_token, exc)
                return failed
            delay = _retry_delay(error, exc, attempts)
            if time.time() + delay >= retry_until:
                log.warning("fcm push gave up call=%s device=%s token=%s error=%s attempts=%s",
                            push.collapse_key, push.device_id, _short(push.token), error, attempts)
                return failed
            log.info("fcm push retrying call=%s device=%s token=%s error=%s attempt=%s in=%.2fs",
                     push.collapse_key, push.device_id, _short(push.token), error, attempts, delay)
            await asyncio.sleep(delay)

    async def _attempt(self, push: Push):
        """One try: (message_id, None, None, accepted_at, requests), (None, exception, error,
        None, requests), or (None, None, "expired", None, 0) when the deadline passed before
        it could be sent. `requests` is 2 when FCM refused the access token and the request
        was repeated with a fresh one, as google-auth's session would."""
        async with self.slots:  # FIFO: pushes go out in the order they were handed over
            if time.time() >= push.deadline:
                return None, None, "expired", None, 0
            requests_made = 0
            for fresh_token in (False, True):
                try:
                    await self._ensure_access_token(force=fresh_token)
                except auth_exceptions.TransportError as exc:
                    return None, exc, "unavailable", None, requests_made
                except auth_exceptions.RefreshError as exc:
                    return None, exc, "unknown", None, requests_made
                requests_made += 1
                message_id, exc, accepted_at = await self._post(push)
                if not _refused_access_token(exc):
                    break
            error = _classify(exc) if exc is not None else None
            return message_id, exc, error, accepted_at, requests_made

    def _body(self, push: Push, ttl: int) -> bytes:
        """The request body, as firebase-admin encodes it (`encode_message`). The pushes
        of one event differ only in their token, so the rest is encoded once per payload,
        collapse key and ttl (whole seconds) and the token spliced in: encoding a Message
        (firebase-admin validates every field) was a third of the sender's CPU per push."""
        key = (push.collapse_key, ttl, tuple(push.data.items()))
        template = self.templates.get(key)
        if template is None:
            template = self.templates[key] = _template(self.service, push, ttl)
            if len(self.templates) > 256:
                self.templates.pop(next(iter(self.templates)))
        if isinstance(template, bytes):  # the mark clashed with the payload: encoded whole below
            return _encode(self.service, push, push.token, ttl).encode()
        prefix, suffix = template
        return prefix + _json_string(push.token).encode() + suffix

    def _auth_headers(self) -> dict:
        """firebase-admin's headers plus the bearer token, built once per access token."""
        if self.auth_headers_for != self.credential.token or self.auth_headers is None:
            headers = dict(self.headers)
            self.credential.apply(headers)
            self.auth_headers, self.auth_headers_for = headers, self.credential.token
        return self.auth_headers

    async def _post(self, push: Push):
        """POST one message: (message_id, None, accepted_at) or (None, FirebaseError, None).

        The request may take FCM_HTTP_TIMEOUT_SECONDS, and never past the push's deadline
        (it is worthless then): either way it is cancelled and reported as a timeout."""
        now = time.time()
        body = self._body(push, max(1, math.floor(push.deadline - now)))
        headers = self._auth_headers()
        if self.session is None:
            # No timeouts of aiohttp's own (a timer per request): asyncio.timeout below bounds it all.
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
                                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=None))
        try:
            async with asyncio.timeout(min(self.config.http_timeout, max(push.deadline - now, 0) + 0.05)):
                async with self.session.post(self.target, data=body, headers=headers, proxy=self.proxy) as response:
                    content = await response.read()
        except TimeoutError:
            return None, self._firebase_error(httpx.ReadTimeout("FCM did not answer in time")), None
        except aiohttp.ClientConnectionError as exc:
            return None, self._firebase_error(httpx.ConnectError(str(exc) or type(exc).__name__)), None
        except aiohttp.ClientError as exc:
            return None, self._firebase_error(httpx.RemoteProtocolError(str(exc) or type(exc).__name__)), None
        if response.status == 200:
            try:
                return json.loads(content)["name"], None, time.time()
            except (ValueError, KeyError, TypeError) as exc:
                error = httpx.DecodingError(f"FCM accepted the message with an unreadable answer: {exc}")
                return None, self._firebase_error(error), None
        # aiohttp has already decoded the body, so the httpx.Response must not try again.
        answer_headers = [(k, v) for k, v in response.headers.items()
                          if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        request = httpx.Request("POST", self.url)
        answer = httpx.Response(response.status, headers=answer_headers, content=content, request=request)
        refused = httpx.HTTPStatusError(f"FCM answered {response.status}", request=request, response=answer)
        return None, self._firebase_error(refused), None

    def _firebase_error(self, error: httpx.HTTPError) -> exceptions.FirebaseError:
        """firebase-admin's own exception for an error of its async (httpx) path."""
        return self.service._handle_fcm_httpx_error(error)

    async def _ensure_access_token(self, force: bool = False) -> None:
        """Fetch the OAuth2 token once for all pushes in flight, in a thread: google-auth's
        refresh blocks. `force` replaces a token FCM refused though it looked valid."""
        if self.credential.valid and not force:
            return
        stale = self.credential.token
        async with self.token_lock:
            if not self.credential.valid or (force and self.credential.token == stale):
                await self.loop.run_in_executor(self.auth_pool, self.credential.refresh, auth_requests.Request())


class _Breaker:
    """FCM failing as a whole (503, 500, 429, connection refused): one wait for everyone
    instead of every push retrying on its own, which costs a request, an error to parse
    and a log line per push per retry, in the server's process, while FCM can take none.

    Closed: requests go out. Once FCM answered BREAKER_THRESHOLD different tokens in a row
    with a SERVICE_ERRORS failure (no success, and no answer about a token, in between),
    it opens: no push is sent for `delay` seconds (BREAKER_OPEN_SECONDS, or FCM's
    Retry-After). Then it lets one request through, the probe, and holds the others until
    the probe's answer: FCM answered (accepted it, or refused that token) closes it and
    releases everyone; a failure (or a timeout) opens it again for twice as long, up to
    BREAKER_MAX_OPEN_SECONDS. A push waits for it only until its own retry limit (end of
    the ring window, FCM_RETRY_BUDGET_SECONDS): then it is reported with the error that
    opened the breaker. A few tokens failing on their own never open it.

    Lives on the sender's loop; no locks."""

    def __init__(self):
        self.open_until: float | None = None  # time.time(); None when closed
        self.delay = BREAKER_OPEN_SECONDS
        self.error: str | None = None          # the failure that opened it
        self.failing: set[str] = set()         # tokens that failed in a row while closed
        self.probing = False
        self.changed = asyncio.Event()         # set (and replaced) whenever it closes or a probe ends

    @property
    def closed(self) -> bool:
        return self.open_until is None

    async def admit(self, until: float) -> bool | None:
        """Wait until a request may go out. True: send (as the probe if the breaker is
        open); False: send, but not as the probe (it is closed); None: `until` came first."""
        while self.open_until is not None:
            now = time.time()
            if now >= self.open_until and not self.probing:
                self.probing = True
                return True
            wake = until if self.probing else min(until, self.open_until)
            if now >= until:
                return None
            changed = self.changed
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    await changed.wait()
            except TimeoutError:
                pass
        return False

    def outcome(self, token: str, error: str | None, exc: Exception | None, probe: bool) -> None:
        """What FCM answered one request (`error` None: accepted); `probe`: what admit said."""
        if error in SERVICE_ERRORS or (probe and error == "timeout"):
            if probe:
                self._open(error, exc, self.delay * 2)
            elif self.open_until is None:
                self.failing.add(token)
                if len(self.failing) >= BREAKER_THRESHOLD:
                    self._open(error, exc, BREAKER_OPEN_SECONDS)
            return
        if error == "timeout":
            return
        # FCM answered about this message (accepted it, or refused it): it is up.
        self.failing.clear()
        if self.open_until is not None:
            log.warning("fcm circuit closed: FCM answers again")
            self.open_until, self.error, self.delay, self.probing = None, None, BREAKER_OPEN_SECONDS, False
            self._notify()

    def probe_lost(self) -> None:
        """The probe ended without an answer (cancelled, expired, crashed): let another try."""
        if self.probing:
            self.probing = False
            self._notify()

    def _open(self, error: str, exc: Exception | None, delay: float) -> None:
        self.delay = min(max(delay, BREAKER_OPEN_SECONDS), BREAKER_MAX_OPEN_SECONDS)
        retry_after = _retry_after(exc) if error == "quota_exceeded" else None
        wait = retry_after if retry_after is not None else self.delay
        if self.open_until is None:
            log.warning("fcm circuit open: FCM failing (%s) for %s tokens in a row; holding pushes %.2fs",
                        error, len(self.failing), wait)
        self.open_until, self.error, self.probing = time.time() + wait, error, False
        self.failing.clear()
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


# Stands in for the token while a body template is encoded; JSON-escaped it cannot come
# from a real token, and a payload that contains it is encoded whole instead.
_TOKEN_MARK = "\x00callpull-token\x00"
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps does to a str


def _encode(service, push: Push, token: str, ttl: int) -> str:
    message = messaging.Message(
        data=push.data,
        android=messaging.AndroidConfig(priority="high", ttl=ttl, collapse_key=push.collapse_key),
    )
    # Set after construction: firebase-admin 7.7 deprecates the `token` argument in
    # favour of `fid` (a Firebase installation id, another kind of target), but
    # devices register FCM registration tokens, which go on the wire as `token`.
    message.token = token
    return json.dumps({"message": service.encode_message(message)}, separators=(",", ":"))


def _template(service, push: Push, ttl: int) -> tuple[bytes, bytes] | bytes:
    """(what comes before the token, what comes after) in the body of this payload;
    b"" when the payload itself contains the mark."""
    text = _encode(service, push, _TOKEN_MARK, ttl)
    mark = _json_string(_TOKEN_MARK)
    if text.count(mark) != 1:
        return b""
    prefix, suffix = text.split(mark)
    return prefix.encode(), suffix.encode()


def _refused_access_token(exc: Exception | None) -> bool:
    """FCM's 401 about our bearer token, not a third-party (APNs, Web Push) auth error."""
    return (isinstance(exc, exceptions.UnauthenticatedError) and not isinstance(exc, messaging.ThirdPartyAuthError)
            and getattr(exc.http_response, "status_code", None) == 401)


def _classify(exc: Exception | None) -> str:
    """Map firebase-admin's exception to an error of ERRORS.

    INVALID_ARGUMENT covers both a malformed token and a bad payload; only the former
    means the token is dead. FCM says which in the message ("The registration token is
    not a valid FCM registration token") or a field violation on `message.token`. This
    is the distinction fcm-django means to make (its "Invalid registration" check, and
    issue #223): deactivating on every INVALID_ARGUMENT would drop good tokens whenever
    a payload is wrong.
    """
    if isinstance(exc, messaging.UnregisteredError):
        return "unregistered"
    if isinstance(exc, messaging.SenderIdMismatchError):
        return "sender_id_mismatch"
    if isinstance(exc, exceptions.ResourceExhaustedError):  # QuotaExceededError included
        return "quota_exceeded"
    if isinstance(exc, messaging.ThirdPartyAuthError):
        return "third_party_auth"
    if isinstance(exc, exceptions.InvalidArgumentError):
        return "invalid_token" if _blames_token(exc) else "invalid_argument"
    if isinstance(exc, exceptions.UnavailableError):
        return "unavailable"
    if isinstance(exc, exceptions.InternalError):
        return "internal"
    if isinstance(exc, exceptions.DeadlineExceededError):
        return "timeout"
    return "unknown"


def _blames_token(exc: exceptions.FirebaseError) -> bool:
    if "registration token" in str(exc).lower():
        return True
    try:
        details = exc.http_response.json()["error"].get("details", [])
    except (AttributeError, ValueError, KeyError, TypeError):
        return False
    return any(
        violation.get("field") == "message.token"
        for detail in details if isinstance(detail, dict)
        for violation in detail.get("fieldViolations", []) if isinstance(violation, dict)
    )


def _retry_delay(error: str, exc: Exception | None, attempts: int) -> float:
    backoff = BACKOFF_SECONDS * 2 ** (attempts - 1)
    backoff += random.uniform(0, backoff / 2)
    if error == "quota_exceeded":
        retry_after = _retry_after(exc)
        if retry_after is not None:
            return retry_after + random.uniform(0, BACKOFF_SECONDS)
    return backoff


def _retry_after(exc: Exception | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if any."""
    response = getattr(exc, "http_response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
