"""Run the carrier + voice provider simulator on its own: `manage.py simulator --port 8001`.

By default the simulator runs inside the backend's server (mounted at
/simulator/). Run it standalone when the backend has several workers (the
simulator's state lives in one process) or to watch it apart; then point the
backend at it with TWILIO_API_BASE=http://127.0.0.1:8001/simulator.
"""

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from simulators.telephony.app import create_app
from simulators.telephony.config import SimulatorConfig


class Command(BaseCommand):
    help = "Serve the carrier + voice provider simulator (Twilio-compatible) on its own port."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--backend", default=None,
                            help="where to send webhooks (default: PUBLIC_BASE_URL); they are still "
                                 "addressed to and signed for PUBLIC_BASE_URL")
        parser.add_argument("--answer-delay", type=float, default=None,
                            help="seconds a dialled device rings before it answers "
                                 "(default: SIMULATOR_ANSWER_DELAY_SECONDS)")
        parser.add_argument("--log-level", default="info")

    def handle(self, *args, host, port, backend, answer_delay, log_level, **options):
        overrides = {}
        if backend:
            if not backend.startswith(("http://", "https://")):
                raise CommandError("--backend must be an http:// or https:// URL")
            overrides["backend_url"] = backend.rstrip("/")
        if answer_delay is not None:
            if answer_delay < 0:
                raise CommandError("--answer-delay cannot be negative")
            overrides["answer_delay_seconds"] = answer_delay
        config = SimulatorConfig.from_settings(**overrides)
        here = f"http://{host}:{port}/simulator"
        self.stdout.write(f"simulator at {here}/ (account {config.account_sid})")
        self.stdout.write(f"  webhooks:       {config.voice_url} and {config.status_url}"
                          + (f", sent to {config.backend_url}" if config.backend_url else ""))
        self.stdout.write(f"  server numbers: {', '.join(config.server_numbers)}")
        if settings.TWILIO_API_BASE != here:
            self.stdout.write(f"  the backend must run with TWILIO_API_BASE={here}")
        uvicorn.run(create_app(config, embedded=False), host=host, port=port, lifespan="on", log_level=log_level)
