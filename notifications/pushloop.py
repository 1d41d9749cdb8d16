"""The background sender every push transport runs on (notifications.fcm, .apns, .webpush),
written once.

A transport hands `Push`es to `send_many` and gets one result per push through
`on_result`, from a background thread; `send_many` returns at once, so a slow or failing
push service never delays a ring report. What each transport adds is its request and how
it reads the answer; what they share is here:

- `Sender`: one asyncio loop in a thread of its own (`{name}-sender`) running a task per
  push (`Sender._send`, the transport's), and a second thread (`{name}-results`) calling
  `on_result` in completion order, so a slow callback (ORM writes) never stalls sending.
  The results finished in one loop iteration cross to that thread together (one queue put
  per batch, not per push: each put wakes the thread, which then contends for the GIL).
  `close` lets the pushes in flight finish for a while, cancels the rest (reported as
  "unknown"), delivers the last results and stops both threads.
- `Slot`: the running sender for the current settings, built on first use and replaced
  when the settings change (tests), closed at exit.
- `Breaker`: the push service failing as a whole. Closed: requests go out. Once the
  service failed for `threshold` different keys (tokens, subscriptions) in a row with no
  answer about a key in between, it opens: no push is sent for `open_seconds` (or the
  service's Retry-After); then one request goes through as the probe while the others
  wait for its answer: an answer closes it and releases everyone; a failure opens it
  again for twice as long, up to `max_open_seconds`. A push waits only until its own
  limit (the end of the ring window), then is reported with the error that opened it.
- `retry_after_seconds` and `retry_delay`: Retry-After (RFC 9110 §10.2.3: delta-seconds or
  an HTTP date) and the backoff with jitter between two tries of one push.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

# What a breaker is told about one request: the service failed (5xx, unreachable, …), it
# answered about this key (accepted it or refused it: it is up), or nothing either way.
FAILED, ANSWERED, UNKNOWN = "failed", "answered", "unknown"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if any."""
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


def retry_delay(retry_after: float | None, attempts: int, backoff: float) -> float:
    """Retry-After as the service gave it (plus a little jitter), else `backoff` doubling
    with every attempt plus up to 50% jitter, so pushes failing together do not retry together."""
    if retry_after is not None:
        return retry_after + random.uniform(0, backoff)
    delay = backoff * 2 ** (attempts - 1)
    return delay + random.uniform(0, delay / 2)


class Breaker:
    """The push service failing as a whole: one wait for everyone instead of every push
    retrying on its own (module docstring). Lives on the sender's loop; no locks.

    `threshold`, `open_seconds` and `max_open_seconds` are read when used, so a transport
    may take them from its module's constants (`limits`), which tests change."""

    service = "the push service"

    def __init__(self, name: str, threshold: int = 5, open_seconds: float = 0.25, max_open_seconds: float = 2.0,
                 limits: object | None = None):
        """`limits`: an object (a transport's module) whose BREAKER_THRESHOLD,
        BREAKER_OPEN_SECONDS and BREAKER_MAX_OPEN_SECONDS are read each time they are
        used (tests change a module's constants), in place of the three numbers."""
        self.name = name
        self._threshold, self._open_seconds, self._max_open_seconds = threshold, open_seconds, max_open_seconds
        self.limits = limits
        self.open_until: float | None = None  # time.time(); None when closed
        self.delay = self.open_seconds
        self.error: str | None = None          # the failure that opened it
        self.failing: set[str] = set()         # keys that failed in a row while closed
        self.probing = False
        # Pushes held while it is open, first come first served. Only the first is woken when
        # the probe may go (one timer per open period); all of them when it closes. Waking
        # every held push at each turn (hundreds, during an outage of the service) cost the
        # sender's loop, and the GIL it shares with the ring reports, a burst each time.
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the sender's, once a push waited

    @property
    def threshold(self) -> int:
        return self._threshold if self.limits is None else self.limits.BREAKER_THRESHOLD

    @property
    def open_seconds(self) -> float:
        return self._open_seconds if self.limits is None else self.limits.BREAKER_OPEN_SECONDS

    @property
    def max_open_seconds(self) -> float:
        return self._max_open_seconds if self.limits is None else self.limits.BREAKER_MAX_OPEN_SECONDS

    @property
    def closed(self) -> bool:
        return self.open_until is None

    async def admit(self, until: float) -> bool | None:
        """Wait until a request may go out. True: send as the probe (the breaker is open);
        False: send (it is closed); None: `until` came first."""
        while self.open_until is not None:
            now = time.time()
            if now >= self.open_until and not self.probing:
                self.probing = True
                return True
            if now >= until:
                self._arm()  # had this push been woken to probe, the next one in line is
                return None
            self.loop = asyncio.get_running_loop()
            turn = self.loop.create_future()
            self.waiting.append(turn)
            self._arm()
            try:
                async with asyncio.timeout(until - now):
                    await turn
            except TimeoutError:
                pass
            except BaseException:  # cancelled: a probe's turn it was given goes to the next
                turn.cancel()
                self._arm()
                raise
            finally:
                if not turn.done():
                    turn.cancel()  # skipped by _wake
        return False

    def verdict(self, key: str, verdict: str, error: str | None, probe: bool, retry_after: float | None = None) -> None:
        """What one request about `key` came to (FAILED, ANSWERED or UNKNOWN); `probe`:
        what `admit` said; `retry_after`: the service's Retry-After, seconds."""
        if verdict == FAILED:
            if probe:
                self._open(error, retry_after, self.delay * 2)
            elif self.open_until is None:
                self.failing.add(key)
                if len(self.failing) >= self.threshold:
                    self._open(error, retry_after, self.open_seconds)
            return
        if verdict == UNKNOWN:
            return
        self.failing.clear()
        if self.open_until is not None:
            log.warning("%s circuit closed: %s answers again", self.name, self.service)
            self.open_until, self.error, self.delay, self.probing = None, None, self.open_seconds, False
            self._notify()

    def probe_lost(self) -> None:
        """The probe ended without an answer (cancelled, expired, crashed): let another try."""
        if self.probing:
            self.probing = False
            self._notify()

    def _open(self, error: str | None, retry_after: float | None, delay: float) -> None:
        self.delay = min(max(delay, self.open_seconds), self.max_open_seconds)
        wait = retry_after if retry_after is not None else self.delay
        if self.open_until is None:
            log.warning("%s circuit open: %s failing (%s) for %s keys in a row; holding pushes %.2fs",
                        self.name, self.service, error, len(self.failing), wait)
        self.open_until, self.error, self.probing = time.time() + wait, error, False
        self.failing.clear()
        self._notify()

    def _notify(self) -> None:
        """Closed: every held push goes. Open (again) or probe lost: the next in line is woken
        when the probe may go."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.open_until is None:
            self._wake(len(self.waiting))
        else:
            self._arm()

    def _arm(self) -> None:
        """One timer for the open period's end, if a push waits and no probe is out."""
        if self.timer is not None or self.probing or self.open_until is None or not self.waiting:
            return
        self.timer = self.loop.call_later(max(0.0, self.open_until - time.time()), self._probe_turn)

    def _probe_turn(self) -> None:
        self.timer = None
        self._wake(1)

    def _wake(self, count: int) -> None:
        while count > 0 and self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                count -= 1


class Sender:
    """An asyncio loop in a thread running one task per push, and a thread reporting results.

    A transport subclasses it: sets its own state, then calls `super().__init__`, which
    starts the threads; implements `_send(push, *args)` (on the loop: the push's tries,
    returning its result) and `_unknown(push)` (the result of a push cancelled or crashed);
    may override `_start` (how a burst is started), `_aclose` (close clients, on the loop,
    after the drain) and `_stopped` (after the threads, e.g. a thread pool)."""

    name = "push"

    def __init__(self, config, loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.loop = loop or asyncio.new_event_loop()
        self.tasks: set[asyncio.Task] = set()
        self.results: queue.SimpleQueue = queue.SimpleQueue()  # lists of (on_result, result); None: stop
        self.outbox: list = []  # this loop iteration's results, not yet handed over
        self.loop_thread = threading.Thread(target=self._run_loop, name=f"{self.name}-sender", daemon=True)
        self.result_thread = threading.Thread(target=self._run_results, name=f"{self.name}-results", daemon=True)
        self.loop_thread.start()
        self.result_thread.start()

    # --- the threads ---

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _run_results(self) -> None:
        while (batch := self.results.get()) is not None:
            for on_result, result in batch:
                try:
                    on_result(result)
                except Exception:
                    log.exception("%s on_result failed call=%s device=%s", self.name, result.push.collapse_key,
                                  result.push.device_id)

    # --- called from any thread ---

    def submit(self, pushes: list, on_result: Callable, *args) -> None:
        """Start sending `pushes` on the loop; `on_result(result)` once per push."""
        self.loop.call_soon_threadsafe(self._start, pushes, on_result, *args)

    def run(self, coroutine, timeout: float):
        """Run a coroutine on the sender's loop and wait for its value."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self, timeout: float) -> None:
        limit = time.monotonic() + timeout
        try:
            self.run(self._drain(timeout), timeout + 2)
        except Exception:
            log.exception("%s sender did not drain cleanly", self.name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(max(0.1, limit - time.monotonic()))
        if not self.loop_thread.is_alive():
            self.loop.close()
        self._stopped()
        self.results.put(None)
        self.result_thread.join(max(0.1, limit - time.monotonic()))
        log.info("%s sender stopped", self.name)

    # --- on the loop ---

    def _start(self, pushes, on_result, *args) -> None:
        for push in pushes:
            self._spawn(self._deliver(push, on_result, *args))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _deliver(self, push, on_result, *args) -> None:
        try:
            result = await self._send(push, *args)
        except asyncio.CancelledError:
            self._report(on_result, self._unknown(push))
            raise
        except Exception:
            log.exception("%s push crashed call=%s device=%s", self.name, push.collapse_key, push.device_id)
            result = self._unknown(push)
        self._report(on_result, result)

    def _report(self, on_result, result) -> None:
        """Queue a result for the results thread; handed over at the end of this loop iteration."""
        if not self.outbox:
            self.loop.call_soon(self._hand_over)
        self.outbox.append((on_result, result))

    def _hand_over(self) -> None:
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.results.put(batch)

    async def _drain(self, timeout: float) -> None:
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%s shutdown cancelled %s pushes in flight", self.name, len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
        self._hand_over()
        await self._aclose()

    # --- the transport's ---

    async def _send(self, push, *args):
        raise NotImplementedError

    def _unknown(self, push):
        raise NotImplementedError

    async def _aclose(self) -> None:
        """Close the transport's clients (on the loop, once the pushes are done)."""

    def _stopped(self) -> None:
        """The loop has stopped (release what is not on it)."""


S = TypeVar("S", bound=Sender)


class Slot(Generic[S]):
    """The running sender of one transport for the current settings: `get()` builds it on
    first use (`build(config)`) and replaces it when `config()` changes (tests);
    `shutdown` closes it and forgets it, so the next push starts afresh. Closed at exit."""

    def __init__(self, config: Callable[[], object], build: Callable[[object], S]):
        self.config, self.build = config, build
        self.lock = threading.Lock()
        self.current: S | None = None
        atexit.register(self.shutdown, 1.0)

    def get(self) -> S:
        config = self.config()
        with self.lock:
            if self.current is not None and self.current.config != config:
                stale, self.current = self.current, None
                stale.close(1.0)
            if self.current is None:
                self.current = self.build(config)
            return self.current

    def shutdown(self, timeout: float = 5.0) -> None:
        with self.lock:
            sender, self.current = self.current, None
        if sender is not None:
            sender.close(timeout)
