"""The one exception every API error is raised as.

Rendered by callpull.api.errors into the contract's envelope:
`{"error": {"code", "message", "fields"}}`. It lives here, in the lowest
package, so devices, notifications and callpull can all raise it.
"""

import uuid

from rest_framework import status as http
from rest_framework.exceptions import APIException


class ApiError(APIException):
    def __init__(self, code: str, message: str, *, status: int = http.HTTP_400_BAD_REQUEST,
                 fields: dict | None = None, retry_after: int | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after


def not_found(what: str = "object") -> ApiError:
    """404 for absent objects and for objects of other users alike."""
    return ApiError("not_found", f"No such {what}.", status=http.HTTP_404_NOT_FOUND)


def one_or_404(queryset, object_id, what: str):
    """The object with this id among `queryset` (already scoped to the asking
    user), or 404 — for a malformed id, a missing object and another user's alike."""
    try:
        object_id = uuid.UUID(str(object_id))
    except ValueError:
        raise not_found(what) from None
    found = queryset.filter(pk=object_id).first()
    if found is None:
        raise not_found(what)
    return found


def forbidden(code: str, message: str) -> ApiError:
    return ApiError(code, message, status=http.HTTP_403_FORBIDDEN)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(code, message, status=http.HTTP_409_CONFLICT)
