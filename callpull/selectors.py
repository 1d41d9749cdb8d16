"""Reads of the call workflow, always scoped to the asking user."""

import uuid

from callpull.models import Line
from devices.errors import not_found


def lines_for_user(*, user):
    return Line.objects.filter(user=user).select_related("server_number").order_by("created_at")


def line_for_user(*, user, line_id) -> Line:
    try:
        line_id = uuid.UUID(str(line_id))
    except ValueError:
        raise not_found("line") from None
    line = lines_for_user(user=user).filter(pk=line_id).first()
    if line is None:
        raise not_found("line")
    return line
