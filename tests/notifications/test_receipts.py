"""Delivery receipts: a sender that waits for the first ack (notifications.fanout)
gets it from the consumer, across the channel layer configured for the run
(in-memory, or Redis in CI's second pass), through the real DeviceConsumer."""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.utils import timezone

from notifications.events import FRAME_MESSAGE, device_group, frame
from notifications.fanout import fanout
from notifications.models import Delivery
from notifications.routing import websocket_urlpatterns
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def _connect(token: str) -> ApplicationCommunicator:
    scope = {"type": "websocket", "path": "/ws/v1/", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {token}".encode())], "subprotocols": []}
    socket = ApplicationCommunicator(URLRouter(websocket_urlpatterns), scope)
    await socket.send_input({"type": "websocket.connect"})
    assert (await socket.receive_output(timeout=5))["type"] == "websocket.accept"
    assert json.loads((await socket.receive_output(timeout=5))["text"])["type"] == "hello"
    return socket


async def _next_frame(socket, event_type: str = "call.ringing") -> dict:
    while True:  # skipping the socket's own device.presence
        received = json.loads((await socket.receive_output(timeout=5))["text"])
        if received["type"] == event_type:
            return received


async def _ack(socket, event_id: str) -> None:
    await socket.send_input({"type": "websocket.receive", "text": json.dumps({"type": "ack", "id": event_id})})


async def _receive(channel: str, timeout: float):
    try:
        return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)
    except TimeoutError:
        return None


async def _close(socket) -> None:
    await socket.send_input({"type": "websocket.disconnect", "code": 1000})
    await socket.wait(timeout=5)


@pytest.fixture
def tablet():
    return make_device(make_user(), kind="tablet", name="Tablet")


def _send_waiting(device, *, ack_by: float) -> tuple[str, str]:
    """A frame sent the way fanout(wait_ack=…) sends it; returns (event id, reply channel)."""
    async def go():
        layer = get_channel_layer()
        reply = await layer.new_channel()
        event_id, text = frame("call.ringing", call={"id": "c"})
        await layer.group_send(device_group(device.pk), {"type": FRAME_MESSAGE, "text": text, "event": event_id,
                                                         "ack_to": reply, "ack_by": ack_by})
        return event_id, reply
    return go()


def test_an_ack_someone_waits_for_is_forwarded_to_them_once(tablet):
    device, token = tablet

    async def scenario():
        socket = await _connect(token)
        event_id, reply = await _send_waiting(device, ack_by=time.time() + 10)
        assert (await _next_frame(socket))["id"] == event_id
        await _ack(socket, event_id)
        receipt = await _receive(reply, 5)
        await _ack(socket, event_id)  # the app retried its ack
        again = await _receive(reply, 0.3)
        await _close(socket)
        return receipt, again

    receipt, again = async_to_sync(scenario)()
    assert receipt == {"type": "ack.receipt", "device": str(device.pk)}
    assert again is None


def test_an_ack_after_the_waiter_gave_up_is_not_forwarded(tablet):
    device, token = tablet

    async def scenario():
        socket = await _connect(token)
        event_id, reply = await _send_waiting(device, ack_by=time.time() - 1)
        await _next_frame(socket)
        await _ack(socket, event_id)
        late = await _receive(reply, 0.3)
        await _close(socket)
        return late

    assert async_to_sync(scenario)() is None


def _ring(device, wait_ack: float):
    return fanout(event_type="call.ringing", payload={"call": {"id": "c"}}, devices=[device], ref=None,
                  now=timezone.now(), online={device.pk}, wait_ack=wait_ack)


def test_fanout_returns_at_the_first_receipt_and_records_it(tablet):
    device, token = tablet

    async def scenario():
        socket = await _connect(token)
        sending = asyncio.ensure_future(sync_to_async(_ring, thread_sensitive=False)(device, 10))
        ringing = await _next_frame(socket)
        await _ack(socket, ringing["id"])
        result = await asyncio.wait_for(sending, 5)  # long before the 10 s wait is over
        await _close(socket)
        return ringing, result

    ringing, result = async_to_sync(scenario)()
    assert result.event_id == ringing["id"] and result.acked == [str(device.pk)]
    assert Delivery.objects.get(event_id=ringing["id"]).delivered_at is not None


def test_fanout_without_a_receipt_gives_up_after_the_wait(tablet):
    device, token = tablet

    async def scenario():
        socket = await _connect(token)
        result = await sync_to_async(_ring, thread_sensitive=False)(device, 0.2)
        ringing = await _next_frame(socket)  # it was delivered, just never acknowledged
        await _close(socket)
        return ringing, result

    ringing, result = async_to_sync(scenario)()
    assert result.websocket == [device.pk] and result.acked == []
    assert ringing["id"] == result.event_id
    assert Delivery.objects.get(event_id=ringing["id"]).delivered_at is None
