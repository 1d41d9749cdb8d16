"""HTTP/1.1 requests of the push senders: the one module of the project that imports aiohttp
(and yarl, its URL type, and requests' proxy lookup).

FCM (notifications.fcm) and Web Push (notifications.webpush) each POST one request per push
from their sender's event loop (notifications.pushloop); APNs speaks HTTP/2 through
notifications.http2 instead. Why aiohttp: notifications.fcm's docstring has the measurements.

- `Pool`: one aiohttp ClientSession per sender, created on the sender's loop at its first
  request, at most `limit` connections (HTTP/1.1: one request per connection at a time), kept
  alive and reused. No timeouts of aiohttp's own (a timer per request): the caller bounds each
  request with `asyncio.timeout`, which covers connecting, sending and reading.
- `post` returns a `Reply` (status, headers, body read whole) or raises `Unreachable` (refused,
  reset, closed: the service could not be reached) or `BadReply` (the answer could not be read).
- `proxy_for(url)`: the proxy the environment names for a URL (HTTP_PROXY, HTTPS_PROXY,
  ALL_PROXY, NO_PROXY, as requests and curl read them), looked up once per origin: aiohttp's
  own `trust_env` would scan the environment on every request.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import requests.utils
import yarl


class Unreachable(Exception):
    """The service could not be reached: refused, reset, closed, DNS."""


class BadReply(Exception):
    """The service answered something that is not an HTTP answer aiohttp can read."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


def parse(url: str) -> yarl.URL:
    """A URL parsed once, for a sender that posts to it on every push."""
    return yarl.URL(url)


@functools.lru_cache(maxsize=256)
def _proxy_for_origin(scheme: str, netloc: str) -> str | None:
    proxies = requests.utils.get_environ_proxies(f"{scheme}://{netloc}")
    return proxies.get(scheme) or proxies.get("all")


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url`, or None (none named, or NO_PROXY lists it)."""
    parts = urlsplit(str(url))
    return _proxy_for_origin(parts.scheme, parts.netloc)


def forget_proxies() -> None:
    """Read the environment again at the next lookup (a test or a settings change)."""
    _proxy_for_origin.cache_clear()


class Pool:
    """Keep-alive connections of one sender; use from its event loop only."""

    def __init__(self, limit: int):
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit),
                                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=None))
        return self.session

    async def post(self, url: str | yarl.URL, body: bytes, headers: Mapping[str, str], *,
                   proxy: str | None = None, follow_redirects: bool = True) -> Reply:
        try:
            async with self._session().post(url, data=body, headers=headers, proxy=proxy,
                                            allow_redirects=follow_redirects) as response:
                content = await response.read()
                return Reply(response.status, response.headers, content)
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise BadReply(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
