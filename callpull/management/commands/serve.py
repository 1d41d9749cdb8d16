"""Run the ASGI application under uvicorn: `python manage.py serve`.

Any ASGI server on `callpull.asgi:application` works; this command only saves
typing and refuses setups that cannot work (several workers without Redis).
"""

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with uvicorn."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--log-level", default="info")

    def handle(self, *args, host, port, workers, log_level, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        if workers > 1 and not settings.REDIS_URL:
            raise CommandError("Several workers need a shared channel layer: set REDIS_URL.")
        embedded_simulator = settings.SIMULATOR_ENABLED and \
            settings.TWILIO_API_BASE == settings.PUBLIC_BASE_URL + "/simulator"
        if workers > 1 and embedded_simulator:
            raise CommandError("The bundled simulator keeps its calls in one process: with several workers run "
                               "it on its own (manage.py simulator --port 8001) and set "
                               "TWILIO_API_BASE=http://127.0.0.1:8001/simulator.")
        uvicorn.run("callpull.asgi:application", host=host, port=port, workers=workers, lifespan="on",
                    log_level=log_level, ws_per_message_deflate=False)
