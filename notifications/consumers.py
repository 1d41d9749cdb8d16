"""The device WebSocket, `/ws/v1/`.

Authentication is by `Authorization: Bearer <token>` on the handshake, or a
single-use `?ticket=` for browsers. A refused socket is accepted and then
closed with 4401 (a browser cannot read the status of a refused handshake).
A socket with an Origin header (a browser) must come from an allowed origin,
else it is closed with 4403; native clients send no Origin.
"""

import logging
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from devices import services as device_services
from devices.auth import bearer_token, device_for_token
from notifications import fanout, presence
from notifications.events import device_group, frame, user_group
from notifications.signals import device_connected

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope) -> bool:
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    normalized = f"{parts.scheme}://{parts.netloc}".lower()
    allowed = {o.rstrip("/").lower() for o in settings.WEBSOCKET_ALLOWED_ORIGINS}
    public = urlsplit(settings.PUBLIC_BASE_URL)
    allowed.add(f"{public.scheme}://{public.netloc}".lower())
    host = _header(scope, b"host")
    if host:  # same origin as the page that served it
        allowed.update({f"http://{host}".lower(), f"https://{host}".lower()})
    return normalized in allowed


def _authenticate(scope):
    close_old_connections()
    token = bearer_token(_header(scope, b"authorization"))
    if token is not None:
        return device_for_token(token)
    tickets = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("ticket")
    if tickets:
        return device_services.ws_ticket_redeem(ticket=tickets[0], now=timezone.now())
    return None


def _open(device, channel_name):
    return device_services.connection_open(device=device, channel_name=channel_name, worker=presence.WORKER_ID,
                                           now=timezone.now())


def _connected(device):
    device_connected.send(sender=DeviceConsumer, device=device)


def _close(channel_name):
    close_old_connections()
    return device_services.connection_close(channel_name=channel_name, now=timezone.now())


class DeviceConsumer(AsyncJsonWebsocketConsumer):
    device = None
    # event id → (reply channel, deadline) for frames whose sender waits for the
    # receipt (notifications.fanout); None until the first such frame, as most
    # sockets never get one.
    receipts = None

    async def __call__(self, scope, receive, send):
        async def send_while_open(message):
            # A send after the client left raises an OSError subclass (ASGI spec), e.g.
            # a frame that was in flight when it hung up. That must not end the consumer:
            # its websocket.disconnect is queued, and disconnect() forgets the connection.
            try:
                await send(message)
            except OSError:
                log.debug("dropped %s: the client is gone", message.get("type"))

        try:
            await super().__call__(scope, receive, send_while_open)
        finally:
            if self.device is not None and self.channel_name in presence.LIVE:
                # Ended without disconnect(): its channel-layer connection died, say.
                # Forget the socket now, as disconnect() would have.
                await self._forget()

    async def connect(self):
        await self.accept()
        if not origin_allowed(self.scope):
            log.info("websocket refused: origin %s", _header(self.scope, b"origin"))
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        device = await database_sync_to_async(_authenticate)(self.scope)
        if device is None:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.device = device
        self.groups = [device_group(device.pk), user_group(device.user_id)]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        presence.LIVE.add(self.channel_name)  # before its row exists: a heartbeat in between keeps it
        came_online = await database_sync_to_async(_open)(device, self.channel_name)
        _, hello = frame("hello", device={"id": str(device.pk), "name": device.name, "kind": device.kind},
                         heartbeat=settings.PRESENCE_HEARTBEAT_SECONDS)
        await self.send(text_data=hello)
        if came_online:
            await presence.announce(device, online=True)
        try:
            await database_sync_to_async(_connected)(device)
        except DatabaseError:  # catching up is best effort; the socket is open and counted
            log.warning("catch-up after connect failed device=%s: database unavailable", device.pk, exc_info=True)
        log.info("websocket open device=%s", device.pk)

    async def disconnect(self, code):
        if self.device is None:
            return
        await self._forget()
        log.info("websocket closed device=%s code=%s", self.device.pk, code)

    async def _forget(self):
        presence.LIVE.discard(self.channel_name)
        await fanout.ACKS.flush()  # this socket's last acks, recorded before it is gone
        try:
            for group in self.groups:
                await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:  # the channel layer is out of reach: its groups expire on their own
            log.warning("websocket groups not left device=%s", self.device.pk, exc_info=True)
        went_offline = await database_sync_to_async(_close)(self.channel_name)
        if went_offline is not None:
            try:
                await presence.announce(went_offline, online=False)
            except Exception:
                log.warning("offline not announced device=%s", went_offline.pk, exc_info=True)

    async def receive_json(self, content, **kwargs):
        if self.device is None:
            return
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "ping":
            await self.send_json({"type": "pong"})
        elif kind == "ack":
            await self.ack(content)
        else:
            await self.send_error("unknown_type", f"Unknown frame type {kind!r}; expected ack or ping.")

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if text_data is None:
            await self.send_error("malformed_frame", "Frames are JSON text.")
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            await self.send_error("malformed_frame", "Frames are JSON objects.")
            return
        await self.receive_json(content)

    async def ack(self, content):
        try:
            event_id = uuid.UUID(str(content.get("id")))
        except ValueError:
            await self.send_error("invalid_ack", "An ack carries the event's id.")
            return
        waiting = self.receipts.pop(str(event_id), None) if self.receipts else None
        if waiting is not None and waiting[1] > time.time():
            # Someone waits for this receipt (a ring report): tell them first.
            await self.channel_layer.send(waiting[0], {"type": "ack.receipt", "device": str(self.device.pk)})
        fanout.ACKS.add(event_id, self.device.pk, timezone.now())

    async def send_error(self, code: str, message: str):
        await self.send_json({"type": "error", "error": {"code": code, "message": message}})

    # Channel-layer handlers, named after the message types in notifications.events.

    async def frame_send(self, message):
        reply = message.get("ack_to")
        if reply:
            now = time.time()
            if self.receipts is None:
                self.receipts = {}
            elif len(self.receipts) > 16:  # forget receipts nobody waits for any more
                self.receipts = {key: value for key, value in self.receipts.items() if value[1] > now}
            self.receipts[message["event"]] = (reply, message["ack_by"])
        await self.send(text_data=message["text"])

    async def socket_close(self, message):
        await self.close(code=message["code"])
