"""Every error leaves the API in one envelope with a stable machine code:

    {"error": {"code": "invalid_phone_number", "message": "…", "fields": {…}}}

DRF exceptions pass through `exception_handler`; Django's own 404/500 for
paths under /api/ go through `handler404` / `handler500`.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
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


def _wants_api_error(request) -> bool:
    return request.path.startswith("/api/")


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
