"""Ending calls whose deadline passed, in the server (embedded default) or in
`manage.py sweep` (deployments with several workers)."""

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from callpull.calls import calls_sweep

log = logging.getLogger(__name__)


def sweep_once() -> int:
    close_old_connections()
    return calls_sweep(now=timezone.now())


async def sweep_loop() -> None:
    while True:
        try:
            await database_sync_to_async(sweep_once)()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed")
        await asyncio.sleep(settings.SWEEP_INTERVAL_SECONDS)
