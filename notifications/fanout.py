"""Sending one event to a set of devices over every transport each has, at once: a
WebSocket frame to each connected one, and a push over each push transport of
PUSH_TRANSPORTS (an FCM data message to each with a token, an APNs push to each iOS
device with the token that event goes to (`apns_pushes_for`), a Web Push message to each
browser with a subscription), and a delivery record for each (device, transport).

The frame is serialised once; all group sends go out in one trip to the event
loop; the push transports run in the background (notifications.pushloop) and report
back per device, so a slow or failing push service never delays the WebSocket path or
the HTTP answer.

Receipts. A device was *reached* when it acknowledged the frame (`ack`), not
when the frame was handed to the channel layer: a layer may drop a message
(channels_redis drops group messages over capacity, silently, as ASGI allows)
and a socket may be dead without knowing it. A sender that needs to know at
once (`wait_ack`) gets a reply channel carried next to the frame; the consumer
that receives the device's ack forwards it there before anything else, so the
first receipt is one client round-trip away, across workers too. Every ack is
also recorded on its delivery row and announced with `deliveries_acked`, in batches (`ACKS`).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError
from django.db.models import Case, DateTimeField, F, FilteredRelation, Q, QuerySet, Value, When
from django.utils import timezone
from redis.exceptions import RedisError

from devices.models import Device, DeviceConnection, live_after
from notifications import apns, fcm, push_results, webpush
from notifications.events import FRAME_MESSAGE, frame
from notifications.layers import send_many
from notifications.models import Delivery, Transport
from notifications.signals import deliveries_acked

log = logging.getLogger(__name__)

# A ring report's reply channel is dropped this long after its wait: the consumers
# forward acks only until the wait's end (`ack_by`), and one may still be in flight.
REPLY_GRACE_SECONDS = 2.0


@dataclass
class FanoutResult:
    event_id: str
    websocket: list = field(default_factory=list)  # device ids a frame went to
    fcm: list = field(default_factory=list)        # device ids a push was queued for
    apns: list = field(default_factory=list)       # device ids an APNs push was queued for
    webpush: list = field(default_factory=list)    # device ids a Web Push message was queued for
    acked: list = field(default_factory=list)      # device ids whose ack came back while we waited

    @property
    def pushed(self) -> bool:
        """Whether a push was queued over any push transport."""
        return any(getattr(self, transport.name) for transport in PUSH_TRANSPORTS)


def online_device_ids(device_ids, now: datetime) -> dict:
    """The devices among `device_ids` with a live socket: device id → its sockets'
    channel names (a device may hold several). Usable as a set of device ids."""
    online: dict = {}
    for device_id, channel in (DeviceConnection.objects.live(now).filter(device_id__in=list(device_ids))
                               .values_list("device_id", "channel_name")):
        online.setdefault(device_id, []).append(channel)
    return online


def with_sockets(devices: QuerySet[Device], now: datetime) -> tuple[list[Device], dict]:
    """The devices of a query and, in the same query, their live sockets: (devices,
    device id → channel names) as `online_device_ids` gives them."""
    rows = devices.annotate(live=FilteredRelation("connections", condition=Q(connections__seen_at__gt=live_after(now))),
                            live_channel=F("live__channel_name"))
    found: dict = {}
    online: dict = {}
    for device in rows:  # one row per live socket, or one with none
        found.setdefault(device.pk, device)
        if device.live_channel is not None:
            online.setdefault(device.pk, []).append(device.live_channel)
    return list(found.values()), online


async def _send_all(channels: list[str], text: str, event_id: str, wait_ack: float) -> list[str]:
    """Send the frame to every socket's channel; with `wait_ack`, wait that long at
    most for the first receipt and return the ids of the devices whose ack came back.

    Frames go to the channel names the connection rows hold, not to groups:
    group memberships live only in the channel layer (Redis), and a Redis that
    lost its data (a restart without persistence, a failover) would leave open
    sockets in no group, unreachable while presence says online."""
    layer = get_channel_layer()
    message = {"type": FRAME_MESSAGE, "text": text, "event": event_id}
    reply = None
    if wait_ack > 0:
        # The default prefix: channels_redis receives every process-local channel through one
        # key per process, and a channel of another prefix would take that loop over.
        reply = await layer.new_channel()
        # The consumer forwards an ack only before `ack_by`: a receipt nobody waits
        # for any more would sit in the layer until it expires.
        message.update(ack_to=reply, ack_by=time.time() + wait_ack)
    try:
        await send_many(layer, channels, message)
    except (ConnectionError, OSError, RedisError):
        # One broken connection (a Redis restart, a proxy dropping it): once more on
        # a fresh one before giving up. A copy may arrive twice; apps de-duplicate.
        log.warning("sending %s failed; once more", event_id, exc_info=True)
        await send_many(layer, channels, message)
    if reply is None:
        return []
    try:
        async with asyncio.timeout(wait_ack):
            receipt = await layer.receive(reply)
    except TimeoutError:
        return []
    finally:
        # The other devices' acks still come (until `ack_by`) and nobody reads them.
        forget = getattr(layer, "forget", None)
        if forget is not None:
            asyncio.get_running_loop().call_later(wait_ack + REPLY_GRACE_SECONDS, forget, reply)
    return [receipt["device"]]


@dataclass
class Outgoing:
    """An event whose delivery records are written and whose frames and pushes are
    not sent yet (`fanout_prepare`, then `fanout_send`)."""
    result: FanoutResult
    event_type: str
    ref: object
    text: str = ""
    channels: list = field(default_factory=list)
    on_fcm_accepted: Callable[[object], None] | None = None
    deliveries: list = field(default_factory=list)  # the Delivery rows written, in the order written
    by_transport: dict = field(default_factory=dict)  # PushTransport name → its pushes

    @property
    def pushes(self) -> list:
        """The FCM pushes (kept for callers that read them)."""
        return self.by_transport.get(Transport.FCM, [])

    @property
    def apns_pushes(self) -> list:
        return self.by_transport.get(Transport.APNS, [])


@dataclass(frozen=True)
class PushTransport:
    """One push service, as the fan-out sees it. `pushes_for(event_type, devices, data=,
    collapse_key=, deadline=, no_push=)` builds the pushes of an event (each with a
    `device_id`); `send_many(pushes, on_result)` sends them in the background; `reaches(event_type,
    device)` says whether the device would get a push of that event (without building it)."""

    name: str  # a Transport value: the delivery rows' `transport` and FanoutResult's attribute
    enabled: Callable[[], bool]
    pushes_for: Callable[..., list]
    send_many: Callable[[list, Callable], None]
    reaches: Callable[[str, Device], bool]


def fanout_prepare(*, event_type: str, payload: dict, devices: Sequence[Device], ref, now: datetime,
                   fcm_data: dict[str, str] | None = None, deadline: datetime | None = None,
                   collapse_key: str = "", online: set | None = None,
                   on_fcm_accepted: Callable[[object], None] | None = None,
                   no_push: frozenset = frozenset()) -> Outgoing:
    """Write the delivery records of an event (inside the caller's transaction, if
    any); nothing leaves the process until `fanout_send`. Records first, frames
    second: a fast client's ack must find its delivery row."""
    if not devices:
        return Outgoing(result=FanoutResult(event_id=""), event_type=event_type, ref=ref)
    if online is None or (online and not isinstance(online, dict)):
        wanted = None if online is None else set(online)
        online = {pk: channels for pk, channels in online_device_ids([d.pk for d in devices], now).items()
                  if wanted is None or pk in wanted}
    event_id, text = frame(event_type, at=now, **payload)
    result = FanoutResult(event_id=event_id)
    result.websocket = [d.pk for d in devices if d.pk in online]
    channels = [channel for pk in result.websocket for channel in online[pk]]

    by_transport: dict[str, list] = {}
    if fcm_data is not None:
        data = {**fcm_data, "type": event_type, "id": event_id}
        expires = (deadline or now + timedelta(seconds=30)).timestamp()
        for transport in PUSH_TRANSPORTS:
            if not transport.enabled():
                continue
            pushes = transport.pushes_for(event_type, devices, data=data, collapse_key=collapse_key or str(ref),
                                          deadline=expires, no_push=no_push)
            by_transport[transport.name] = pushes
            setattr(result, transport.name, [push.device_id for push in pushes])

    sent_at = timezone.now()
    deliveries = Delivery.objects.bulk_create(
        [Delivery(event_id=event_id, event_type=event_type, ref=ref, device_id=pk, transport=Transport.WEBSOCKET,
                  queued_at=now, sent_at=sent_at, attempts=1) for pk in result.websocket]
        + [Delivery(event_id=event_id, event_type=event_type, ref=ref, device_id=push.device_id,
                    transport=name, queued_at=now) for name, pushes in by_transport.items() for push in pushes]
    )
    return Outgoing(result=result, event_type=event_type, ref=ref, text=text, channels=channels,
                    on_fcm_accepted=on_fcm_accepted, deliveries=deliveries, by_transport=by_transport)



# APNs: only `call.ringing` is a VoIP push (iOS 13+ terminates an app that gets a VoIP push
# and shows no CallKit call); these go as alert pushes to the device's `apns_token`.
APNS_ALERTS = {
    "call.answered_elsewhere": ("Call answered", "Answered on another device"),
    "call.ended": ("Call ended", "The call has ended"),
    "pull.requested": ("Move the call?", "Another device asks to take over the call"),
}


def apns_pushes_for(event_type: str, devices: Sequence[Device], *, data: dict[str, str], collapse_key: str,
                    deadline: float, no_push=frozenset()) -> list:
    """The APNs pushes of an event: `call.ringing` as a PushKit VoIP push to each
    `apns_voip_token`, the events of APNS_ALERTS as alert pushes to each `apns_token`,
    nothing for other events. The payload carries the FCM data message's fields."""
    voip = event_type == "call.ringing"
    if voip:
        payload, field_name = dict(data), "apns_voip_token"
    elif event_type in APNS_ALERTS:
        title, body = APNS_ALERTS[event_type]
        payload = {"aps": {"alert": {"title": title, "body": body}, "thread-id": collapse_key}, **data}
        field_name = "apns_token"
    else:
        return []
    pushes = []
    for device in devices:
        token = getattr(device, field_name)
        if not token or device.pk in no_push:
            continue
        try:
            pushes.append(apns.Push(device_id=str(device.pk), token=token, payload=payload,
                                    collapse_key=collapse_key, deadline=deadline, voip=voip))
        except ValueError as error:  # over APNs' payload limit: no push, the rest of the ring goes on
            log.warning("apns push not built event=%s device=%s: %s", event_type, device.pk, error)
    return pushes


def _fcm_pushes_for(event_type: str, devices: Sequence[Device], *, data: dict[str, str], collapse_key: str,
                    deadline: float, no_push=frozenset()) -> list:
    """FCM: a data message of every event to each device with a token."""
    return [fcm.Push(device_id=str(device.pk), token=device.fcm_token, data=data, collapse_key=collapse_key,
                     deadline=deadline)
            for device in devices if device.fcm_token and device.pk not in no_push]


def _apns_reaches(event_type: str, device: Device) -> bool:
    if event_type == "call.ringing":
        return bool(device.apns_voip_token)
    return event_type in APNS_ALERTS and bool(device.apns_token)


# Every push transport, in the order their pushes are handed over (each returns at once).
PUSH_TRANSPORTS = (  # looked up when called: tests replace a module's functions
    PushTransport(Transport.FCM, lambda: fcm.enabled(), _fcm_pushes_for,
                  lambda pushes, on_result: fcm.send_many(pushes, on_result),
                  lambda event_type, device: bool(device.fcm_token)),
    PushTransport(Transport.APNS, lambda: apns.enabled(), apns_pushes_for,
                  lambda pushes, on_result: apns.send_many(pushes, on_result), _apns_reaches),
    PushTransport(Transport.WEBPUSH, lambda: webpush.enabled(), webpush.pushes_for,
                  lambda pushes, on_result: webpush.send_many(pushes, on_result),
                  lambda event_type, device: event_type in webpush.EVENTS and bool(device.webpush_subscription)),
)


def pushable(event_type: str, devices: Sequence[Device]) -> bool:
    """Whether some device would get a push of this event over some enabled push transport."""
    return any(transport.enabled() and any(transport.reaches(event_type, device) for device in devices)
               for transport in PUSH_TRANSPORTS)


def fanout_send(outgoing: Outgoing, *, wait_ack: float = 0) -> FanoutResult:
    """Send what `fanout_prepare` recorded: pushes, then frames. With `wait_ack`
    (seconds) and a device online, return once the first device acknowledged the
    frame (`result.acked`) or after `wait_ack`."""
    result = outgoing.result
    if not result.event_id:
        return result
    # Pushes first: their round trips then overlap the wait for a WebSocket receipt. Outcomes
    # are recorded on the delivery rows in batches (notifications.push_results).
    for transport in PUSH_TRANSPORTS:
        pushes = outgoing.by_transport.get(transport.name)
        if pushes:
            transport.send_many(pushes, push_results.RECORDER.callback(
                result.event_id, outgoing.on_fcm_accepted, transport=transport.name))
    if result.websocket:
        result.acked = async_to_sync(_send_all)(outgoing.channels, outgoing.text, result.event_id, wait_ack)
    log.info("fanout %s ref=%s event=%s websocket=%d %s", outgoing.event_type, outgoing.ref, result.event_id,
             len(result.websocket), " ".join(f"{transport.name}={len(outgoing.by_transport.get(transport.name, []))}"
                                             for transport in PUSH_TRANSPORTS))
    return result


def fanout(*, wait_ack: float = 0, **event) -> FanoutResult:
    """Send an event to devices: `fanout_prepare(**event)`, then `fanout_send`.

    `event`: `event_type`, `payload`, `devices`, `ref`, `now`, and optionally
    `fcm_data` (the push transports' data: pushes only when given, and never to the devices in `no_push`),
    `deadline`, `collapse_key`, `online` (presence the caller already looked up) and `on_fcm_accepted`
    (called from a background thread with the device id of each push a push service accepted).
    """
    return fanout_send(fanout_prepare(**event), wait_ack=wait_ack)


def any_receipt(*, ref, event_type: str) -> bool:
    """Whether some device acknowledged an event of this type about `ref`, or a push
    service (any of PUSH_TRANSPORTS) accepted a push of one."""
    return (Delivery.objects.filter(ref=ref, event_type=event_type)
            .filter(Q(delivered_at__isnull=False)
                    | Q(transport__in=[transport.name for transport in PUSH_TRANSPORTS], sent_at__isnull=False,
                        error=""))
            .exists())


@dataclass(frozen=True)
class Receipt:
    event_id: object
    device_id: object
    event_type: str
    ref: object


def delivery_ack(*, event_id, device: Device, now: datetime) -> bool:
    """A device confirmed it received an event. False if there was no such delivery
    (or it was acknowledged already); True after recording it and sending
    `deliveries_acked`."""
    return bool(deliveries_ack([(event_id, device.pk, now)]))


def deliveries_ack(acks: Sequence[tuple]) -> list[Receipt]:
    """Record many acks, `(event id, device id, when)` each, in three queries
    whatever their number; send `deliveries_acked` with the receipts that were
    new (an event acked twice counts once). Returns those receipts."""
    if not acks:
        return []
    when = {}
    for event_id, device_id, at in acks:
        when.setdefault((str(event_id), str(device_id)), at)
    query = Q()
    for event_id, device_id in when:
        query |= Q(event_id=event_id, device_id=device_id)
    rows = list(Delivery.objects.filter(query, delivered_at__isnull=True)
                .values_list("pk", "event_id", "device_id", "event_type", "ref"))
    if not rows:
        return []
    stamps = {pk: when[(str(event_id), str(device_id))] for pk, event_id, device_id, _, _ in rows}
    updated = Delivery.objects.filter(pk__in=list(stamps), delivered_at__isnull=True).update(
        delivered_at=Case(*(When(pk=pk, then=Value(at)) for pk, at in stamps.items()),
                          output_field=DateTimeField()))
    if not updated:
        return []
    receipts, seen = [], set()
    for _, event_id, device_id, event_type, ref in rows:
        if (event_id, device_id) not in seen:
            seen.add((event_id, device_id))
            receipts.append(Receipt(event_id=event_id, device_id=device_id, event_type=event_type, ref=ref))
    deliveries_acked.send(sender=Delivery, receipts=receipts)
    return receipts


class AckBatcher:
    """Acks from every socket of this worker, recorded together: each ack would
    otherwise cost a trip to the database thread and three queries. The first
    receipt a ring report waits for does not wait for this (the consumer forwards
    it at once); the records and what follows from them lag by `interval`."""

    def __init__(self, interval: float = 0.02, batch: int = 500):
        self.interval, self.batch = interval, batch
        self.pending: list[tuple] = []
        self.flushing: asyncio.Task | None = None

    def add(self, event_id, device_id, at: datetime) -> None:
        self.pending.append((event_id, device_id, at))
        loop = asyncio.get_running_loop()
        if self.flushing is None or self.flushing.done() or self.flushing.get_loop() is not loop:
            self.flushing = loop.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:self.batch], self.pending[self.batch:]
            try:
                await database_sync_to_async(deliveries_ack)(chunk)
            except DatabaseError:
                # The database is out of reach for a moment: these receipts are not
                # recorded (a waiting ring report got its own already).
                log.warning("%d ack(s) not recorded: database unavailable", len(chunk), exc_info=True)


ACKS = AckBatcher()
