"""Django's HTTP handling in one trip to a thread per request.

Django's ASGI handler runs a sync view, each sync middleware method and each
request signal in a thread hop of its own, about fourteen per request, each
request in a thread of its own (a webhook refused for its signature, with no
database work, cost 3.3 ms of server CPU that way on this project's machine).

`OneTripHandler` runs Django's request handling (the same middleware, URL
resolution, views, signals and error pages) synchronously, as WSGIHandler does,
from Django's public pieces only: BaseHandler's `load_middleware` and
`get_response`, an `ASGIRequest` built from the scope, the `request_started`
signal (`request_finished` is the response's `close()`), and the ASGI spec's
messages for the answer. The body is read on the event loop, then the whole
request, from `request_started` to `request_finished`, runs in one call on a
thread pool of the handler's own, and the response is sent from the event
loop. When every thread is busy, requests wait in the pool's queue.

callpull.asgi serves the API and the pages on one (`HTTP_THREADS`) and the
provider's webhooks on another (callpull.telephony.asgi, `WEBHOOK_THREADS`).

A view may call `async_to_sync` (the ring report waits for the first receipt
that way): the pool thread was started by asgiref's `sync_to_async`, which tells
it the main event loop, so the coroutine runs there while the thread waits.

A pool thread lives as long as the worker, so with SQLite's CONN_MAX_AGE=None
(callpull/settings.py) it keeps its connection open between requests (Django's
connections are thread-local): opening one cost ~0.4 ms of CPU per request.
PostgreSQL's connections still go back to its pool after each request
(request_finished, in the thread that used them).

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

Checked against Django 5.2.19 and asgiref 3.13.0 (the pins in requirements.txt
and constraints.txt; tests/callpull/test_library_versions.py fails on another).
"""

import asyncio
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseBase
from django.urls import set_script_prefix

from callpull.api.errors import as_envelope, is_api_path, request_too_large

log = logging.getLogger(__name__)
request_log = logging.getLogger("django.request")

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


class OneTripHandler(base.BaseHandler):
    """Django's request handling, one thread trip per request, on a pool of `threads`:
    BaseHandler's middleware chain and `get_response` as WSGIHandler runs them (sync),
    an ASGIRequest built from the scope, and the response sent as the ASGI spec says."""

    request_class = ASGIRequest
    # The most of a streamed response's body one `http.response.body` message carries.
    chunk_size = 2**16

    def __init__(self, *, threads: int, name: str):
        super().__init__()
        self.load_middleware(is_async=False)
        self.threads = threads
        self.name = name
        # Its threads start only as requests overlap, and live as long as the worker.
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.serve_in_pool = sync_to_async(self.serve, thread_sensitive=False, executor=self.pool)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"{self.name}: HTTP only, not {scope['type']}")
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
            response = await self.serve_in_pool(scope, body_file, receive, send)
        finally:
            body_file.close()
        if response is not None:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": response_headers(response)})
            await send({"type": "http.response.body", "body": response.content})

    def serve(self, scope, body_file, receive, send) -> HttpResponse | None:
        """The request from `request_started` to `request_finished` (sent by the
        response's close()), in this one thread: the database connection the view used
        is closed (or kept: CONN_MAX_AGE) in the thread that opened it. A streamed
        response is sent from here (None returned); any other is returned closed, for
        the event loop to send."""
        # The script prefix as Django's handlers take it: FORCE_SCRIPT_NAME, else the ASGI root_path.
        set_script_prefix(settings.FORCE_SCRIPT_NAME or scope.get("root_path", "") or "")
        signals.request_started.send(sender=self.__class__, scope=scope)
        try:
            request = self.request_class(scope, body_file)
        except UnicodeDecodeError:  # what Django's handler answers a request it cannot decode
            request_log.warning("Bad Request (UnicodeDecodeError)", exc_info=True, extra={"status_code": 400})
            request, response = None, HttpResponseBadRequest()
        if request is not None:
            response = self.get_response(request)
        elif is_api_path(scope.get("path", "")):
            response = as_envelope(response)  # a request Django could not build: no middleware ran
        if not response.streaming:
            response.close()
            return response
        try:
            async_to_sync(self.stream)(response, receive, send)
        finally:
            response.close()
        return None

    async def stream(self, response, receive, send):
        """Send a streaming response from the event loop, each chunk produced in the
        pool thread waiting on this (thread-sensitive calls go back to it), until
        the end or until the client goes away."""
        chunks = iter(response)
        produce = sync_to_async(next, thread_sensitive=True)
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": response_headers(response)})
            while not gone.done():
                part = await produce(chunks, _END)
                if part is _END:
                    await send({"type": "http.response.body"})
                    return
                for start in range(0, len(part), self.chunk_size):
                    await send({"type": "http.response.body", "body": part[start:start + self.chunk_size],
                                "more_body": True})
        finally:
            gone.cancel()
            try:
                await gone
            except asyncio.CancelledError:
                pass


def response_headers(response: HttpResponseBase) -> list[tuple[bytes, bytes]]:
    """The response's headers and cookies as ASGI header pairs (their case kept: some
    clients want `Content-Type`)."""
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    headers += [(b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
                for cookie in response.cookies.values()]
    return headers


async def wait_for_disconnect(receive) -> None:
    """Returns when the client goes away (`http.disconnect`: the only message the ASGI
    spec sends once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
