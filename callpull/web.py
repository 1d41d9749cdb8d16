"""The web companion: one page at `/`, its script and styles served as static files
(callpull/static/callpull/web/). The page is a device of kind `web` once signed in;
everything it does goes through the public API and the device WebSocket.

The page runs under a strict Content-Security-Policy (no inline script or style, no
third-party origin), set here and only on this view.
"""

from django.shortcuts import render
from django.views.decorators.http import require_safe


def content_security_policy(host: str) -> str:
    return "; ".join([
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        # 'self' covers ws: and wss: to the same host in CSP 3; older engines need them named.
        f"connect-src 'self' ws://{host} wss://{host}",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


@require_safe
def companion(request):
    response = render(request, "callpull/companion.html")
    response["Content-Security-Policy"] = content_security_policy(request.get_host())
    response["Referrer-Policy"] = "same-origin"
    response["Cache-Control"] = "no-cache"
    return response
