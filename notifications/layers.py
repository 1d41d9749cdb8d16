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

Nothing else changes: same keys, same wire format, so workers with and without
this class interoperate.
"""

from channels_redis import core
from redis.asyncio import BlockingConnectionPool

# Messages in flight for all the sockets of one worker (see above).
SPECIFIC_CAPACITY = 50_000


class RedisChannelLayer(core.RedisChannelLayer):
    def __init__(self, *args, max_connections: int = 64, pool_timeout: float = 10.0, channel_capacity=None,
                 **kwargs):
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        capacities = {"specific.*": SPECIFIC_CAPACITY, **(channel_capacity or {})}
        super().__init__(*args, channel_capacity=capacities, **kwargs)

    def create_pool(self, index):
        host = dict(self.hosts[index])
        address = host.pop("address", None)
        if address is None:  # sentinel or keyword hosts: as channels_redis does it
            return super().create_pool(index)
        return BlockingConnectionPool.from_url(address, max_connections=self.max_connections,
                                               timeout=self.pool_timeout, **host)
