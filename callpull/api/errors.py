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
from django.views.defaults import bad_request
from rest_framework import exceptions, status
from rest_framework.views import exception_handler as drf_exception_handler

from devices.errors import ApiError

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


def _unavailable(exc) -> bool:
    """The database or Redis is briefly out of reach: the client should retry."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # redis is only installed with channels-redis
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError))


def exception_handler(exc, context):
    if _unavailable(exc):
        # Every write runs in a transaction, so nothing half-written stays behind.
        log.warning("service unavailable: %s: %s", type(exc).__name__, exc)
        exc = ApiError("service_unavailable", "The service is briefly unavailable. Try again in a moment.",
                       status=status.HTTP_503_SERVICE_UNAVAILABLE, retry_after=1)
    elif isinstance(exc, Http404):
        exc = ApiError("not_found", "Not found.", status=status.HTTP_404_NOT_FOUND)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):  # a view read a body over the limit (not under callpull.http)
        exc = too_large_error(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ApiError):
        response.data = envelope(exc.code, exc.message, exc.fields)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, exceptions.ValidationError):
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


def too_large_error(limit: int) -> ApiError:
    return ApiError("request_too_large", f"The request body is larger than {limit} bytes.",
                    status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)


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
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    log.error("unhandled error on %s %s", request.method, request.path)
    if _wants_api_error(request):
        return JsonResponse(envelope("server_error", "Something went wrong on our side."), status=500)
    from django.views.defaults import server_error

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
