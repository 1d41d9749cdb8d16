"""Webhooks of the voice provider (Twilio-compatible TwiML).

Each request must carry a valid X-Twilio-Signature over PUBLIC_BASE_URL + the
path and query it was sent to; otherwise 403. Answers are TwiML, and never an
error page: a fault becomes a polite goodbye to the caller.
"""

import logging

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from callpull.telephony import provider, services

log = logging.getLogger(__name__)


def _twiml(body: str) -> HttpResponse:
    return HttpResponse(body, content_type="text/xml; charset=utf-8")


def webhook(handler):
    @csrf_exempt
    @require_POST
    def view(request):
        params = {key: request.POST.get(key) for key in request.POST}
        url = settings.PUBLIC_BASE_URL + request.get_full_path()
        if not provider.signature_valid(url, params, request.headers.get("X-Twilio-Signature", "")):
            log.warning("webhook refused: bad signature path=%s", request.path)
            return HttpResponseForbidden("invalid signature", content_type="text/plain")
        try:
            answer = handler(request, params, timezone.now())
        except Exception:
            log.exception("webhook failed path=%s sid=%s", request.path, params.get("CallSid"))
            answer = provider.twiml_goodbye(services.GOODBYE)
        if answer is None:
            return HttpResponse(status=204)
        return _twiml(answer)

    view.__name__ = handler.__name__
    return view


@webhook
def voice(request, params, now):
    return services.call_arrived(params=params, now=now)


@webhook
def dial_in_choice(request, params, now):
    return services.dial_in_choice(device_id=request.GET.get("device"), params=params, now=now)


@webhook
def join(request, params, now):
    return services.join_after_approval(pull_id=request.GET.get("pull"), params=params)


@webhook
def conference(request, params, now):
    services.conference_event(call_id=request.GET.get("call"), params=params, now=now)
    return None


@webhook
def fallback(request, params, now):
    return services.fallback_twiml(call_id=request.GET.get("call"), params=params)


@webhook
def dial_status(request, params, now):
    return services.dial_finished(call_id=request.GET.get("call"), params=params, now=now)


@webhook
def status(request, params, now):
    services.status_changed(call_id=request.GET.get("call"), leg=request.GET.get("leg"), params=params, now=now)
    return None
