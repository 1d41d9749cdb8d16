"""The Redis channel layer, sized for thousands of sockets per worker.

channels_redis as shipped has two limits that lose frames at that scale:

- Every socket of a worker is a *process-specific* channel, and all of them
  share ONE Redis key (`specific.<worker prefix>!`). The layer's `capacity`
  is checked against that shared key, so with capacity 1,000 a worker whose
  5,000 sockets have 1,000 messages in flight drops every further group
  message, silently (ASGI allows dropping group messages over capacity). A
  reconnect storm, each socket announcing its presence, is enough.
  `SPECIFIC_CAPACITY` sizes that key for the whole worker; ordinary channels
  keep `capacity`.
- redis-py's asyncio pool raises `MaxConnectionsError` once 100 commands are
  in flight (5,000 sockets disconnecting at once, a burst of ring reports). A
  blocking pool makes the next command wait for a free connection instead.

It also sends one message to many channels in one round trip per Redis
server (`send_many`, what `group_send` does after looking the group up), for
fan-outs addressed by channel name (notifications.fanout).

Nothing else changes: same keys, same wire format, so workers with and without
this class interoperate.
"""

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from copy import deepcopy

from channels import layers as channels_layers
from channels.exceptions import ChannelFull
from channels_redis import core
from redis.asyncio import BlockingConnectionPool

log = logging.getLogger(__name__)

# How often the in-memory layer looks for expired messages and group memberships.
CLEAN_INTERVAL_SECONDS = 1.0


class InMemoryChannelLayer(channels_layers.InMemoryChannelLayer):
    """Channels' in-memory layer (the embedded default, one process), less two costs:

    - per message: it looks through every channel and every group membership for
      expired ones on each receive, so each frame cost O(sockets) (about 15% of the
      server's time with 1,000 sockets). Here that sweep runs at most once a
      second; an expired message may live a second longer.
    - per idle socket: a consumer waiting in `receive()` holds an asyncio.Queue
      (four deques), its getter future and a task. A consumer may instead
      `attach(channel, deliver)`: `send` then hands each message of that channel
      straight to `deliver(message)` (a plain function, called in the sender's
      turn of the event loop), which returns False when the consumer is full
      (`ChannelFull`, as a full queue would). `detach(channel)` ends it; messages
      sent after that queue up as for any channel nobody receives.

    Written against channels 4.3.2's InMemoryChannelLayer (its `send`, `channels`
    and `_clean_expired`); tests/notifications/test_consumer_dispatch.py checks both."""

    _cleaned_at = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attached: dict[str, Callable[[dict], bool]] = {}

    def attach(self, channel: str, deliver: Callable[[dict], bool]) -> None:
        self.require_valid_channel_name(channel)
        self.attached[channel] = deliver

    def detach(self, channel: str) -> None:
        self.attached.pop(channel, None)

    def forget(self, channel: str) -> None:
        """Drop what waits for a channel nobody will receive from again (a ring
        report's reply channel once its wait is over)."""
        self.channels.pop(channel, None)

    async def send(self, channel, message):
        deliver = self.attached.get(channel)
        if deliver is None:
            return await super().send(channel, message)
        assert isinstance(message, dict), "message is not a dict"
        if not deliver(deepcopy(message)):  # a copy, as Channels' queue holds one
            raise ChannelFull(channel)

    def _clean_expired(self):
        now = time.monotonic()
        if now - self._cleaned_at < CLEAN_INTERVAL_SECONDS:
            return
        self._cleaned_at = now
        super()._clean_expired()


class Inbox:
    """The part of asyncio.Queue that uvicorn's protocol and channels_redis's
    receive buffer use (put_nowait, get, get_nowait, empty), with asyncio.Queue's
    semantics for these, in two small lists instead of its four deques (about
    3 KB per socket, whose queue is nearly always empty)."""

    __slots__ = ("_items", "_getters")

    def __init__(self):
        self._items = []
        self._getters = []

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self):
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def put_nowait(self, item) -> None:
        self._items.append(item)
        self._wake_next()

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break

    async def get(self):
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass
                if self._items and not getter.cancelled():
                    self._wake_next()  # the item this getter was woken for goes to the next one
                raise
        return self._items.pop(0)


class BoundedInbox(Inbox):
    """channels_redis's BoundedQueue (a full buffer drops its oldest message, which
    only happens to a consumer that stopped reading) on an Inbox."""

    __slots__ = ("maxsize",)

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def put_nowait(self, item) -> None:
        if 0 < self.maxsize <= len(self._items):
            self._items.pop(0)
        super().put_nowait(item)


# Messages in flight for all the sockets of one worker (see above).
SPECIFIC_CAPACITY = 50_000


class RedisChannelLayer(core.RedisChannelLayer):
    def __init__(self, *args, max_connections: int = 64, pool_timeout: float = 10.0, channel_capacity=None,
                 **kwargs):
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        capacities = {"specific.*": SPECIFIC_CAPACITY, **(channel_capacity or {})}
        super().__init__(*args, channel_capacity=capacities, **kwargs)
        # Each waiting consumer's buffer: an Inbox, not an asyncio.Queue (channels_redis
        # 4.3.0 uses put_nowait, get, get_nowait and empty on it).
        self.receive_buffer = collections.defaultdict(functools.partial(BoundedInbox, self.capacity))
        self._unread: set[str] = set()
        self._swept_at = time.monotonic()

    # channels_redis pulls every message of this worker's channels into `receive_buffer`,
    # one buffer per channel, and deletes a buffer only when a receive() on it ends. A
    # message for a channel nobody receives from any more (the three acks of a ring after
    # the first, which the waiting report already had; a frame that reached a socket just
    # closed) stayed in this worker's memory for ever: about three messages and a buffer
    # per ring report.

    def forget(self, channel: str) -> None:
        """Drop what waits for a channel nobody will receive from again (a ring
        report's reply channel once its wait is over)."""
        inbox = self.receive_buffer.get(channel)
        if inbox is not None and not inbox._getters:
            del self.receive_buffer[channel]

    async def receive(self, channel):
        self._sweep_unread()
        return await super().receive(channel)

    def _sweep_unread(self) -> None:
        """At most once per `expiry`: drop the buffers that held messages with no
        receiver waiting at the last sweep and still do (so their messages are older
        than `expiry`, when the layer would have expired them anyway)."""
        now = time.monotonic()
        if now - self._swept_at < self.expiry:
            return
        self._swept_at = now
        unread = {channel for channel, inbox in self.receive_buffer.items() if inbox._items and not inbox._getters}
        for channel in unread & self._unread:
            inbox = self.receive_buffer.get(channel)
            if inbox is not None and not inbox._getters:
                log.info("dropped %s unread messages for %s", len(inbox._items), channel)
                del self.receive_buffer[channel]
        self._unread = unread - self._unread

    def create_pool(self, index):
        host = dict(self.hosts[index])
        address = host.pop("address", None)
        if address is None:  # sentinel or keyword hosts: as channels_redis does it
            return super().create_pool(index)
        return BlockingConnectionPool.from_url(address, max_connections=self.max_connections,
                                               timeout=self.pool_timeout, **host)

    async def send_many(self, channels: list[str], message: dict) -> int:
        """Send `message` to every channel; messages for the channels of one worker
        travel together. Returns how many channels were over capacity (dropped)."""
        if not channels:
            return 0
        by_connection, messages, capacities = self._map_channel_keys_to_connection(channels, message)
        dropped = 0
        for index, keys in by_connection.items():
            connection = self.connection(index)
            now = time.time()
            dropped += await connection.eval(
                _SEND_MANY, len(keys), *keys, *[messages[key] for key in keys], *[capacities[key] for key in keys],
                now - int(self.expiry), now, int(self.expiry))
        if dropped:
            log.warning("%s of %s channels over capacity: message dropped", dropped, len(channels))
        return dropped


# Per key: drop expired messages, then add the message unless the key is full.
_SEND_MANY = """
local n = #KEYS
local oldest, now, expiry = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local over = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, oldest)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over = over + 1
    end
end
return over
"""


async def send_many(layer, channels: list[str], message: dict) -> int:
    """`layer.send_many` where the layer has it; else one `send` per channel.
    Returns how many channels were full (their copy was dropped)."""
    if hasattr(layer, "send_many"):
        return await layer.send_many(channels, message)
    results = await asyncio.gather(*(layer.send(channel, message) for channel in channels), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ChannelFull):
            raise result
    dropped = sum(isinstance(result, ChannelFull) for result in results)
    if dropped:
        log.warning("%s of %s channels full: message dropped", dropped, len(channels))
    return dropped
