"""Reads of the call workflow, always scoped to the asking user."""

from callpull.models import Line
from devices.errors import one_or_not_found


def lines_for_user(*, user):
    return Line.objects.filter(user=user).select_related("server_number").order_by("created_at")


def line_for_user(*, user, line_id) -> Line:
    return one_or_not_found(lines_for_user(user=user), line_id, "line")
