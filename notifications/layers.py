"""Our channel layers: the ASGI channel layer spec, implemented here in full.

Channels defines the spec (send, receive, new_channel; the groups and flush
extensions) and `channels.layers.BaseChannelLayer`, its documented base class
(its channel and group name checks are all we use of it). Both layers below are
written on that and nothing else of Channels: their storage, expiry and wire format are ours, so no
upgrade of Channels or channels_redis can change them underneath us. What they
add to the spec, for thousands of idle sockets per worker:

- `attach(channel, deliver, failed=None)` / `detach(channel)`: the layer hands
  each message for `channel` straight to `deliver(message)` (a plain function,
  called in the event loop), which returns False when the consumer is full. A
  socket that waits this way holds no task, queue or future of the layer's
  (notifications.consumers.DeviceConsumer). If the layer can no longer receive
  (its Redis connection died) it calls `failed(error)` and detaches the channel,
  as a failing `receive()` would have ended a consumer that pulls.
- `send_many(channels, message)`: one message to many channels, in one round
  trip to Redis (notifications.fanout addresses sockets by channel name).
- `forget(channel)`: drop what waits for a channel nobody will receive from
  again (a ring report's reply channel once its wait is over).

`InMemoryChannelLayer` is the embedded default (one process).
`RedisChannelLayer` is for several workers: process-specific channels (every
socket's, every reply channel) live in ONE Redis list per worker process, which
one task of that worker pops (BLPOP) and hands out: attached consumers get their
messages pushed, `receive()` waits on a small in-process inbox. It reads the
CONFIG keys channels_redis takes (hosts, prefix, expiry, group_expiry, capacity,
channel_capacity) and uses only redis-py's public client (a BlockingConnectionPool,
so a burst waits for a free connection instead of failing with
MaxConnectionsError). One Redis server (no sharding); its keys are not
channels_redis's, so every worker of a deployment must run this layer.
"""

import asyncio
import fnmatch
import logging
import random
import re
import string
import time
import uuid
from collections.abc import Callable
from copy import deepcopy

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from redis.asyncio import BlockingConnectionPool, Redis

log = logging.getLogger(__name__)

# How often a layer looks for expired messages (and the in-memory one for expired
# group memberships): at most once per this many seconds, not on every receive.
CLEAN_INTERVAL_SECONDS = 1.0
GROUP_CLEAN_INTERVAL_SECONDS = 60.0

# Messages in flight for all the process-specific channels of one worker (all its
# sockets share one Redis list); ordinary channels keep `capacity`.
SPECIFIC_CAPACITY = 50_000


class Inbox:
    """A FIFO with asyncio.Queue's semantics for put_nowait, get, get_nowait and
    empty, in two small lists instead of its four deques (a channel's inbox is
    nearly always empty)."""

    __slots__ = ("items", "getters")

    def __init__(self):
        self.items = []
        self.getters = []

    def empty(self) -> bool:
        return not self.items

    def waited_on(self) -> bool:
        return bool(self.getters)

    def fail(self, error: BaseException) -> None:
        """Every waiting get() raises `error`."""
        getters, self.getters = self.getters, []
        for getter in getters:
            if not getter.done():
                getter.set_exception(error)

    def get_nowait(self):
        if not self.items:
            raise asyncio.QueueEmpty
        return self.items.pop(0)

    def put_nowait(self, item) -> None:
        self.items.append(item)
        self._wake_next()

    def _wake_next(self) -> None:
        while self.getters:
            getter = self.getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break

    async def get(self):
        while not self.items:
            getter = asyncio.get_running_loop().create_future()
            self.getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                try:
                    self.getters.remove(getter)
                except ValueError:
                    pass
                if self.items and not getter.cancelled():
                    self._wake_next()  # the item this getter was woken for goes to the next one
                raise
        return self.items.pop(0)


class BoundedInbox(Inbox):
    """An Inbox that keeps at most `maxsize` items (0: no bound); a full one drops
    its oldest, which only happens to a consumer that stopped reading."""

    __slots__ = ("maxsize",)

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self.items)

    def put_nowait(self, item) -> None:
        if self.full():
            self.items.pop(0)
        super().put_nowait(item)


class _Capacities:
    """`capacity` and `channel_capacity` as the spec's capacity extension defines
    them: the first glob (or compiled regex) that matches a channel name wins."""

    def __init__(self, default: int, per_channel: dict | None):
        self.default = default
        self.patterns = [(p if hasattr(p, "match") else re.compile(fnmatch.translate(p)), value)
                         for p, value in (per_channel or {}).items()]

    def __call__(self, channel: str) -> int:
        for pattern, value in self.patterns:
            if pattern.match(channel):
                return value
        return self.default


class InMemoryChannelLayer(BaseChannelLayer):
    """The channel layer for one process (the embedded default).

    Expired messages and group memberships are swept at most once a second (an
    expired message may live a second longer), not on every receive: that sweep
    looks at every channel and membership, and ran on every frame in Channels'
    own in-memory layer (about 15% of the server's time with 1,000 sockets). A
    channel whose message expired unread leaves its groups, as in Channels'."""

    extensions = ["groups", "flush"]

    def __init__(self, expiry=60, group_expiry=86400, capacity=100, channel_capacity=None, **kwargs):
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity, **kwargs)
        self.capacity_of = _Capacities(capacity, channel_capacity)
        self.group_expiry = group_expiry
        self.channels: dict[str, BoundedInbox] = {}  # channel → inbox of (expires at, message)
        self.groups: dict[str, dict[str, float]] = {}  # group → channel → joined at
        self.attached: dict[str, Callable[[dict], bool]] = {}
        self.cleaned_at = self.groups_cleaned_at = time.monotonic()

    # Push delivery (see the module docstring).

    def attach(self, channel: str, deliver: Callable[[dict], bool], failed=None) -> None:
        self.require_valid_channel_name(channel)
        self.attached[channel] = deliver  # in one process nothing can fail underneath: `failed` is unused

    def detach(self, channel: str) -> None:
        self.attached.pop(channel, None)

    def forget(self, channel: str) -> None:
        inbox = self.channels.get(channel)
        if inbox is not None and not inbox.waited_on():
            del self.channels[channel]

    # The spec.

    async def new_channel(self, prefix="specific"):
        return f"{prefix}.inmemory!{''.join(random.choices(string.ascii_letters, k=12))}"

    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        self._put(channel, message)

    def _put(self, channel: str, message: dict) -> None:
        deliver = self.attached.get(channel)
        if deliver is not None:
            if not deliver(deepcopy(message)):  # a copy: the sender may reuse its dict
                raise ChannelFull(channel)
            return
        inbox = self.channels.get(channel)
        if inbox is None:
            inbox = self.channels[channel] = BoundedInbox(0)
        if len(inbox.items) >= self.capacity_of(channel):
            raise ChannelFull(channel)
        inbox.put_nowait((time.monotonic() + self.expiry, deepcopy(message)))

    async def receive(self, channel):
        self.require_valid_channel_name(channel)
        self._clean()
        while True:
            inbox = self.channels.get(channel)
            if inbox is None:
                inbox = self.channels[channel] = BoundedInbox(0)
            try:
                expires_at, message = await inbox.get()
            finally:
                if inbox.empty() and not inbox.waited_on() and self.channels.get(channel) is inbox:
                    del self.channels[channel]
            if expires_at >= time.monotonic():
                return message

    async def send_many(self, channels: list[str], message: dict) -> int:
        """`send` to each channel; returns how many were full (their copy dropped)."""
        assert isinstance(message, dict), "message is not a dict"
        full = 0
        for channel in channels:
            self.require_valid_channel_name(channel)
            try:
                self._put(channel, message)
            except ChannelFull:
                full += 1
        if full:
            log.warning("%s of %s channels full: message dropped", full, len(channels))
        return full

    # Groups extension.

    async def group_add(self, group, channel):
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self.groups.setdefault(group, {})[channel] = time.time()

    async def group_discard(self, group, channel):
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        members = self.groups.get(group)
        if members:
            members.pop(channel, None)
            if not members:
                del self.groups[group]

    async def group_send(self, group, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        self._clean()
        for channel in list(self.groups.get(group, ())):
            try:
                self._put(channel, message)
            except ChannelFull:  # the spec lets a group send drop a full channel's copy
                pass

    # Flush extension.

    async def flush(self):
        self.channels, self.groups = {}, {}

    async def close(self):
        pass

    def _clean(self) -> None:
        now = time.monotonic()
        if now - self.cleaned_at < CLEAN_INTERVAL_SECONDS:
            return
        self.cleaned_at = now
        for channel, inbox in list(self.channels.items()):
            expired = False
            while inbox.items and inbox.items[0][0] < now:
                inbox.items.pop(0)
                expired = True
            if expired:  # its reader is gone: as in Channels, it leaves every group
                for members in self.groups.values():
                    members.pop(channel, None)
            if inbox.empty() and not inbox.waited_on():
                del self.channels[channel]
        if now - self.groups_cleaned_at >= GROUP_CLEAN_INTERVAL_SECONDS:
            self.groups_cleaned_at = now
            joined_before = time.time() - self.group_expiry
            for group, members in list(self.groups.items()):
                for channel, joined in list(members.items()):
                    if joined < joined_before:
                        del members[channel]
                if not members:
                    del self.groups[group]


# Redis: `RPUSH` each entry onto its key unless the key holds `capacity` entries
# already; the key lives `expiry` seconds after its last entry. KEYS: the lists;
# ARGV: an entry and a capacity per key, then the expiry. Returns, per key, 1 if
# it was full (entry dropped), else 0.
_PUSH = """
local n = #KEYS
local expiry = tonumber(ARGV[2 * n + 1])
local full = {}
for i = 1, n do
    if redis.call('LLEN', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('RPUSH', KEYS[i], ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
        full[i] = 0
    else
        full[i] = 1
    end
end
return full
"""

# Entries popped per round trip once the BLPOP returned one.
_DRAIN = 500
# Seconds a BLPOP blocks; when it times out and nothing is attached or waiting,
# the worker's receive task ends (the next attach or receive starts another).
_BLOCK_SECONDS = 5


class _Receiver:
    """This worker's process-specific channels in one event loop: the task that
    pops their Redis list, the attached consumers, and the inboxes of channels
    read with receive()."""

    def __init__(self, loop):
        self.loop = loop
        self.task: asyncio.Task | None = None
        self.attached: dict[str, Callable[[dict], bool]] = {}
        self.on_failure: dict[str, Callable[[BaseException], None]] = {}
        self.inboxes: dict[str, BoundedInbox] = {}
        self.cleaned_at = time.monotonic()

    def needed(self) -> bool:
        return bool(self.attached) or any(inbox.waited_on() for inbox in self.inboxes.values())


def _worker_of(channel: str) -> str:
    """The process part of a process-specific channel: `<prefix>.<worker>!<socket>`."""
    return channel[:channel.index("!")].rsplit(".", 1)[-1]


class RedisChannelLayer(BaseChannelLayer):
    """The channel layer shared by the workers of a deployment (see the module
    docstring). Entries are `<sent at> <channel>[,<channel>…] <msgpack message>`:
    one entry carries a message to every channel of one worker it was sent to."""

    extensions = ["groups", "flush"]

    def __init__(self, hosts=None, prefix="asgi", expiry=60, group_expiry=86400, capacity=100,
                 channel_capacity=None, max_connections: int = 64, pool_timeout: float = 10.0):
        capacities = {"specific.*": SPECIFIC_CAPACITY, **(channel_capacity or {})}
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=capacities)
        hosts = list(hosts or [{"address": "redis://localhost:6379"}])
        if len(hosts) != 1:
            raise ValueError("RedisChannelLayer takes exactly one Redis host")
        host = hosts[0] if isinstance(hosts[0], dict) else {"address": hosts[0]}
        self.host = dict(host)
        self.address = self.host.pop("address")
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.capacity_of = _Capacities(capacity, capacities)
        self.max_connections, self.pool_timeout = max_connections, pool_timeout
        self.worker = uuid.uuid4().hex  # the part before "!" of this process's channels
        self.clients: dict[asyncio.AbstractEventLoop, tuple[Redis, object]] = {}
        self.receiver: _Receiver | None = None

    # Connections: one pool per event loop (redis-py's connections belong to the
    # loop that opened them; tests and sync code run loops of their own).

    def client(self) -> Redis:
        return self._connection()[0]

    def _connection(self) -> tuple[Redis, object]:
        """This event loop's client and its registered push script."""
        loop = asyncio.get_running_loop()
        found = self.clients.get(loop)
        if found is None:
            for old in [old for old in self.clients if old.is_closed()]:
                del self.clients[old]
            pool = BlockingConnectionPool.from_url(self.address, max_connections=self.max_connections,
                                                   timeout=self.pool_timeout, **self.host)
            client = Redis(connection_pool=pool)
            found = self.clients[loop] = (client, client.register_script(_PUSH))
        return found

    def key(self, channel: str) -> str:
        """The Redis list of a channel: one per worker for process-specific channels."""
        if "!" in channel:
            return f"{self.prefix}:inbox:{_worker_of(channel)}"
        return f"{self.prefix}:channel:{channel}"

    def group_key(self, group: str) -> str:
        return f"{self.prefix}:group:{group}"

    # The spec.

    async def new_channel(self, prefix="specific"):
        return f"{prefix}.{self.worker}!{uuid.uuid4().hex[:12]}"

    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        if await self._push([channel], message):
            raise ChannelFull(channel)

    async def send_many(self, channels: list[str], message: dict) -> int:
        """Send `message` to every channel, in one round trip. Returns how many
        channels were over capacity (their copy dropped)."""
        assert isinstance(message, dict), "message is not a dict"
        for channel in channels:
            self.require_valid_channel_name(channel)
        dropped = await self._push(channels, message)
        if dropped:
            log.warning("%s of %s channels over capacity: message dropped", dropped, len(channels))
        return dropped

    async def _push(self, channels: list[str], message: dict) -> int:
        if not channels:
            return 0
        by_key: dict[str, list[str]] = {}
        for channel in channels:
            by_key.setdefault(self.key(channel), []).append(channel)
        body = msgpack.packb(message, use_bin_type=True)
        sent_at = time.time()
        keys = list(by_key)
        entries = [f"{sent_at:.3f} {','.join(by_key[key])} ".encode() + body for key in keys]
        capacities = [self.capacity_of(by_key[key][0]) for key in keys]
        _, push = self._connection()
        full = await push(keys=keys, args=[*entries, *capacities, int(self.expiry) + 1])
        return sum(len(by_key[key]) for key, over in zip(keys, full, strict=True) if over)

    async def receive(self, channel):
        self.require_valid_channel_name(channel)
        if "!" not in channel:
            return await self._receive_general(channel)
        if _worker_of(channel) != self.worker:
            raise ValueError(f"{channel} is not a channel of this process")
        receiver = self._receiver()
        inbox = receiver.inboxes.get(channel)
        if inbox is None:
            inbox = receiver.inboxes[channel] = BoundedInbox(self.capacity)
        self._ensure_receiving(receiver)
        try:
            while True:
                expires_at, message = await inbox.get()
                if expires_at >= time.monotonic():
                    return message
        finally:
            if inbox.empty() and not inbox.waited_on() and receiver.inboxes.get(channel) is inbox:
                del receiver.inboxes[channel]

    async def _receive_general(self, channel: str) -> dict:
        key = self.key(channel)
        while True:
            popped = await self.client().blpop([key], timeout=_BLOCK_SECONDS)
            if popped is None:
                continue
            message = self._decode(popped[1])
            if message is not None:
                return message[1]

    # Push delivery and the worker's receive task.

    def attach(self, channel: str, deliver: Callable[[dict], bool],
               failed: Callable[[BaseException], None] | None = None) -> None:
        self.require_valid_channel_name(channel)
        receiver = self._receiver()
        receiver.attached[channel] = deliver
        if failed is not None:
            receiver.on_failure[channel] = failed
        self._ensure_receiving(receiver)

    def detach(self, channel: str) -> None:
        if self.receiver is not None:
            self.receiver.attached.pop(channel, None)
            self.receiver.on_failure.pop(channel, None)

    def forget(self, channel: str) -> None:
        if self.receiver is not None:
            inbox = self.receiver.inboxes.get(channel)
            if inbox is not None and not inbox.waited_on():
                del self.receiver.inboxes[channel]

    def _receiver(self) -> _Receiver:
        loop = asyncio.get_running_loop()
        receiver = self.receiver
        if receiver is None or receiver.loop.is_closed():
            receiver = self.receiver = _Receiver(loop)
        elif receiver.loop is not loop:
            if receiver.needed() or (receiver.task is not None and not receiver.task.done()):
                raise RuntimeError("two event loops receive from one RedisChannelLayer at once")
            receiver = self.receiver = _Receiver(loop)
        return receiver

    def _ensure_receiving(self, receiver: _Receiver) -> None:
        if receiver.task is None or receiver.task.done():
            receiver.task = receiver.loop.create_task(self._receive_loop(receiver),
                                                      name=f"channel layer receiver {self.worker}")

    async def _receive_loop(self, receiver: _Receiver) -> None:
        key = f"{self.prefix}:inbox:{self.worker}"
        failures = 0
        while True:
            try:
                client = self.client()
                popped = await client.blpop([key], timeout=_BLOCK_SECONDS)
                if popped is None:
                    self._clean(receiver)
                    if not receiver.needed():
                        return  # idle; attach() or receive() starts another
                    continue
                entries = [popped[1]]
                while True:
                    more = await client.lpop(key, _DRAIN)
                    if not more:
                        break
                    entries.extend(more)
                    if len(more) < _DRAIN:
                        break
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis out of reach, or restarted (its messages are gone)
                failures += 1
                log.warning("channel layer: receiving failed (%s in a row)", failures, exc_info=failures == 1)
                self._fail(receiver, error)
                if not receiver.needed():
                    return
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
                continue
            for entry in entries:
                try:
                    self._dispatch(receiver, entry)
                except Exception:  # one bad entry must not stop this worker's delivery
                    log.exception("channel layer: could not deliver an entry")
            self._clean(receiver)

    def _fail(self, receiver: _Receiver, error: Exception) -> None:
        """End whatever waits on this worker's channels, as a failing receive() would:
        attached consumers (told through `failed`, then detached) and receive()s."""
        failed, receiver.on_failure = receiver.on_failure, {}
        for channel, callback in failed.items():
            receiver.attached.pop(channel, None)
            try:
                callback(error)
            except Exception:
                log.exception("channel layer: a failure callback failed")
        for inbox in list(receiver.inboxes.values()):
            inbox.fail(error)

    def _decode(self, entry: bytes) -> tuple[list[str], dict] | None:
        sent_at, channels, body = entry.split(b" ", 2)
        if time.time() - float(sent_at) > self.expiry:
            return None
        return channels.decode().split(","), msgpack.unpackb(body, raw=False)

    def _dispatch(self, receiver: _Receiver, entry: bytes) -> None:
        decoded = self._decode(entry)
        if decoded is None:
            return
        channels, message = decoded
        for index, channel in enumerate(channels):
            copy = message if index == len(channels) - 1 else deepcopy(message)
            deliver = receiver.attached.get(channel)
            if deliver is not None:
                if not deliver(copy):
                    log.warning("%s is full: message dropped", channel)
                continue
            inbox = receiver.inboxes.get(channel)
            if inbox is None:
                inbox = receiver.inboxes[channel] = BoundedInbox(self.capacity)
            inbox.put_nowait((time.monotonic() + self.expiry, copy))

    def _clean(self, receiver: _Receiver) -> None:
        """At most once a second: drop the inboxes' expired messages, and the inboxes
        left empty that nobody waits on (a message for a socket just closed, the
        acks of a ring after the first)."""
        now = time.monotonic()
        if now - receiver.cleaned_at < CLEAN_INTERVAL_SECONDS:
            return
        receiver.cleaned_at = now
        for channel, inbox in list(receiver.inboxes.items()):
            dropped = 0
            while inbox.items and inbox.items[0][0] < now:
                inbox.items.pop(0)
                dropped += 1
            if dropped:
                log.info("dropped %s unread messages for %s", dropped, channel)
            if inbox.empty() and not inbox.waited_on():
                del receiver.inboxes[channel]

    # Groups extension.

    async def group_add(self, group, channel):
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        key = self.group_key(group)
        async with self.client().pipeline(transaction=False) as pipe:
            pipe.zadd(key, {channel: time.time()})
            pipe.expire(key, self.group_expiry)
            await pipe.execute()

    async def group_discard(self, group, channel):
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self.client().zrem(self.group_key(group), channel)

    async def group_send(self, group, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        key = self.group_key(group)
        async with self.client().pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, 0, time.time() - self.group_expiry)
            pipe.zrange(key, 0, -1)
            _, members = await pipe.execute()
        if members:
            dropped = await self._push([member.decode() for member in members], message)
            if dropped:  # the spec lets a group send drop a full channel's copy
                log.info("%s of %s channels over capacity in group %s", dropped, len(members), group)

    # Flush extension.

    async def flush(self):
        client = self.client()
        keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start:start + 1000])
        if self.receiver is not None:
            self.receiver.inboxes.clear()

    async def close(self):
        receiver, self.receiver = self.receiver, None
        if receiver is not None and receiver.task is not None and receiver.loop is asyncio.get_running_loop():
            receiver.task.cancel()
            try:
                await receiver.task
            except asyncio.CancelledError:
                pass
        found = self.clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose(close_connection_pool=True)


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
