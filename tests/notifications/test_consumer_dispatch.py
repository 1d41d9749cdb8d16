"""How DeviceConsumer waits and dispatches (notifications/consumers.py): no task of
its own while idle on the in-memory layer, handlers that never overlap, a failing
channel-layer handler or receive that ends the consumer, and the pull path for a
layer that cannot push (channels' own in-memory layer here). Our Redis layer pushes
too (CI's Redis pass)."""

import asyncio
import json
import time
from socket import socket as tcp_socket

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels import layers as channels_layers
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from devices.models import DeviceConnection
from notifications import presence
from notifications.consumers import DeviceConsumer
from notifications.events import FRAME_MESSAGE, device_group, frame
from notifications.layers import BoundedInbox, InMemoryChannelLayer, RedisChannelLayer
from notifications.routing import websocket_urlpatterns
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db(transaction=True)

OURS = {"default": {"BACKEND": "notifications.layers.InMemoryChannelLayer"}}
CHANNELS_OWN = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def _scope(token: str) -> dict:
    return {"type": "websocket", "path": "/ws/v1/", "query_string": b"",
            "headers": [(b"authorization", f"Bearer {token}".encode())], "subprotocols": []}


async def _connect(token: str, application=None) -> ApplicationCommunicator:
    socket = ApplicationCommunicator(application or URLRouter(websocket_urlpatterns), _scope(token))
    await socket.send_input({"type": "websocket.connect"})
    assert (await socket.receive_output(timeout=5))["type"] == "websocket.accept"
    assert json.loads((await socket.receive_output(timeout=5))["text"])["type"] == "hello"
    return socket


async def _next_text(socket) -> dict:
    while True:
        output = await socket.receive_output(timeout=5)
        if output["type"] == "websocket.send":
            received = json.loads(output["text"])
            if received["type"] != "device.presence":
                return received


async def _settle():
    for _ in range(20):  # let transient tasks (group sends, handlers) finish
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


async def _idle(socket):
    """Once the pong is back, connect() and every handler before it have returned:
    the consumer waits for the client."""
    await socket.send_input({"type": "websocket.receive", "text": json.dumps({"type": "ping"})})
    assert await _next_text(socket) == {"type": "pong"}
    await _settle()


async def _ended(socket):
    """Wait for the consumer to end on its own (ApplicationCommunicator.wait would
    cancel it on timeout)."""
    await asyncio.wait({socket.future}, timeout=5)
    assert socket.future.done(), "the consumer is still running"


def _channel_of(device) -> str:
    return DeviceConnection.objects.get(device=device).channel_name


@pytest.fixture
def tablets():
    user = make_user()
    return [make_device(user, kind="tablet") for _ in range(3)]


def test_an_idle_socket_holds_no_task_but_the_servers_on_the_in_memory_layer(settings, tablets):
    settings.CHANNEL_LAYERS = OURS

    async def scenario():
        await _settle()
        before = asyncio.all_tasks()
        sockets = [await _connect(token) for _, token in tablets]
        await _settle()
        grown = asyncio.all_tasks() - before
        for socket in sockets:
            await socket.send_input({"type": "websocket.disconnect", "code": 1000})
            await socket.wait(timeout=5)
        return grown, {socket.future for socket in sockets}

    grown, servers = async_to_sync(scenario)()
    assert grown == servers  # the communicator's task per socket, as the server's, and nothing else


def test_the_channel_layer_pushes_to_an_attached_consumer_and_queues_once_it_is_detached(settings, tablets):
    settings.CHANNEL_LAYERS = OURS
    (device, token), *_ = tablets

    async def scenario():
        layer = get_channel_layer()
        socket = await _connect(token)
        await _idle(socket)
        channel = next(iter(layer.attached))
        _, text = frame("call.ringing", call={"id": "c"})
        await layer.send(channel, {"type": FRAME_MESSAGE, "text": text, "event": "e"})
        pushed = await _next_text(socket)
        queued_before = dict(layer.channels)
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)
        attached_after = dict(layer.attached)
        await layer.send(channel, {"type": FRAME_MESSAGE, "text": text, "event": "e"})
        return pushed, queued_before, attached_after, channel in layer.channels

    pushed, queued_before, attached_after, queued_after = async_to_sync(scenario)()
    assert pushed["call"] == {"id": "c"}
    assert queued_before == {} and attached_after == {}
    assert queued_after  # nobody attached: an ordinary queue, which expires as Channels' do


def test_an_attached_consumer_gets_a_copy_and_a_full_one_raises_channel_full():
    layer = InMemoryChannelLayer(capacity=2)
    got = []
    message = {"type": "x", "data": [1]}

    async def scenario():
        layer.attach("specific.inmemory!a", lambda m: got.append(m) or len(got) <= 1)
        await layer.send("specific.inmemory!a", message)
        with pytest.raises(channels_layers.ChannelFull):
            await layer.send("specific.inmemory!a", message)

    async_to_sync(scenario)()
    assert got[0] == message and got[0] is not message and got[0]["data"] is not message["data"]


class _Slow(DeviceConsumer):
    """A DeviceConsumer whose `hold` frame keeps its handler running until released."""

    release: asyncio.Event | None = None

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "hold":
            await type(self).release.wait()
            await self.send_json({"type": "held"})
            return
        await super().receive_json(content, **kwargs)


@pytest.mark.parametrize("layers", [OURS, CHANNELS_OWN], ids=["push", "pull"])
def test_a_layer_message_waits_for_the_running_handler(settings, tablets, layers):
    settings.CHANNEL_LAYERS = layers
    (device, token), *_ = tablets

    async def scenario():
        _Slow.release = asyncio.Event()
        socket = await _connect(token, URLRouter([*_routes(_Slow)]))
        await _idle(socket)
        await socket.send_input({"type": "websocket.receive", "text": json.dumps({"type": "hold"})})
        await _settle()
        _, text = frame("call.ringing", call={"id": "c"})
        await get_channel_layer().group_send(device_group(device.pk), {"type": FRAME_MESSAGE, "text": text,
                                                                       "event": "e"})
        await _settle()
        _Slow.release.set()
        first, second = await _next_text(socket), await _next_text(socket)
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)
        return first, second

    first, second = async_to_sync(scenario)()
    assert first == {"type": "held"}
    assert second["type"] == "call.ringing"


def _routes(consumer):
    from django.urls import path
    return [path("ws/v1/", consumer.as_asgi())]


@pytest.mark.parametrize("layers", [OURS, CHANNELS_OWN], ids=["push", "pull"])
def test_a_failing_layer_handler_ends_the_consumer_with_its_error_and_forgets_the_socket(settings, tablets, layers):
    settings.CHANNEL_LAYERS = layers
    (device, token), *_ = tablets

    async def scenario():
        socket = await _connect(token)
        await _idle(socket)
        channel = await asyncio.to_thread(_channel_of, device)
        await get_channel_layer().send(channel, {"type": "no.such.handler"})
        await _ended(socket)
        with pytest.raises(ValueError, match="No handler for message type no.such.handler"):
            socket.future.result()
        return channel

    channel = async_to_sync(scenario)()
    assert channel not in presence.LIVE
    assert not DeviceConnection.objects.filter(device=device).exists()


class _Breaking(channels_layers.InMemoryChannelLayer):
    """A layer that cannot push and whose receive fails, as a lost Redis connection does."""

    async def receive(self, channel):
        await asyncio.sleep(0)
        raise ConnectionError("layer gone")


def test_a_pull_that_fails_ends_the_consumer_and_forgets_the_socket(settings, tablets):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}._Breaking"}}
    (device, token), *_ = tablets

    async def scenario():
        socket = ApplicationCommunicator(URLRouter(websocket_urlpatterns), _scope(token))
        await socket.send_input({"type": "websocket.connect"})
        await _ended(socket)
        with pytest.raises(ConnectionError, match="layer gone"):
            socket.future.result()

    async_to_sync(scenario)()
    assert not DeviceConnection.objects.filter(device=device).exists()


def test_the_handshake_headers_are_released_once_the_socket_is_authenticated(settings, tablets):
    settings.CHANNEL_LAYERS = OURS
    (device, token), *_ = tablets
    scope = _scope(token)

    async def scenario():
        socket = ApplicationCommunicator(URLRouter(websocket_urlpatterns), scope)
        await socket.send_input({"type": "websocket.connect"})
        assert (await socket.receive_output(timeout=5))["type"] == "websocket.accept"
        hello = json.loads((await socket.receive_output(timeout=5))["text"])
        await socket.send_input({"type": "websocket.receive", "text": json.dumps({"type": "ping"})})
        pong = await _next_text(socket)
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)
        return hello, pong

    hello, pong = async_to_sync(scenario)()
    assert hello["device"]["id"] == str(device.pk) and pong == {"type": "pong"}
    assert scope["headers"] == []


def test_acks_reach_a_waiting_sender_on_a_layer_that_cannot_push(settings, tablets):
    settings.CHANNEL_LAYERS = CHANNELS_OWN
    (device, token), *_ = tablets

    async def scenario():
        layer = get_channel_layer()
        socket = await _connect(token)
        reply = await layer.new_channel()
        event_id, text = frame("call.ringing", call={"id": "c"})
        await layer.group_send(device_group(device.pk), {"type": FRAME_MESSAGE, "text": text, "event": event_id,
                                                         "ack_to": reply, "ack_by": time.time() + 10})
        assert (await _next_text(socket))["id"] == event_id
        await socket.send_input({"type": "websocket.receive", "text": json.dumps({"type": "ack", "id": event_id})})
        receipt = await asyncio.wait_for(layer.receive(reply), 5)
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)
        return receipt

    assert async_to_sync(scenario)() == {"type": "ack.receipt", "device": str(device.pk)}


def test_header_names_are_matched_whatever_their_case(settings, tablets):
    """uvicorn's websockets-sansio protocol (manage.py serve) does not lowercase them."""
    settings.CHANNEL_LAYERS = OURS
    (device, token), *_ = tablets

    async def scenario(headers):
        socket = ApplicationCommunicator(URLRouter(websocket_urlpatterns), {**_scope(token), "headers": headers})
        await socket.send_input({"type": "websocket.connect"})
        assert (await socket.receive_output(timeout=5))["type"] == "websocket.accept"
        output = await socket.receive_output(timeout=5)
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(timeout=5)
        return output

    greeted = async_to_sync(scenario)([(b"Authorization", f"Bearer {token}".encode())])
    foreign = async_to_sync(scenario)([(b"Authorization", f"Bearer {token}".encode()),
                                       (b"Origin", b"https://evil.example")])
    assert json.loads(greeted["text"])["type"] == "hello"
    assert (foreign["type"], foreign["code"]) == ("websocket.close", 4403)


def test_a_bounded_inbox_drops_its_oldest_when_full():
    buffer = BoundedInbox(2)

    async def scenario():
        waiting = asyncio.ensure_future(buffer.get())
        await asyncio.sleep(0)
        buffer.put_nowait(1)
        first = await waiting
        for item in (2, 3, 4):
            buffer.put_nowait(item)
        rest = [buffer.get_nowait(), await buffer.get()]
        with pytest.raises(asyncio.QueueEmpty):
            buffer.get_nowait()
        return first, rest, buffer.empty()

    assert asyncio.run(scenario()) == (1, [3, 4], True)


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (CI's second pass)")
def test_idle_sockets_on_the_redis_layer_hold_no_task_but_the_servers_and_one_receiver(settings, tablets):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "notifications.layers.RedisChannelLayer",
                                           "CONFIG": {"hosts": [{"address": settings.REDIS_URL}],
                                                      "prefix": f"test-{time.time()}"}}}
    (device, token), *_ = tablets

    async def scenario():
        await _settle()
        before = asyncio.all_tasks()
        sockets = [await _connect(token) for _, token in tablets]
        await _settle()
        grown = asyncio.all_tasks() - before
        _, text = frame("call.ringing", call={"id": "c"})
        await get_channel_layer().group_send(device_group(device.pk), {"type": FRAME_MESSAGE, "text": text,
                                                                       "event": "e"})
        pushed = await _next_text(sockets[0])
        for socket in sockets:
            await socket.send_input({"type": "websocket.disconnect", "code": 1000})
            await socket.wait(timeout=5)
        await get_channel_layer().flush()
        return grown - {socket.future for socket in sockets}, pushed

    extra, pushed = async_to_sync(scenario)()
    assert [task.get_name() for task in extra] == [f"channel layer receiver {get_channel_layer().worker}"]
    assert pushed["call"] == {"id": "c"}


def test_a_redis_layer_that_cannot_receive_fails_its_attached_consumers_and_waiting_receives():
    """As a failing receive() ended a consumer that pulled: the sockets close and their
    apps reconnect (tests/e2e/test_faults.py restarts Redis under a server)."""
    with tcp_socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    layer = RedisChannelLayer(hosts=[{"address": f"redis://127.0.0.1:{port}/0"}])

    async def scenario():
        attached, waiting = await layer.new_channel(), await layer.new_channel()
        failures = []
        layer.attach(attached, lambda message: True, failures.append)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(layer.receive(waiting), 5)
        await _settle()
        return failures, dict(layer.receiver.attached), layer.receiver.task.done()

    failures, still_attached, receiver_done = async_to_sync(scenario)()
    assert [type(error) for error in failures] == [RedisConnectionError]
    assert still_attached == {} and receiver_done
