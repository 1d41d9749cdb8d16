"""The product's ASGI application: HTTP (Django), WebSocket (Channels) and lifespan.

Lifespan starts this worker's background tasks (presence heartbeat, and the
call sweeper where it runs in-process) and stops them cleanly.

Production serves `application` as it is. The embedded default (no Twilio
credentials, DEBUG on) serves it through the development entry point
`simulators.asgi`, which mounts the bundled simulator beside it; settings'
ASGI_APPLICATION names the one to run (`manage.py serve` follows it).
"""

import asyncio
import logging
import os
from urllib.parse import urlsplit

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callpull.settings")
django_http = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs apps loaded)
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from callpull import startup  # noqa: E402
from callpull.http import OneTripHandler, bounded_body  # noqa: E402
from callpull.telephony.asgi import PREFIX, WebhookHandler  # noqa: E402
from notifications import presence  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

log = logging.getLogger("callpull")


class Lifespan:
    """Handles the ASGI lifespan protocol around an application that does not."""

    def __init__(self, app):
        self.app = app
        self.tasks: list[asyncio.Task] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                startup.announce()
                await startup.warm_up()
                self.tasks = [asyncio.create_task(coroutine) for coroutine in startup.background_tasks()]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)
                try:
                    await presence.worker_stopped()
                except Exception:
                    log.exception("could not forget this worker's connections")
                await startup.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def http_app():
    """Django's HTTP side in one thread trip per request (callpull.http): the API and
    the pages on a pool of HTTP_THREADS, the provider's webhooks on their own
    (callpull.telephony.asgi); static files through Django's handler (their
    responses stream)."""
    static = ASGIStaticFilesHandler(django_http)
    # What that handler serves, as Django documents it: paths under STATIC_URL, unless STATIC_URL names another host.
    static_url = urlsplit(settings.STATIC_URL)
    static_path = None if static_url.netloc else static_url.path
    static_within_limit = bounded_body(static)  # Django's handler would spool any body to disk
    django_app = OneTripHandler(threads=settings.HTTP_THREADS, name="http")
    webhooks = WebhookHandler()

    async def route(scope, receive, send):
        path = scope.get("path", "")
        if path.startswith(PREFIX):
            return await webhooks(scope, receive, send)
        if static_path is not None and path.startswith(static_path):
            return await static_within_limit(scope, receive, send)
        return await django_app(scope, receive, send)

    return route


application = Lifespan(
    ProtocolTypeRouter({
        "http": http_app(),
        "websocket": URLRouter(websocket_urlpatterns),
    })
)
