"""Webhooks of the voice provider (Twilio-compatible TwiML).

Each request must carry a valid X-Twilio-Signature over PUBLIC_BASE_URL + the
path and query it was sent to; otherwise 403. Two kinds, decided per endpoint:

- `twiml_webhook`: a caller waits on the answer (the voice webhook, a menu's
  action, a redirect target). Never an error page: any fault becomes a polite
  goodbye, because a provider that gets an error tells the caller "an
  application error has occurred".
- `state_callback`: the provider only reports what happened (call and leg
  status, conference events, the caller's dial ending). With the database or
  Redis out of reach the answer is 503 with Retry-After, so a provider that
  retries gets another chance; any other fault is a 500. Swallowing either
  would tell the provider the news was taken when it was lost.
"""

import logging
import time

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpResponse, HttpResponseForbidden
from django.http.multipartparser import MultiPartParserError
from django.utils import timezone
from django.utils.log import log_response
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from callpull.api.errors import unavailable
from callpull.telephony import provider, services
from notifications import metrics

log = logging.getLogger(__name__)


def _twiml(body: str) -> HttpResponse:
    return HttpResponse(body, content_type="text/xml; charset=utf-8")


# How long a provider should wait before retrying a callback the database could not take.
RETRY_AFTER_SECONDS = 1


def _unreadable(request, exc) -> HttpResponse:
    """A body no webhook can read (too large, too many fields, a broken multipart body):
    413 or 400 and one WARNING line, no traceback (nothing failed on our side)."""
    status = 413 if isinstance(exc, RequestDataTooBig) else 400
    response = HttpResponse("unreadable request body", status=status, content_type="text/plain")
    # log_response marks the answer logged, so Django's request logger does not log it again.
    log_response("webhook refused: unreadable body path=%s: %s: %s", request.path, type(exc).__name__, str(exc),
                 response=response, request=request, logger=log, level="warning")
    return response


def _endpoint(handler, *, reports_state: bool):
    @csrf_exempt
    @require_POST
    def view(request):
        started = time.perf_counter()
        try:
            return respond(request)
        finally:
            metrics.webhook_seconds(handler.__name__, time.perf_counter() - started)

    def respond(request):
        try:
            params = {key: request.POST.get(key) for key in request.POST}
        except (SuspiciousOperation, MultiPartParserError) as exc:
            return _unreadable(request, exc)
        url = settings.PUBLIC_BASE_URL + request.get_full_path()
        if not provider.signature_valid(url, params, request.headers.get("X-Twilio-Signature", "")):
            log.warning("webhook refused: bad signature path=%s", request.path)
            return HttpResponseForbidden("invalid signature", content_type="text/plain")
        try:
            answer = handler(request, params, timezone.now())
        except Exception as exc:
            if reports_state and unavailable(exc):
                log.warning("callback deferred, service unavailable path=%s call=%s sid=%s: %s: %s", request.path,
                            request.GET.get("call"), params.get("CallSid"), type(exc).__name__, exc)
                response = HttpResponse("service unavailable, retry", status=503, content_type="text/plain")
                response["Retry-After"] = str(RETRY_AFTER_SECONDS)
                return response
            log.exception("webhook failed path=%s call=%s sid=%s", request.path, request.GET.get("call"),
                          params.get("CallSid"))
            if reports_state:
                return HttpResponse("callback failed", status=500, content_type="text/plain")
            answer = provider.twiml_goodbye(services.GOODBYE)
        if answer is None:
            return HttpResponse(status=204)
        return _twiml(answer)

    view.__name__ = handler.__name__
    return view


def twiml_webhook(handler):
    """A webhook the caller waits on: always TwiML, a polite goodbye on any fault."""
    return _endpoint(handler, reports_state=False)


def state_callback(handler):
    """A callback that reports state: 503 + Retry-After while the database is out of reach."""
    return _endpoint(handler, reports_state=True)


@twiml_webhook
def voice(request, params, now):
    return services.call_arrived(params=params, now=now)


@twiml_webhook
def dial_in_pin(request, params, now):
    return services.dial_in_pin(attempt=request.GET.get("attempt"), params=params, now=now)


@twiml_webhook
def dial_in_choice(request, params, now):
    return services.dial_in_choice(device_id=request.GET.get("device"), proof=request.GET.get("proof"),
                                   params=params, now=now)


@twiml_webhook
def join(request, params, now):
    return services.join_after_approval(pull_id=request.GET.get("pull"), params=params)


@twiml_webhook
def screen(request, params, now):
    # A number leg's own call: answered (the whisper), then `step=key` (the key pressed).
    handler = services.screen_key if request.GET.get("step") == "key" else services.screen_answered
    return handler(call_id=request.GET.get("call"), leg_id=request.GET.get("leg"), params=params, now=now)


@state_callback
def conference(request, params, now):
    services.conference_event(call_id=request.GET.get("call"), params=params, now=now)
    return None


@twiml_webhook
def fallback(request, params, now):
    return services.fallback_twiml(call_id=request.GET.get("call"), params=params)


@state_callback
def dial_status(request, params, now):
    # The caller's <Dial><Conference> ended: they hung up (the provider ignores the
    # answer) or the conference ended under them (the answer is a hang-up either way).
    return services.dial_finished(call_id=request.GET.get("call"), params=params, now=now)


@state_callback
def status(request, params, now):
    services.status_changed(call_id=request.GET.get("call"), leg=request.GET.get("leg"), params=params, now=now)
    return None
