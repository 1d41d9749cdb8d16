"""The one exception every API error is raised as.

Rendered by callpull.api.errors into the contract's envelope:
`{"error": {"code", "message", "fields"}}`. It lives here, in the lowest
package, so devices, notifications and callpull can all raise it.
"""

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


def forbidden(code: str, message: str) -> ApiError:
    return ApiError(code, message, status=http.HTTP_403_FORBIDDEN)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(code, message, status=http.HTTP_409_CONFLICT)
