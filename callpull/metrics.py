"""GET /metrics: the metrics of notifications.metrics in Prometheus' text format.

Off (404, the same answer as any unknown path) while METRICS_TOKEN is unset; with it, only
`Authorization: Bearer <METRICS_TOKEN>` reads them (401 otherwise, the token compared in
constant time). The counts are call volumes and push outcomes, business data: see
docs/SECURITY.md.
"""

import hmac

from django.conf import settings
from django.http import Http404, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from notifications.metrics import exposition


def _authorized(request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


@csrf_exempt
@require_GET
def metrics(request):
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off")
    if not _authorized(request, token):
        response = HttpResponse("a valid metrics token is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = exposition()
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
