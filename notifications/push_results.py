"""Recording push outcomes (FCM, APNs and Web Push) on their delivery rows, in batches.

`notifications.fcm` reports one `PushResult` per push, from its results thread. Writing
each one as it comes (a database connection, an UPDATE, and more for a dead token) put a
write per push into the same process and the same database as the ring reports, which
then queued behind it for the GIL and, on SQLite, for the single writer's lock. So
results are collected for up to `interval` (20 ms, as acks are in `fanout.AckBatcher`)
and written together by a thread of this module: one UPDATE per event and outcome (error
and attempts) whatever the number of pushes, one UPDATE for every token FCM says is dead,
then `on_accepted(device_id)` for each push FCM accepted (after its row says so: a ring
report deciding its answer reads the rows).

The thread keeps its database connection while results keep coming (IDLE_CLOSE_SECONDS).

Nothing is dropped: every result gets its row's `sent_at` / `error` / `attempts`; a
batch the database refuses is written again once, result by result, and the callbacks
run either way.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from operator import or_

from django.db import close_old_connections, connection
from django.db.models import Case, DateTimeField, Q, Value, When

from devices.models import Device
from notifications import metrics
from notifications.models import Delivery, Transport

log = logging.getLogger(__name__)

# The recorder's thread keeps its database connection while results keep coming (opening
# one cost ~0.8 ms of CPU on SQLite, more than the write) and closes it after this long
# without any.
IDLE_CLOSE_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    result: object  # a PushResult of notifications.fcm, .apns or .webpush (the same shape)
    event_id: str
    on_accepted: Callable[[object], None] | None
    transport: str = Transport.FCM


class PushRecorder:
    """Collects FCM results from any thread (`callback`), writes them in batches."""

    def __init__(self, interval: float = 0.02, batch: int = 500):
        self.interval, self.batch = interval, batch
        self._pending: list[Outcome] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._thread: threading.Thread | None = None

    def callback(self, event_id: str, on_accepted: Callable[[object], None] | None = None,
                 transport: str = Transport.FCM):
        """The `on_result` for `fcm.send_many` (or `apns.send_many`, with `transport`) of one
        event's pushes."""
        def on_result(result) -> None:
            self.add(Outcome(result, str(event_id), on_accepted, transport))
        return on_result

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self._pending.append(outcome)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fcm-record", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything added so far is recorded (tests, shutdown)."""
        with self._lock:
            return self._wake.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._wake.wait_for(lambda: self._pending, IDLE_CLOSE_SECONDS):
                    connection.close()  # results stopped coming: give the connection back
                    continue
            # Let the rest of the burst arrive (another push of the same ring, usually).
            time.sleep(self.interval)
            with self._lock:
                chunk, self._pending = self._pending[:self.batch], self._pending[self.batch:]
                self._busy = True
            try:
                _record(chunk)
            except Exception:
                log.exception("recording %d fcm result(s) failed", len(chunk))
                connection.close()
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()


def record(outcomes: list[Outcome]) -> None:
    """Write the outcomes, then run the callbacks of the accepted pushes (in order), on a
    connection of its own (the recorder's thread keeps one open while results flow)."""
    close_old_connections()
    try:
        _record(outcomes)
    finally:
        close_old_connections()


def _record(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        result = outcome.result
        metrics.push_outcome(str(outcome.transport), "accepted" if result.ok else result.error or "unknown")
    try:
        _write(outcomes)
    except Exception:
        log.warning("recording %d fcm result(s) together failed; one by one", len(outcomes), exc_info=True)
        connection.close()  # it may be broken; the next query opens a fresh one
        for outcome in outcomes:
            try:
                _write([outcome])
            except Exception:
                push = outcome.result.push
                log.exception("recording an fcm result failed device=%s ref=%s", push.device_id,
                              push.collapse_key)
    for outcome in outcomes:
        if outcome.result.ok and outcome.on_accepted is not None:
            try:
                outcome.on_accepted(outcome.result.push.device_id)
            except Exception:
                log.exception("on_fcm_accepted failed device=%s ref=%s", outcome.result.push.device_id,
                              outcome.result.push.collapse_key)


def _write(outcomes: list[Outcome]) -> None:
    groups: dict[tuple[str, str, int, str], list[Outcome]] = {}
    for outcome in outcomes:
        key = (outcome.event_id, outcome.result.error or "", outcome.result.attempts, outcome.transport)
        groups.setdefault(key, []).append(outcome)
    for (event_id, error, attempts, transport), group in groups.items():
        sent_at = None
        accepted = [o.result for o in group if o.result.sent_at]
        if accepted:
            sent_at = Case(*(When(device_id=r.push.device_id, then=Value(datetime.fromtimestamp(r.sent_at, tz=UTC)))
                             for r in accepted), default=Value(None), output_field=DateTimeField())
        (Delivery.objects.filter(event_id=event_id, device_id__in=[o.result.push.device_id for o in group],
                                 transport=transport)
         .update(sent_at=sent_at, error=error[:40], attempts=attempts))
    dead = [o.result.push for o in outcomes if o.result.drop_token and o.transport == Transport.FCM]
    _drop_apns([o for o in outcomes if o.result.drop_token and o.transport == Transport.APNS])
    _drop_webpush([o for o in outcomes if o.result.drop_token and o.transport == Transport.WEBPUSH])
    if dead:
        dropped = Device.all_objects.filter(reduce(or_, (Q(pk=p.device_id, fcm_token=p.token) for p in dead))).update(
            fcm_token="")
        for push, outcome in zip(dead, (o for o in outcomes if o.result.drop_token and o.transport == Transport.FCM),
                                 strict=True):
            log.info("fcm token dropped device=%s reason=%s call=%s", push.device_id, outcome.result.error,
                     push.collapse_key)
        if dropped < len(dead):
            log.info("%d of %d dead fcm tokens had already changed", len(dead) - dropped, len(dead))


def _drop_apns(outcomes: list[Outcome]) -> None:
    """APNs said a token is dead (Unregistered, BadDeviceToken, DeviceTokenNotForTopic): clear
    it, the PushKit token for a VoIP push, the alert token otherwise, unless it changed since."""
    for outcome in outcomes:
        push = outcome.result.push
        token_field = "apns_voip_token" if push.voip else "apns_token"
        dropped = Device.all_objects.filter(pk=push.device_id, **{token_field: push.token}).update(**{token_field: ""})
        log.info("apns token dropped device=%s field=%s reason=%s call=%s dropped=%s", push.device_id, token_field,
                 outcome.result.error, push.collapse_key, bool(dropped))


def _drop_webpush(outcomes: list[Outcome]) -> None:
    """The push service said a subscription is gone (404, 410): forget it, unless the
    device has subscribed again since (another endpoint)."""
    for outcome in outcomes:
        push = outcome.result.push
        dropped = Device.all_objects.filter(pk=push.device_id, webpush_subscription__endpoint=push.endpoint).update(
            webpush_subscription=None)
        log.info("webpush subscription dropped device=%s reason=%s call=%s dropped=%s", push.device_id,
                 outcome.result.error, push.collapse_key, bool(dropped))


RECORDER = PushRecorder()
atexit.register(RECORDER.flush, 2.0)
