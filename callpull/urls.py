from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from callpull.api.errors import envelope
from callpull.web import companion

handler404 = "callpull.api.errors.handler404"
handler500 = "callpull.api.errors.handler500"


def index(request):
    """What the service offers, for API clients (the page at `/` is for people)."""
    return JsonResponse({"service": "callpull", "api": "/api/v1/", "docs": "/api/v1/docs/",
                         "schema": "/api/v1/schema/", "websocket": "/ws/v1/"})


def api_not_found(request, rest=""):
    return JsonResponse(envelope("not_found", "No such endpoint."), status=404)


urlpatterns = [
    path("", companion, name="companion"),
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", index, name="index"),
    path("api/v1/", include("devices.urls")),
    path("api/v1/", include("callpull.api.urls")),
    path("api/<path:rest>", api_not_found),
    path("telephony/twilio/", include("callpull.telephony.urls")),
]
