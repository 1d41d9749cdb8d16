"""The development entry point: the product with its stand-ins mounted.

`application` is the product's ASGI application (`callpull.asgi.application`) with
the carrier + voice provider simulator (`simulators.telephony`) mounted at
/simulator/ and the local Web Push service (`simulators.webpush`) at
/simulator/webpush/, in the same process and on the same event loop. The product never
imports this package: settings choose this module in the embedded default (no
Twilio credentials, DEBUG on: `ASGI_APPLICATION = "simulators.asgi.application"`),
and `manage.py serve` runs whatever ASGI_APPLICATION names. With credentials the
product runs on `callpull.asgi.application` alone.

Lifespan goes to the product; when the product has stopped (its own shutdown
done), the simulator is closed: its calls end without callbacks and its HTTP
clients close. See docs/SIMULATOR.md.
"""

import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callpull.settings")

from callpull.asgi import application as product  # noqa: E402  (sets Django up)
from simulators.telephony.app import PREFIX, SimulatorApp, create_app  # noqa: E402
from simulators.telephony.config import SimulatorConfig  # noqa: E402
from simulators.webpush import PREFIX as WEBPUSH_PREFIX  # noqa: E402
from simulators.webpush import WebPushService  # noqa: E402

log = logging.getLogger("simulators")

_SHUTDOWN_DONE = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


class WithSimulator:
    """`product` with `simulator` answering every HTTP request under /simulator/."""

    def __init__(self, product, simulator: SimulatorApp):
        self.product = product
        self.simulator = simulator
        # The local Web Push service (RFC 8030) under /simulator/webpush/ (simulators.webpush).
        self.webpush = WebPushService()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith(WEBPUSH_PREFIX + "/"):
            return await self.webpush(scope, receive, send)
        if scope["type"] == "http" and _under_prefix(scope.get("path", "")):
            return await self.simulator(scope, receive, send)
        if scope["type"] == "lifespan":
            return await self.product(scope, receive, self._closing_after_shutdown(send))
        return await self.product(scope, receive, send)

    def _closing_after_shutdown(self, send):
        async def send_then_close(message):
            if message["type"] in _SHUTDOWN_DONE:
                try:
                    await self.simulator.aclose()
                except Exception:
                    log.exception("could not close the simulator")
            await send(message)

        return send_then_close


def _under_prefix(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


# Built at import so a bad SIMULATOR_* variable stops the server as it starts.
application = WithSimulator(product, create_app(SimulatorConfig.from_settings(), embedded=True))
