"""Django's HTTP handling in one trip to a thread per request.

Django's ASGI handler runs a sync view, each sync middleware method and each
request signal in a thread hop of its own, about fourteen per request, each
request in a thread of its own (a webhook refused for its signature, with no
database work, cost 3.3 ms of server CPU that way on this project's machine).

`OneTripHandler` is Django's handler all the same (the same middleware, URL
resolution, views, signals and error pages) run synchronously, as under WSGI:
the body is read on the event loop, then the whole request, from
`request_started` to `request_finished`, runs in one call on a thread pool of
the handler's own, and the response is sent from the event loop. When every
thread is busy, requests wait in the pool's queue.

callpull.asgi serves the API and the pages on one (`HTTP_THREADS`) and the
provider's webhooks on another (callpull.telephony.asgi, `WEBHOOK_THREADS`).

A view may call `async_to_sync` (the ring report waits for the first receipt
that way): the pool thread was started by asgiref's `sync_to_async`, which tells
it the main event loop, so the coroutine runs there while the thread waits.

A pool thread lives as long as the worker, so it keeps its SQLite connection
open between requests, as CONN_MAX_AGE=None would (Django's connections are
thread-local): opening one cost ~0.4 ms of CPU per request. PostgreSQL's
connections still go back to its pool after each request (request_finished,
in the thread that used them).

The body is read by `receive_body`, not Django's `read_body` (which spools
any amount to disk): a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE (a declared
Content-Length, or chunks as they arrive) is answered 413 at once, before more
than the limit is stored and without running the request; the connection is then
closed (after a short linger that drops what is still in flight). A chunked body
within the limit gets the Content-Length it turned out to have, so Django and DRF
read it as any other (DRF reads no body without one). `bounded_body` puts the same limit in front
of another ASGI application (callpull.asgi: the static files handler).

No view of the project streams (static files, whose responses do, stay on
Django's handler). A streaming response still works: its pool thread produces
the chunks, the event loop sends them, and a client that goes away ends it.
"""

import asyncio
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http import FileResponse, HttpResponse
from django.urls import set_script_prefix

from callpull.api.errors import as_envelope, is_api_path, request_too_large

log = logging.getLogger(__name__)

_END = object()
# How long a refused body may go on arriving (and be dropped) before its connection closes.
LINGER_SECONDS = 2.0


class BodyTooLarge(Exception):
    pass


def declared_length(scope) -> int | None:
    """The request's Content-Length, if it declared one."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def receive_body(scope, receive, limit: int | None, write) -> int:
    """Read the request's body from its ASGI messages, each chunk passed to `write`, and
    return its size: BodyTooLarge at once when it declares a Content-Length over `limit`,
    or as soon as more than `limit` bytes arrived (the chunk that passes the limit is not
    written); RequestAborted if the client goes away."""
    declared = declared_length(scope)
    if limit is not None and declared is not None and declared > limit:
        raise BodyTooLarge
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        write(chunk)
        if not message.get("more_body", False):
            return size


async def refuse_too_large(scope, receive, send, limit: int) -> None:
    """413, whole, with `Connection: close`, and one WARNING line. Before the connection
    closes, what the client still sends of the body is read and dropped for at most
    LINGER_SECONDS (as a web server's lingering close): closing on unread data resets
    the connection, and a reset can take the answer with it before the client reads it."""
    path = scope.get("path", "")
    log.warning("request refused: body over %d bytes path=%s", limit,
                path.encode("unicode_escape").decode("ascii"))  # one line, whatever the path holds
    response = request_too_large(path, limit)
    response["Connection"] = "close"
    response["Content-Length"] = str(len(response.content))
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content, "more_body": True})
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    break
    except TimeoutError:
        pass
    await send({"type": "http.response.body"})


def bounded_body(app):
    """`app` (an ASGI HTTP application that reads bodies its own way, e.g. Django's static
    files handler, which spools any amount to disk) behind the same body limit: the body
    is read first, within DATA_UPLOAD_MAX_MEMORY_SIZE, then handed to it whole."""

    async def bounded(scope, receive, send):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        chunks = []
        try:
            await receive_body(scope, receive, limit, chunks.append)
        except RequestAborted:
            return
        except BodyTooLarge:
            await refuse_too_large(scope, receive, send, limit)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await app(scope, replay, send)

    return bounded


class OneTripHandler(ASGIHandler):
    """Django's request handling, one thread trip per request, on a pool of `threads`."""

    def __init__(self, *, threads: int, name: str):
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.threads = threads
        self.name = name

    @cached_property
    def pool(self) -> ThreadPoolExecutor:
        """Its threads start only as requests overlap, and live as long as the worker."""
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=self.name)

    @cached_property
    def _serve_in_pool(self):
        return sync_to_async(self._serve, thread_sensitive=False, executor=self.pool)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"{self.name}: HTTP only, not {scope['type']}")
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        try:
            size = await receive_body(scope, receive, limit, body_file.write)
        except RequestAborted:
            body_file.close()
            return
        except BodyTooLarge:
            body_file.close()
            await refuse_too_large(scope, receive, send, limit)
            return
        body_file.seek(0)
        if declared_length(scope) is None and size:
            # A chunked body: Django and DRF read a body by its Content-Length (DRF reads none without one).
            scope = {**scope, "headers": [*scope.get("headers", ()), (b"content-length", str(size).encode())]}
        try:
            response = await self._serve_in_pool(scope, body_file, receive, send)
        finally:
            body_file.close()
        if response is not None:
            await self.send_response(response, send)

    def _serve(self, scope, body_file, receive, send) -> HttpResponse | None:
        """What ASGIHandler.handle does around the view, in this one thread: the
        database connection the view used is closed (or kept) by request_finished
        in the thread that opened it. A streamed response is sent from here (None
        returned); any other is returned closed, for the event loop to send."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
        elif is_api_path(scope.get("path", "")):
            response = as_envelope(response)  # a request Django could not build: no middleware ran
        for connection in connections.all(initialized_only=True):
            if connection.vendor == "sqlite" and connection.connection is not None:
                # Kept by request_finished unless an error left it unusable or outside autocommit.
                connection.close_at = None
        if not response.streaming:
            response.close()
            return response
        try:
            async_to_sync(self._stream)(response, receive, send)
        finally:
            response.close()
        return None

    async def _stream(self, response, receive, send):
        """Send a streaming response from the event loop, each chunk produced in the
        pool thread waiting on this (thread-sensitive calls go back to it), until
        the end or until the client goes away."""
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        chunks = iter(response)
        produce = sync_to_async(next, thread_sensitive=True)
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        headers = [(header.encode("ascii") if isinstance(header, str) else header,
                    value.encode("latin1") if isinstance(value, str) else value)
                   for header, value in response.items()]
        headers += [(b"Set-Cookie", c.output(header="").encode("ascii").strip()) for c in response.cookies.values()]
        try:
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            while not gone.done():
                part = await produce(chunks, _END)
                if part is _END:
                    await send({"type": "http.response.body"})
                    return
                for chunk, _ in self.chunk_bytes(part):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            gone.cancel()
            try:
                await gone
            except (asyncio.CancelledError, RequestAborted, AssertionError):
                pass
