from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from callpull.api.errors import envelope
from callpull.metrics import metrics
from callpull.web import companion, service_worker

handler400 = "callpull.api.errors.handler400"
handler404 = "callpull.api.errors.handler404"
handler500 = "callpull.api.errors.handler500"


# The two JSON views below use no cookie or session, so a POST to them is not a CSRF target:
# exempt, they answer what they are (the index, the 404 envelope) rather than Django's 403 page.
@csrf_exempt
def index(request):
    """What the service offers, for API clients (the page at `/` is for people)."""
    return JsonResponse({"service": "callpull", "api": "/api/v1/", "docs": "/api/v1/docs/",
                         "schema": "/api/v1/schema/", "websocket": "/ws/v1/"})


@csrf_exempt
def api_not_found(request, rest=""):
    return JsonResponse(envelope("not_found", "No such endpoint."), status=404)


urlpatterns = [
    path("", companion, name="companion"),
    path("sw.js", service_worker, name="service-worker"),
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", index, name="index"),
    path("api/v1/", include("devices.urls")),
    path("api/v1/", include("callpull.api.urls")),
    path("api/<path:rest>", api_not_found),
    path("telephony/twilio/", include("callpull.telephony.urls")),
    path("metrics", metrics, name="metrics"),
]
