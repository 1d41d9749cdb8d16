"""A ring report's reply channel does not outlive its wait: the acks nobody reads
any more (every device's after the first) are dropped, on the in-memory layer (CI's
first pass) and on Redis (its second), where they used to stay in the worker's
memory for ever."""

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from notifications import fanout
from notifications.layers import CLEAN_INTERVAL_SECONDS, RedisChannelLayer


def _holds(layer, channel: str) -> bool:
    if isinstance(layer, RedisChannelLayer):
        return layer.receiver is not None and channel in layer.receiver.inboxes
    return channel in layer.channels


async def _pump(layer) -> None:
    """Let a Redis layer's receive loop pull in what this worker was sent."""
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "pump"})
    await asyncio.wait_for(layer.receive(channel), 5)


def test_the_acks_after_the_first_are_dropped_once_the_wait_is_over(monkeypatch):
    monkeypatch.setattr(fanout, "REPLY_GRACE_SECONDS", 0.2)

    async def scenario():
        layer = get_channel_layer()
        sockets = [await layer.new_channel() for _ in range(3)]

        async def app(channel):  # each device acks its frame, as an app does
            message = await asyncio.wait_for(layer.receive(channel), 5)
            await layer.send(message["ack_to"], {"type": "ack.receipt", "device": channel})
            return message["ack_to"]

        apps = [asyncio.create_task(app(channel)) for channel in sockets]
        acked = await fanout._send_all(sockets, "{}", "e1", wait_ack=2.0)
        replies = set(await asyncio.gather(*apps))
        (reply,) = replies
        await _pump(layer)
        held_after_wait = _holds(layer, reply)
        await asyncio.sleep(2.0 + 0.4)  # wait_ack + grace: the forget is due
        await _pump(layer)
        return acked, held_after_wait, _holds(layer, reply)

    acked, held_after_wait, held_later = async_to_sync(scenario)()
    assert len(acked) == 1
    assert held_after_wait, "the two later acks were waiting in the layer"
    assert not held_later


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (CI's second pass)")
def test_the_redis_layer_drops_messages_nobody_received_for_its_expiry():
    async def scenario():
        layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL}], expiry=1, prefix=f"test-{time.time()}")
        orphan, live = await layer.new_channel(), await layer.new_channel()
        await layer.send(orphan, {"type": "late.frame"})
        await _pump(layer)
        seen = [_holds(layer, orphan)]
        await asyncio.sleep(1 + CLEAN_INTERVAL_SECONDS + 0.1)  # expired, and a sweep is due
        await layer.send(live, {"type": "x"})
        received = await asyncio.wait_for(layer.receive(live), 5)
        seen.append(_holds(layer, orphan))
        await layer.flush()
        await layer.close()
        return seen, received

    assert async_to_sync(scenario)() == ([True, False], {"type": "x"})
