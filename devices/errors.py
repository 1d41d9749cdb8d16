"""The one error services raise when they refuse a request: a stable code, a message
for people, and optionally the fields at fault and when to try again.

It says nothing about HTTP. The API layer (callpull.api.errors) maps each code to a
status in one table (`STATUS_FOR_CODE`) and renders the contract's envelope
`{"error": {"code", "message", "fields"}}`. It lives here, in the lowest package, so
devices, notifications and callpull can all raise it.
"""

import uuid


class ServiceError(Exception):
    def __init__(self, code: str, message: str, *, fields: dict | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r})"


def not_found(what: str = "object") -> ServiceError:
    """For absent objects and for objects of other users alike."""
    return ServiceError("not_found", f"No such {what}.")


def one_or_not_found(queryset, object_id, what: str):
    """The object with this id among `queryset` (already scoped to the asking user), or
    `not_found`: for a malformed id, a missing object and another user's alike."""
    try:
        object_id = uuid.UUID(str(object_id))
    except ValueError:
        raise not_found(what) from None
    found = queryset.filter(pk=object_id).first()
    if found is None:
        raise not_found(what)
    return found
