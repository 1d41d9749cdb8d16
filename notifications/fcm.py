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
- Non-blocking: `send_many` returns at once. Results arrive in completion order, so
  the first device reached is known without waiting for the slowest.

Concurrency: a bounded pool of MAX_IN_FLIGHT threads makes the requests with
firebase-admin's synchronous `messaging.send` (requests/urllib3, one pooled
connection per thread); one background thread runs an asyncio loop that only
schedules: it hands each attempt to the pool, waits out backoffs without holding a
thread, and cuts a push off at its deadline. A third thread calls `on_result`, so a
slow callback (ORM writes) never stalls sending, and calls come in completion order.

Why threads and not firebase-admin's async path (`send_each_async`, httpx): measured
against the fake with 20 ms latency on a 2-CPU machine, 1,000 pushes took about
0.7 s with 64 threads against 3-4.5 s with httpx (100 pushes: 0.09 s against 0.3 s).
Over HTTP/1.1 httpx's connection pool costs time quadratic in its number of
connections, and a request through httpx costs more CPU than one through requests.
(To FCM itself httpx would use HTTP/2, but what we can measure is the fake.) Sending
is CPU-bound at that rate (~0.4 ms of Python per request), so more threads do not
help: 32 threads took 0.9 s, 128 took 0.8 s. On the same machine and fake,
fcm-django's way (`messaging.send_each`: one thread per message, results when all are
done) took 0.85-0.95 s for 1,000 and 0.10 s for 100, and a loop of `messaging.send`
22 s and 2.2 s. Here the first result comes after ~40 ms whatever the number of pushes.

Every poke at firebase-admin's private API (FCM_ENDPOINT, retries, connection pool)
lives in `_configure_service`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import firebase_admin
from django.conf import settings
from firebase_admin import credentials, exceptions, messaging
from google.auth import exceptions as auth_exceptions
from google.auth.transport import requests as auth_requests

log = logging.getLogger(__name__)

APP_NAME = "callpull"
# Sending threads, hence requests in flight and pooled connections. Sending is CPU-bound
# (~0.4 ms of Python per request) beyond about this many; see the module docstring.
MAX_IN_FLIGHT = 64
# First retry delay; it doubles with every attempt and gets up to 50% jitter so that
# pushes failing together do not retry together.
BACKOFF_SECONDS = 0.1

ERRORS = frozenset({
    "unregistered", "invalid_token", "sender_id_mismatch", "quota_exceeded", "unavailable", "internal",
    "timeout", "expired", "third_party_auth", "invalid_argument", "unknown",
})
RETRYABLE = frozenset({"quota_exceeded", "unavailable", "internal", "timeout"})


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
    """Point firebase-admin's messaging service at FCM_ENDPOINT, without its retries.

    Private API of firebase-admin 7.7.0's messaging._MessagingService, all of it here:
    - `_fcm_url` is hard-coded to https://fcm.googleapis.com; it becomes
      `{FCM_ENDPOINT}/v1/projects/{project}/messages:send`.
    - `_client` (a JsonHttpClient around google-auth's AuthorizedSession) has adapters
      that retry 4 times on 500/503 with 0.5 s backoff and, for fcm.googleapis.com only,
      a pool of 100 connections. The endpoint gets its own adapter (requests picks the
      longest matching prefix): no retries, a pool as large as the sending threads.
    - The session's `trust_env` makes requests scan the environment for proxies and
      read ~/.netrc on every request, about a third of the CPU a send costs; the
      proxies for the endpoint are read once here instead (a bearer token needs no netrc).
    The request timeout needs no poke: the App's `httpTimeout` option sets it.
    """
    import requests.adapters
    import requests.utils

    service._fcm_url = f"{config.endpoint}/v1/projects/{service._project_id}/messages:send"
    session = service._client.session
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_IN_FLIGHT, max_retries=0)
    session.mount(config.endpoint, adapter)
    session.proxies.update(requests.utils.get_environ_proxies(config.endpoint))
    session.trust_env = False


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
    deadline and its retries; a pool of threads that make the blocking requests; and a
    thread that reports results."""

    def __init__(self, config: _Config):
        self.config = config
        self.app = _new_app(config)
        self.credential = self.app.credential.get_credential()
        self.pool = concurrent.futures.ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="fcm-send")
        self.loop = asyncio.new_event_loop()
        self.token_lock = asyncio.Lock()
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
        # A request still running in a thread finishes within FCM_HTTP_TIMEOUT_SECONDS;
        # its push was already reported as cancelled.
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.results.put(None)
        self.result_thread.join(max(0.1, limit - time.monotonic()))
        firebase_admin.delete_app(self.app)
        log.info("fcm sender stopped")

    # --- on the loop ---

    def _start(self, pushes, on_result, retry_budget) -> None:
        for push in pushes:
            task = self.loop.create_task(self._deliver(push, on_result, retry_budget))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drain(self, timeout: float) -> None:
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("fcm shutdown cancelled %s pushes in flight", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

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
        while True:
            message_id, exc, error, accepted_at = await self._attempt(push)
            if error == "expired":
                log.info("fcm push expired before sending call=%s device=%s attempts=%s", push.collapse_key,
                         push.device_id, attempts)
                return PushResult(push, False, None, "expired", False, attempts, None)
            attempts += 1
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
        """One request, made in a pool thread: (message_id, None, None, accepted_at),
        (None, exception, error, None), or (None, None, "expired", None) when the deadline
        passed before it could be sent."""
        try:
            await self._ensure_access_token()
        except auth_exceptions.TransportError as exc:
            return None, exc, "unavailable", None
        except auth_exceptions.RefreshError as exc:
            return None, exc, "unknown", None
        request = self.loop.run_in_executor(self.pool, self._send_blocking, push)
        remaining = push.deadline - time.time()
        if remaining >= self.config.http_timeout:
            return await request  # the request's own timeout comes first
        try:
            # The push is worthless after its deadline: report it then, even if the
            # thread is still waiting for FCM.
            async with asyncio.timeout(max(remaining, 0) + 0.05):
                return await request
        except TimeoutError as exc:
            return None, exc, "timeout", None

    def _send_blocking(self, push: Push):
        now = time.time()
        if now >= push.deadline:
            return None, None, "expired", None
        message = messaging.Message(
            data=push.data,
            android=messaging.AndroidConfig(
                priority="high",
                ttl=max(1, math.floor(push.deadline - now)),
                collapse_key=push.collapse_key,
            ),
        )
        # Set after construction: firebase-admin 7.7 deprecates the `token` argument in
        # favour of `fid` (a Firebase installation id, another kind of target), but
        # devices register FCM registration tokens, which go on the wire as `token`.
        message.token = push.token
        try:
            return messaging.send(message, app=self.app), None, None, time.time()
        except exceptions.FirebaseError as exc:
            return None, exc, _classify(exc), None

    async def _ensure_access_token(self) -> None:
        """Fetch the OAuth2 token once for every thread: left to google-auth, each
        sending thread that finds it missing or expired would fetch its own."""
        if self.credential.valid:
            return
        async with self.token_lock:
            if not self.credential.valid:
                await self.loop.run_in_executor(self.pool, self.credential.refresh, auth_requests.Request())


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
