"""The web companion: one page at `/`, its script and styles served as static files
(callpull/static/callpull/web/). The page is a device of kind `web` once signed in;
everything it does goes through the public API and the device WebSocket.

The page runs under a strict Content-Security-Policy (no inline script or style, no
third-party origin), set here and only on this view.

Its voice client (static/callpull/web/voice.js) is the simulator's in the embedded default
(settings.SIMULATOR_ENABLED) and Twilio's Voice JavaScript SDK otherwise: the page says which
in `<html data-voice>`, and then loads the SDK vendored by `make vendor` (static/callpull/vendor/,
from our origin, no CDN) and lets it reach Twilio's signalling and event hosts (`*.twilio.com`).

Its service worker (static/callpull/web/sw.js: the ring with the tab closed, Web Push) is served
at `/sw.js` so that its scope is the whole origin (the page is at `/`), never cached without
asking (`Cache-Control: no-cache`: a new worker reaches browsers at their next visit), with a
policy of its own that lets it reach the API only.
"""

from pathlib import Path

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

# The Voice JS SDK's browser bundle, as `make vendor` names it (twilio-voice-sdk-<version>.min.js).
VENDOR = Path(__file__).resolve().parent / "static" / "callpull" / "vendor"
VOICE_SDK = next((f"callpull/vendor/{path.name}" for path in sorted(VENDOR.glob("twilio-voice-sdk-*.min.js"))), None)
# Where the SDK connects (its signalling `wss://voice-js.<edge>.twilio.com/signal`, its events
# `https://eventgw[.<region>].twilio.com`, its sounds on `https://sdk.twilio.com`, which it
# may play from an <audio> element); the call's audio is WebRTC, which CSP does not govern.
TWILIO_HOSTS = "wss://*.twilio.com https://*.twilio.com"
TWILIO_MEDIA = "https://sdk.twilio.com"
SERVICE_WORKER = Path(__file__).resolve().parent / "static" / "callpull" / "web" / "sw.js"
# What the worker itself may do: call the API on this origin (answer, decline, store a renewed
# subscription). Notifications and opening the page are not fetches.
SERVICE_WORKER_POLICY = "default-src 'none'; connect-src 'self'"


def content_security_policy(host: str, *, twilio: bool = False) -> str:
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        # 'self' covers ws: and wss: to the same host in CSP 3; older engines need them named.
        f"connect-src 'self' ws://{host} wss://{host}" + (f" {TWILIO_HOSTS}" if twilio else ""),
        # The service worker at /sw.js (push.js registers it): this origin's only.
        "worker-src 'self'",
        *([f"media-src {TWILIO_MEDIA}"] if twilio else []),
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


@require_safe
def companion(request):
    twilio = not settings.SIMULATOR_ENABLED
    response = render(request, "callpull/companion.html", {
        "voice_provider": "twilio" if twilio else "simulator", "voice_sdk": VOICE_SDK if twilio else None})
    response["Content-Security-Policy"] = content_security_policy(request.get_host(), twilio=twilio)
    response["Referrer-Policy"] = "same-origin"
    response["Cache-Control"] = "no-cache"
    return response


@require_safe
def service_worker(request):
    response = HttpResponse(SERVICE_WORKER.read_bytes(), content_type="text/javascript; charset=utf-8")
    response["Content-Security-Policy"] = SERVICE_WORKER_POLICY
    response["Cache-Control"] = "no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    return response
