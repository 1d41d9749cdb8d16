"""The provider's webhooks (/telephony/twilio/…) served in one trip to a thread.

Django's ASGI handler runs a sync view, each sync middleware method and each
request signal in a thread hop of its own, about fourteen per request (a
webhook refused for its signature, with no database work, cost 3.3 ms of server
CPU that way on this project's machine), and a burst of forwarded calls (the
provider posts their webhooks at once) queued the hops of twenty requests, each
in a thread of its own, behind one another and behind the ring reports' threads.

`WebhookHandler` is Django's handler all the same (the same middleware, URL
resolution, views, signals and error pages) run synchronously, as under WSGI:
the body is read on the event loop, then the whole request, from
`request_started` to `request_finished`, runs in one call on a small pool of its
own (`WEBHOOK_THREADS`: one for SQLite, whose single writer would only make
several threads wait on each other; more for PostgreSQL), and the response is
sent from the event loop. Webhook responses are small and never streamed.

A pool thread lives as long as the worker, so it keeps its SQLite connection
open between requests, as CONN_MAX_AGE=None would (Django's connections are
thread-local): opening one cost ~0.4 ms of CPU per webhook. PostgreSQL's
connections still go back to its pool after each request.
"""

from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http import HttpResponse
from django.urls import set_script_prefix

PREFIX = "/telephony/"


class WebhookHandler(ASGIHandler):
    """Django's request handling for the provider's webhooks, one thread trip per request."""

    def __init__(self):
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    @cached_property
    def _serve_in_pool(self):
        pool = ThreadPoolExecutor(max_workers=settings.WEBHOOK_THREADS, thread_name_prefix="webhook")
        return sync_to_async(self._serve, thread_sensitive=False, executor=pool)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"webhooks are HTTP only, not {scope['type']}")
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            response = await self._serve_in_pool(scope, body_file)
        finally:
            body_file.close()
        await self.send_response(response, send)

    def _serve(self, scope, body_file) -> HttpResponse:
        """What ASGIHandler.handle does around the view, in this one thread: the
        database connection the view used is closed (or kept) by request_finished
        in the thread that opened it."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
        for connection in connections.all(initialized_only=True):
            if connection.vendor == "sqlite" and connection.connection is not None:
                # Kept by request_finished unless an error left it unusable or outside autocommit.
                connection.close_at = None
        response.close()
        return response

