"""What a worker says and starts when it comes up."""

import asyncio
import logging
from urllib.parse import urlsplit

from django.conf import settings

from notifications import presence

log = logging.getLogger("callpull")


def describe() -> list[str]:
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        db = f"SQLite ({database['NAME']})"
    else:
        db = f"PostgreSQL ({database.get('HOST') or 'socket'}:{database.get('PORT') or 5432}/{database['NAME']})"
    if settings.REDIS_URL:
        redis = urlsplit(settings.REDIS_URL)
        layer = f"Redis ({redis.hostname}:{redis.port or 6379}): several workers share events and presence"
    else:
        layer = "in-memory: one process only (set REDIS_URL for several workers)"
    fcm = (f"on ({settings.FCM_ENDPOINT})" if settings.FCM_CREDENTIALS_FILE
           else "off: no FCM_CREDENTIALS_FILE, devices are reached over WebSocket only")
    if settings.SIMULATOR_ENABLED:
        provider = f"the bundled carrier/provider simulator at {settings.PUBLIC_BASE_URL}/simulator/"
    else:
        provider = f"Twilio-compatible at {settings.TWILIO_API_BASE}"
    return [
        f"database:      {db}",
        f"channel layer: {layer}",
        f"FCM:           {fcm}",
        f"voice provider: {provider}",
        f"public URL:    {settings.PUBLIC_BASE_URL} (server numbers: {', '.join(settings.SERVER_NUMBERS)})",
        f"sign-up:       {'open' if settings.ALLOW_SIGNUP else 'closed'}",
        f"sweeper:       {'in this process' if settings.SWEEPER_IN_PROCESS else 'off here (run manage.py sweep)'}",
    ]


def announce() -> None:
    log.info("callpull worker %s starting", presence.WORKER_ID)
    for line in describe():
        log.info("  %s", line)


def background_tasks():
    from callpull.sweeper import sweep_loop

    tasks = [presence.heartbeat_loop()]
    if settings.SWEEPER_IN_PROCESS:
        tasks.append(sweep_loop())
    return tasks


async def warm_up() -> None:
    """Build what the first ring would otherwise build (the FCM sender), off the loop."""
    from notifications import fcm

    await asyncio.to_thread(fcm.start)


async def shutdown() -> None:
    """Let in-process helpers finish cleanly (the simulator's pending requests, FCM
    sends, then the recording of their results)."""
    from notifications import fcm, push_results

    if settings.SIMULATOR_ENABLED:
        from callpull.simulator.app import application as simulator

        await simulator.aclose()
    fcm.shutdown(timeout=2.0)
    await asyncio.to_thread(push_results.RECORDER.flush, 2.0)
