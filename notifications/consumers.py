"""The device WebSocket, `/ws/v1/`.

Authentication is by `Authorization: Bearer <token>` on the handshake, or a
single-use `?ticket=` for browsers. A refused socket is accepted and then
closed with 4401 (a browser cannot read the status of a refused handshake).
A socket with an Origin header (a browser) must come from an allowed origin,
else it is closed with 4403; native clients send no Origin.

`DeviceConsumer` is an ASGI application of our own (the ASGI WebSocket spec),
not a subclass of Channels' consumers: it uses Channels only through its
documented functions (`get_channel_layer`, `database_sync_to_async`) and the
channel layer's spec methods, plus our layers' `attach` (notifications.layers).
"""

import asyncio
import json
import logging
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from devices import services as device_services
from devices.auth import bearer_token, device_for_token
from notifications import fanout, metrics, presence
from notifications.events import CLOSE_MESSAGE, FRAME_MESSAGE, device_group, frame, user_group
from notifications.signals import device_connected

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403


def _header(scope, name: bytes) -> str | None:
    # ASGI says names are lowercased, but uvicorn's websockets-sansio protocol (0.54,
    # under manage.py serve) passes them as the client wrote them: "Origin", say.
    for key, value in scope.get("headers", []):
        if key.lower() == name:
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


class _Stop(Exception):
    """Ends the consumer (the client is gone)."""


class DeviceConsumer:
    """One device's socket. Devices keep it open all day, idle nearly all the
    time, so what an idle one holds matters (bench/README.md, *memory*).

    Channels' consumers wait for the client and for the channel layer with two
    tasks of their own (await_many_dispatch). Here the consumer waits for the
    client in the server's own task and takes channel-layer messages as they come:
    pushed by the layer where it can (`attach`, notifications.layers), else pulled
    by one task. A message is handled at once, in a task that lives only that
    long, unless a handler is already running, in which case it waits its turn in
    `_pending`: handlers never overlap. A failure of that task or of the pull ends
    the consumer with that error (it reaches the server).

    Handlers: `connect`, `receive` / `receive_json`, `disconnect`, and one method
    per channel-layer message type, named in `layer_handlers`.
    """

    channel_layer_alias = "default"  # the CHANNEL_LAYERS entry it uses
    # Channel-layer message type (notifications.events) → the method that handles it.
    layer_handlers = {FRAME_MESSAGE: "frame_send", CLOSE_MESSAGE: "socket_close"}

    @classmethod
    def as_asgi(cls):
        """The ASGI application: one consumer per socket."""
        async def app(scope, receive, send):
            return await cls()(scope, receive, send)
        app.consumer_class = cls
        return app

    device_id = None
    user_id = None
    # event id → (reply channel, deadline) for frames whose sender waits for the
    # receipt (notifications.fanout); None until the first such frame, as most
    # sockets never get one.
    receipts = None

    # Dispatch state (see the class docstring); class defaults, so an idle socket
    # stores none of them.
    _busy = False       # a handler is running
    _idle = False       # the server's task is waiting for the client
    _pending = None     # channel-layer messages waiting for the running handler
    _handler_task = None
    _pull_task = None
    _error = None       # what ended the handler task or the pull
    _main = None

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self._server_send = send
        self._main = asyncio.current_task()
        attach = getattr(self.channel_layer, "attach", None)
        if attach is not None:
            attach(self.channel_name, self._deliver, self._failed)
        else:
            self._pull_task = asyncio.ensure_future(self._pull())
        try:
            await self._run(receive)
        except _Stop:
            pass
        except asyncio.CancelledError:
            if self._error is None:  # cancelled by the server, not by _failed()
                raise
            self._main.uncancel()
            if not isinstance(self._error, _Stop):
                raise self._error from None
        finally:
            if attach is not None:
                self.channel_layer.detach(self.channel_name)
            for task in (self._pull_task, self._handler_task):
                if task is not None:
                    task.cancel()
            if self.device_id is not None and self.channel_name in presence.LIVE:
                # Ended without disconnect(): its channel-layer connection died, say.
                # Forget the socket now, as disconnect() would have.
                await self._forget()

    async def _run(self, receive):
        while True:
            self._idle = True
            try:
                message = await receive()
            finally:
                self._idle = False
            while self._handler_task is not None:  # let the running handler finish first
                await self._handler_task
            if self._error is not None:
                raise self._error
            self._busy = True
            try:
                await self.dispatch(message)
                while self._pending:
                    await self.dispatch(self._pending.pop(0))
            finally:
                self._busy = False
            if self._error is not None:
                raise self._error

    def _deliver(self, message) -> bool:
        """A channel-layer message for this socket: handled now, or queued behind
        the running handler. False when full (the layer raises ChannelFull)."""
        if self._pending is None:
            self._pending = [message]
        elif len(self._pending) >= self.channel_layer.capacity:
            return False
        else:
            self._pending.append(message)
        if not self._busy and self._handler_task is None and self._error is None:
            self._handler_task = asyncio.get_running_loop().create_task(self._handle_pending())
        return True

    async def _handle_pending(self):
        self._busy = True
        try:
            while self._pending:
                await self.dispatch(self._pending.pop(0))
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 (re-raised in the consumer's own task)
            self._failed(error)
        finally:
            self._busy = False
            self._handler_task = None

    async def _pull(self):
        """For a layer that cannot push (channels_redis): receive and hand over."""
        try:
            while True:
                message = await self.channel_layer.receive(self.channel_name)
                if self._pending is None:
                    self._pending = []
                self._pending.append(message)  # the layer's own capacity applies upstream
                if not self._busy and self._handler_task is None and self._error is None:
                    self._handler_task = asyncio.get_running_loop().create_task(self._handle_pending())
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 (re-raised in the consumer's own task)
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._idle:  # waiting for the client: wake it up to end
            self._main.cancel()

    async def dispatch(self, message):
        # Every handler here that touches the database does so through
        # database_sync_to_async, which closes old connections itself: no trip to the
        # database thread per message for that.
        kind = message["type"]
        if kind == "websocket.receive":
            await self.receive(text_data=message.get("text"), bytes_data=message.get("bytes"))
        elif kind == "websocket.connect":
            await self.connect()
        elif kind == "websocket.disconnect":
            await self.disconnect(message.get("code", 1005))
            raise _Stop
        else:
            name = self.layer_handlers.get(kind)
            if name is None:
                raise ValueError(f"No handler for message type {kind}")
            await getattr(self, name)(message)

    async def base_send(self, message):
        # A send after the client left raises an OSError subclass (ASGI spec), e.g.
        # a frame that was in flight when it hung up. That must not end the consumer:
        # its websocket.disconnect is queued, and disconnect() forgets the connection.
        try:
            await self._server_send(message)
        except OSError:
            log.debug("dropped %s: the client is gone", message.get("type"))

    # The ASGI WebSocket messages this consumer sends.

    async def accept(self):
        await self.base_send({"type": "websocket.accept"})

    async def close(self, code: int | None = None):
        await self.base_send({"type": "websocket.close"} if code is None else {"type": "websocket.close",
                                                                                 "code": code})

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if text_data is not None:
            await self.base_send({"type": "websocket.send", "text": text_data})
        elif bytes_data is not None:
            await self.base_send({"type": "websocket.send", "bytes": bytes_data})
        else:
            raise ValueError("send() takes text_data or bytes_data")

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content))

    @staticmethod
    async def decode_json(text_data: str):
        return json.loads(text_data)

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
        # The ids only, not the Device: an idle socket needs nothing else of it.
        self.device_id, self.user_id = device.pk, device.user_id
        self._release_handshake()
        for group in self._groups():
            await self.channel_layer.group_add(group, self.channel_name)
        presence.LIVE.add(self.channel_name)  # before its row exists: a heartbeat in between keeps it
        metrics.websocket_opened()
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

    def _groups(self) -> list[str]:
        return [device_group(self.device_id), user_group(self.user_id)]

    def _release_handshake(self):
        """Empty the handshake's header list once the socket is authenticated: the
        server, the routers and this consumer all hold the scope for the socket's
        life, nothing reads the headers again, and they (the bearer token among
        them) are most of what the scope holds."""
        headers = self.scope.get("headers")
        if isinstance(headers, list):
            headers.clear()

    async def disconnect(self, code):
        if self.device_id is None:
            return
        await self._forget()
        log.info("websocket closed device=%s code=%s", self.device_id, code)

    async def _forget(self):
        if self.channel_name in presence.LIVE:
            metrics.websocket_closed()
        presence.LIVE.discard(self.channel_name)
        await fanout.ACKS.flush()  # this socket's last acks, recorded before it is gone
        try:
            for group in self._groups():
                await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:  # the channel layer is out of reach: its groups expire on their own
            log.warning("websocket groups not left device=%s", self.device_id, exc_info=True)
        went_offline = await database_sync_to_async(_close)(self.channel_name)
        if went_offline is not None:
            try:
                await presence.announce(went_offline, online=False)
            except Exception:
                log.warning("offline not announced device=%s", went_offline.pk, exc_info=True)

    async def receive_json(self, content, **kwargs):
        if self.device_id is None:
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
            await self.channel_layer.send(waiting[0], {"type": "ack.receipt", "device": str(self.device_id)})
        fanout.ACKS.add(event_id, self.device_id, timezone.now())

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
