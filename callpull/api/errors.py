"""Every error leaves the API in one envelope with a stable machine code:

    {"error": {"code": "invalid_phone_number", "message": "…", "fields": {…}}}

DRF exceptions pass through `exception_handler`; Django's own 400/404/500 for
paths under /api/ go through `handler400` / `handler404` / `handler500`; a body
over the size limit is refused by callpull.http with `request_too_large`; and
`ApiErrorEnvelopeMiddleware`, outermost, puts whatever error Django answers
itself under /api/ into the envelope (a refused Host, its DEBUG pages).
"""

import logging
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse, JsonResponse
from django.views.defaults import bad_request, page_not_found, server_error
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from devices.errors import ServiceError

log = logging.getLogger(__name__)

# DRF's default codes, renamed where the contract has a better word.
CODE_FOR = {
    "invalid": "invalid_input",
    "not_authenticated": "not_authenticated",
    "authentication_failed": "invalid_token",
    "permission_denied": "forbidden",
    "throttled": "rate_limited",
    "parse_error": "malformed_json",
}


# The one place a service's refusal (devices.errors.ServiceError, by its code) becomes an
# HTTP status. A code missing here is a bug: tests/callpull/test_error_codes.py finds every
# code the product raises and fails if one is absent.
STATUS_FOR_CODE = {
    # 400: the request itself is wrong
    "invalid_input": 400, "invalid_password": 400, "invalid_phone_number": 400, "invalid_region": 400,
    "invalid_pairing_code": 400, "json_too_deep": 400, "sip_domain_not_allowed": 400, "unknown_fields": 400,
    "wrong_code": 400,
    # 401: who you are could not be established
    "invalid_credentials": 401,
    # 403: known, but not allowed
    "handset_only": 403, "handset_requires_password": 403, "no_voice_identity": 403, "not_holder": 403,
    "number_not_allowed": 403, "own_device_only": 403, "reauthentication_required": 403, "secondary_only": 403,
    "signup_disabled": 403, "transfer_pin_not_set": 403, "wrong_pin": 403,
    # 404: absent, or another user's
    "not_found": 404, "webpush_disabled": 404,
    # 409: not in a state that allows it
    "already_answered": 409, "already_here": 409, "already_verified": 409, "call_ended": 409,
    "call_not_movable": 409, "call_not_ringing": 409, "connect_not_verified": 409, "forwarding_not_active": 409,
    "invalid_state": 409, "line_taken": 409, "no_connect_target": 409, "no_number_target": 409,
    "number_not_callable": 409, "pull_in_progress": 409, "pull_not_pending": 409, "transfer_in_progress": 409,
    "username_taken": 409, "verification_expired": 409,
    # 413, 429: too much
    "request_too_large": 413, "rate_limited": 429,
    # 502, 503: someone else is failing
    "provider_unavailable": 502, "no_server_number": 503, "service_unavailable": 503,
    "voice_tokens_not_configured": 503,
}


def status_for(error: ServiceError) -> int:
    try:
        return STATUS_FOR_CODE[error.code]
    except KeyError:
        log.error("error code %r has no HTTP status in STATUS_FOR_CODE: answering 500", error.code)
        return 500


def service_error_response(error: ServiceError) -> Response:
    set_rollback()  # as DRF does for its own exceptions (ATOMIC_REQUESTS)
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return Response(envelope(error.code, error.message, error.fields), status=status_for(error), headers=headers)


def envelope(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail, prefix: str = "") -> dict:
    """{"device": {"kind": ["…"]}} → {"device.kind": ["…"]}"""
    if isinstance(detail, dict):
        out = {}
        for key, value in detail.items():
            name = prefix if key == "non_field_errors" and prefix else (f"{prefix}.{key}" if prefix else str(key))
            out.update(_flatten(value, name))
        return out
    if isinstance(detail, list) and detail and all(isinstance(item, (dict, list)) for item in detail):
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    messages = [str(item) for item in detail] if isinstance(detail, list) else [str(detail)]
    return {prefix or "non_field_errors": messages}


def unavailable(exc) -> bool:
    """The database or Redis is briefly out of reach: the client should retry."""
    return isinstance(exc, (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError))


def exception_handler(exc, context):
    if unavailable(exc):
        # Every write runs in a transaction, so nothing half-written stays behind.
        log.warning("service unavailable: %s: %s", type(exc).__name__, exc)
        exc = ServiceError("service_unavailable", "The service is briefly unavailable. Try again in a moment.",
                           retry_after=1)
    elif isinstance(exc, Http404):
        exc = ServiceError("not_found", "Not found.")
    elif isinstance(exc, RequestDataTooBig):  # a view read a body over the limit (not under callpull.http)
        exc = too_large_error(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        general = fields.pop("non_field_errors", None)
        message = general[0] if general else "The request has invalid fields: " + ", ".join(sorted(fields)) + "."
        response.data = envelope("invalid_input", message, fields)
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        response.data = envelope(CODE_FOR.get(code, code), str(exc.detail))
    return response


def is_api_path(path: str) -> bool:
    return path.startswith("/api/")


def _wants_api_error(request) -> bool:
    return is_api_path(request.path)


def too_large_error(limit: int) -> ServiceError:
    return ServiceError("request_too_large", f"The request body is larger than {limit} bytes.")


def request_too_large(path: str, limit: int) -> HttpResponse:
    """413 for a body over `limit` bytes: the envelope under /api/, plain text elsewhere."""
    message = too_large_error(limit).message
    if is_api_path(path):
        response = JsonResponse(envelope("request_too_large", message), status=413)
    else:
        response = HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
    return response


def handler400(request, exception=None):
    """Django's 400 (SuspiciousOperation such as a Host outside ALLOWED_HOSTS, BadRequest,
    an unreadable multipart body): the envelope under /api/. Django calls it only without
    DEBUG; with DEBUG the middleware below converts its debug page."""
    if _wants_api_error(request):
        return JsonResponse(envelope("bad_request", "The request could not be read."), status=400)
    return bad_request(request, exception)


def handler404(request, exception=None):
    if _wants_api_error(request):
        return JsonResponse(envelope("not_found", "No such endpoint."), status=404)
    return page_not_found(request, exception)


def handler500(request):
    log.error("unhandled error on %s %s", request.method, request.path)
    if _wants_api_error(request):
        return JsonResponse(envelope("server_error", "Something went wrong on our side."), status=500)
    return server_error(request)


# The code and message for an error Django answered itself (not a DRF view, not a handler above).
_GENERIC = {
    400: ("bad_request", "The request could not be read."),
    403: ("forbidden", "You do not have permission to perform this action."),
    404: ("not_found", "No such endpoint."),
    405: ("method_not_allowed", "Method not allowed."),
    413: ("request_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Unsupported media type."),
    500: ("server_error", "Something went wrong on our side."),
}


def _from_phrase(status: int) -> tuple[str, str]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error", "The request failed."
    return phrase.lower().replace(" ", "_").replace("-", "_"), phrase + "."


_BODY_HEADERS = {"content-type", "content-length", "content-encoding", "content-disposition", "content-language"}


def as_envelope(response: HttpResponse) -> HttpResponse:
    """`response` (an error) as the envelope, unless it is JSON (the envelope) already."""
    if response.get("Content-Type", "").startswith("application/json") or response.streaming:
        return response
    status = response.status_code
    code, message = _GENERIC.get(status) or _from_phrase(status)
    converted = JsonResponse(envelope(code, message), status=status)
    for header, value in response.items():  # Allow, Retry-After, the security headers…, not the body's
        if header.lower() not in _BODY_HEADERS:
            converted[header] = value
    return converted


class ApiErrorEnvelopeMiddleware:
    """Outermost middleware: an error answered under /api/ is always the envelope,
    whichever layer answered it (Django's 400 for a Host outside ALLOWED_HOSTS, its
    DEBUG error pages, a CSRF refusal)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code >= 400 and _wants_api_error(request):
            return as_envelope(response)
        return response
