"""What a worker says and starts when it comes up."""

import asyncio
import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import Count

from callpull.models import Line
from callpull.sweeper import sweep_loop
from notifications import apns, fcm, presence, push_results, webpush

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
    apns_line = (f"on ({settings.APNS_ENDPOINT}, topic {settings.APNS_BUNDLE_ID}[.voip], key {settings.APNS_KEY_ID})"
                 if settings.APNS_KEY_FILE
                 else "off: no APNS_KEY_FILE, iOS devices are reached over WebSocket/FCM only")
    webpush_line = (f"on (VAPID key {settings.VAPID_PRIVATE_KEY_FILE})" if settings.WEBPUSH_ENABLED
                    else "off: no VAPID_PRIVATE_KEY_FILE")
    if settings.SIMULATOR_ENABLED:  # no TWILIO_ACCOUNT_SID: the development account
        provider = f"the bundled carrier/provider simulator at {settings.TWILIO_API_BASE}/"
    else:
        provider = f"Twilio-compatible at {settings.TWILIO_API_BASE}"
    return [
        f"database:      {db}",
        f"channel layer: {layer}",
        f"FCM:           {fcm}",
        f"APNs:          {apns_line}",
        f"Web Push:      {webpush_line}",
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
    tasks = [presence.heartbeat_loop()]
    if settings.SWEEPER_IN_PROCESS:
        tasks.append(sweep_loop())
    return tasks


def server_numbers() -> tuple[str, int]:
    """The summary's line on server numbers, and how many lines share theirs with another
    line (their forwarded calls are told apart by caller and ForwardedFrom only)."""
    loads = list(Line.objects.order_by().values("server_number").annotate(n=Count("id")).values_list("n", flat=True))
    sharing = sum(load for load in loads if load > 1)
    return (f"server numbers: {sum(loads)} lines, {sharing} share a number "
            f"({len(settings.SERVER_NUMBERS)} in SERVER_NUMBERS)"), sharing


def announce_server_numbers() -> None:
    """Log `server_numbers()`: at WARNING when lines share a number."""
    try:
        line, sharing = server_numbers()
    except DatabaseError as exc:  # a database not migrated yet
        log.info("  server numbers: unknown (%s)", type(exc).__name__)
        return
    log.log(logging.WARNING if sharing else logging.INFO, "  %s", line)


def _announce_server_numbers_in_thread() -> None:
    try:
        announce_server_numbers()
    finally:
        connections.close_all()  # this worker thread's own


async def warm_up() -> None:
    """Say what needs the database (lines per server number) and build what the first ring
    would otherwise build (the FCM sender), off the loop."""
    await asyncio.to_thread(_announce_server_numbers_in_thread)
    await asyncio.to_thread(fcm.start)
    try:
        await asyncio.to_thread(apns.start)
    except Exception as error:  # noqa: BLE001 - a key that cannot sign yet is reported by the first push
        log.warning("apns sender not started: %s", error)
    try:
        await asyncio.to_thread(webpush.start)  # loads (or generates) the VAPID key
    except Exception as error:  # noqa: BLE001 - an unreadable key is reported by the first push
        log.warning("webpush sender not started: %s", error)


async def shutdown() -> None:
    """Let in-process helpers finish cleanly (FCM sends, then the recording of their
    results). The development entry point closes the simulator after this."""
    fcm.shutdown(timeout=2.0)
    apns.shutdown(timeout=2.0)
    webpush.shutdown(timeout=2.0)
    await asyncio.to_thread(push_results.RECORDER.flush, 2.0)
