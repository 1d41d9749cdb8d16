"""A pull's steps that need no leg of it: which pull a leg carries, and a pull
failing (its leg failed, it timed out, its requester was revoked). Below the legs
(callpull.legs fails a leg's pull with its leg); the rest of a pull's life is in
callpull.moves (request, approval, dial-in) and callpull.joins (completion)."""

from datetime import datetime

from callpull.events import announce_pull
from callpull.models import CallLeg, Pull, PullState
from callpull.statemachine import Step, pull_transition


def open_pull(leg: CallLeg) -> Pull | None:
    """The approved pull `leg` was dialled (or dialled in) for, if any."""
    return Pull.objects.select_related("call").filter(leg=leg, state=PullState.APPROVED).first()


def pull_failed(pull: Pull, *, now: datetime, reason: str) -> None:
    if not pull_transition(pull, "failed", now=now, fields={"reason": reason},
                           step=Step("pull_failed", pull.requested_by_id, {"pull": str(pull.pk), "reason": reason})):
        return
    pull.refresh_from_db()
    announce_pull(pull, "pull.failed", now=now)
