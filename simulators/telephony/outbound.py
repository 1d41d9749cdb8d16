"""Every HTTP request the simulated provider makes: signed webhooks and callbacks.

A request is built and signed for its public URL (`PUBLIC_BASE_URL/...`), the way
Twilio signs the URL it requests. Where it is sent can differ from where it is
addressed, as behind a reverse proxy:

- `config.backend_url`, when set, receives every request addressed to the
  public base URL (the `Host` header keeps the public host);
- else, when the simulator is mounted inside the backend's own server, the
  address of that server as seen on incoming requests (`learn_origin`), so a
  backend published as `https://callpull.example.test` is still reached on its
  loopback port;
- else the public URL itself.

All requests are async (httpx.AsyncClient) so the simulator can share the
backend's event loop without ever blocking it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from simulators.telephony.config import SimulatorConfig
from simulators.telephony.signature import HEADER, signature

log = logging.getLogger("simulators.telephony")

USER_AGENT = "TwilioProxy/1.1 (callpull simulator)"


@dataclass
class Sent:
    """What happened to one request: kept on the call's record."""

    url: str
    method: str
    params: dict[str, str]
    status: int | None = None
    body: str = ""
    error: str | None = None
    ms: float = 0.0
    retry_after: float | None = None  # the answer's Retry-After, in seconds

    @property
    def transient(self) -> bool:
        """No answer at all, or one saying "not now" (502, 503, 504): worth another try."""
        return self.status is None or self.status in (502, 503, 504)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def as_json(self) -> dict:
        return {"url": self.url, "method": self.method, "params": self.params, "status": self.status,
                "error": self.error, "ms": round(self.ms, 1)}


def _seconds(value: str | None) -> float | None:
    """Retry-After in its delta-seconds form (an HTTP date is not used by backends here)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Outbound:
    def __init__(self, config: SimulatorConfig):
        self.config = config
        self._public = urlsplit(config.public_base_url)
        self._origin: tuple[str, str | None] | None = None  # (base URL, unix socket path)
        self._clients: dict[tuple[int, str | None], httpx.AsyncClient] = {}

    def learn_origin(self, scope: dict) -> None:
        """Remember the server this simulator is mounted in, from an incoming request."""
        if self._origin is not None or self.config.backend_url:
            return
        server = scope.get("server")
        if not server:
            return
        host, port = server[0], server[1]
        if port is None:  # a unix socket: (path, None)
            self._origin = ("http://localhost", host)
            return
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        if ":" in host:
            host = f"[{host}]"
        self._origin = (f"{scope.get('scheme', 'http')}://{host}:{port}", None)

    def _destination(self, url: str) -> tuple[str, str | None, dict[str, str]]:
        """Where to send a request addressed to `url`: (URL, unix socket, extra headers)."""
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (self._public.scheme, self._public.netloc):
            return url, None, {}
        if self.config.backend_url:
            base, uds = self.config.backend_url.rstrip("/"), None
        elif self._origin:
            base, uds = self._origin
        else:
            return url, None, {}
        target = urlsplit(base)
        rewritten = urlunsplit((target.scheme, target.netloc, parts.path, parts.query, ""))
        return rewritten, uds, {"Host": self._public.netloc, "X-Forwarded-Proto": self._public.scheme}

    def _client(self, uds: str | None) -> httpx.AsyncClient:
        key = (id(asyncio.get_running_loop()), uds)
        client = self._clients.get(key)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
            # trust_env off: a developer's HTTP(S)_PROXY must not capture loopback webhooks.
            # verify off only matters for a TLS origin learned from our own socket.
            client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False,
                                       verify=False, timeout=self.config.webhook_timeout_seconds)
            self._clients[key] = client
        return client

    async def send(self, url: str, method: str, params: dict[str, str], *,
                   idempotency_token: str | None = None) -> Sent:
        """Request `url` as the provider would; never raises for HTTP or network errors."""
        method = method.upper()
        params = {key: str(value) for key, value in params.items() if value is not None}
        if method == "GET":
            signed_url = url + ("&" if "?" in url else "?") + urlencode(params) if params else url
            body_params: dict[str, str] = {}
        else:
            signed_url, body_params = url, params
        headers = {
            HEADER: signature(self.config.auth_token, signed_url, body_params),
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "I-Twilio-Idempotency-Token": idempotency_token or uuid.uuid4().hex,
        }
        destination, uds, extra = self._destination(signed_url)
        headers.update(extra)
        sent = Sent(url=signed_url, method=method, params=params)
        started = time.monotonic()
        try:
            client = self._client(uds)
            if method == "GET":
                response = await client.get(destination, headers=headers)
            else:
                response = await client.post(destination, data=body_params, headers=headers)
            sent.status = response.status_code
            sent.body = response.text
            sent.retry_after = _seconds(response.headers.get("Retry-After"))
        except httpx.HTTPError as exc:
            sent.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        sent.ms = (time.monotonic() - started) * 1000
        log.info("simulator %s %s -> %s (%.0f ms) CallSid=%s", method, signed_url,
                 sent.status or sent.error, sent.ms, params.get("CallSid"))
        return sent

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.aclose()
            except RuntimeError:  # its loop is gone
                pass
