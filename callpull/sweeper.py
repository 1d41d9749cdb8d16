"""The sweeper: it ends what its deadline passed (calls, pulls, legs never heard
of) and asks the provider about connected calls gone quiet, in the server
(embedded default) or in `manage.py sweep` (deployments with several workers).
Every ending is a guarded transition, so two sweepers are safe, only wasteful."""

import asyncio
import logging
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone

from callpull import actions, legs, moves
from callpull.events import announce_end, announce_pull
from callpull.models import PULL_FINAL_STATES, Call, CallLeg, CallState, LegState, Pull, PullState
from callpull.pulls import pull_failed
from callpull.statemachine import PENDING_STATES, Step, pull_transition, transition
from callpull.telephony import provider

log = logging.getLogger(__name__)


def sweep_once() -> int:
    close_old_connections()
    return calls_sweep(now=timezone.now())


async def sweep_loop() -> None:
    while True:
        try:
            await database_sync_to_async(sweep_once)()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed")
        await asyncio.sleep(settings.SWEEP_INTERVAL_SECONDS)


# What the sweep ends ----------------------------------------------------------------

def calls_sweep(*, now: datetime, limit: int = 200) -> int:
    """End calls (and pulls, and legs) whose deadline passed; returns how many calls were ended."""
    pulls_sweep(now=now)
    legs.legs_dialing_expired(now=now)
    calls_reconcile(now=now)  # connected calls carry no deadline: ask the provider about quiet ones
    due = list(Call.objects.select_related("line").filter(expires_at__lte=now).order_by("expires_at")[:limit])
    ended = 0
    for call in due:
        try:
            ended += _expire(call, now=now)
        except Exception:
            log.exception("sweeping call=%s failed", call.pk)
    return ended


def _expire(call: Call, *, now: datetime) -> bool:
    if call.state in PENDING_STATES and call.reject_sent_at and not call.provider_call_sid:
        name, reason = "forward_timeout", "forwarded_call_never_arrived"
    elif call.state == CallState.RINGING:
        name, reason = "ring_timeout", "no_answer"
    elif call.state == CallState.ANSWERING:
        name, reason = "forward_timeout", "forwarded_call_never_arrived"
    elif call.state == CallState.FORWARDED and call.answered_by_id is None:
        name, reason = "ring_timeout", "no_answer"
    elif call.state == CallState.FORWARDED:
        name, reason = "dial_failed", "dial_timeout"
    elif legs.holder_lost(call):  # its holder was revoked and nobody took the call on hold
        return legs.holder_lost_expired(call, now=now)
    else:  # other connected calls carry no deadline; clear a stale one
        Call.objects.filter(pk=call.pk, expires_at=call.expires_at).update(expires_at=None)
        return False
    held = call.state == CallState.FORWARDED
    if not transition(call, name, now=now, step=Step("expired", detail={"reason": reason}),
                      fields={"end_reason": reason}):
        return False
    log.info("call expired call=%s reason=%s", call.pk, reason)
    announce_end(call, now=now, reason=reason)
    if held:
        legs.release_caller(call, now=now)
    return True


def pulls_sweep(*, now: datetime) -> int:
    """Unanswered approvals count as denied; connections that never joined fail."""
    due = list(Pull.objects.select_related("call__line").filter(expires_at__lte=now)
               .exclude(state__in=PULL_FINAL_STATES))
    for pull in due:
        if pull.state == PullState.AWAITING_APPROVAL:
            if pull_transition(pull, "denied", now=now, fields={"decided_at": now, "reason": "timeout"},
                               step=Step("pull_denied", detail={"pull": str(pull.pk), "reason": "timeout"})):
                pull.refresh_from_db()
                announce_pull(pull, "pull.denied", now=now)
                if pull.leg_id:
                    moves.dial_in_release(pull, now=now)
        else:
            leg = CallLeg.objects.filter(pk=pull.leg_id).first()
            pull_failed(pull, now=now, reason="timeout")
            if leg is not None:
                legs.leg_remove(leg, now=now, reason="pull_timeout")
    return len(due)


# Reconciliation: what the provider says when its callbacks went missing ----------

RECONCILE_BATCH = 50  # calls handed to the provider pool per sweep


def calls_reconcile(*, now: datetime) -> int:
    """Ask the provider about connected calls not heard from for CALL_RECONCILE_SECONDS.

    A connected call has no deadline: only a callback ends it, and a callback the
    provider gave up on (the database was out of reach, a deploy, a lost request)
    would leave it connected for ever. So a quiet call (no timeline entry for that
    long) has its caller's call and its joined legs fetched from the provider's
    REST API, at most once per CALL_RECONCILE_SECONDS (a key in the shared cache
    also keeps several sweepers from asking twice), on the provider pool so the
    sweep never waits for the provider. Returns how many calls were handed over;
    never raises, so the sweep goes on whatever happens here.
    """
    period = settings.CALL_RECONCILE_SECONDS
    try:
        quiet = list(Call.objects.filter(state=CallState.CONNECTED, provider_call_sid__isnull=False)
                     .annotate(heard_at=Max("timeline__at")).filter(heard_at__lt=now - timedelta(seconds=period))
                     .order_by("heard_at").values_list("pk", flat=True)[:RECONCILE_BATCH])
        handed = 0
        for call_id in quiet:
            if cache.add(f"reconcile:{call_id}", 1, timeout=period):
                actions.run_provider_action(call_reconcile, call_id)
                handed += 1
        return handed
    except Exception:
        log.exception("reconciling connected calls failed")
        return 0


def call_reconcile(call_id) -> None:
    """Fetch a connected call's caller and joined legs from the provider; end
    what the provider says has ended, as its lost callback would have."""
    call = Call.objects.select_related("line").filter(pk=call_id, state=CallState.CONNECTED).first()
    if call is None or not call.provider_call_sid:
        return
    try:
        status = provider.call_status(call.provider_call_sid)
    except provider.ProviderError as exc:
        log.warning("reconciling call=%s: %s", call.pk, exc)
        return
    now = timezone.now()
    if status is None or status in provider.ENDED_STATUSES:  # a call the provider does not know is not live
        legs.caller_gone(call, status=status or "not_found", now=now, found_by="reconciliation")
        return
    for leg in call.legs.filter(state=LegState.JOINED, provider_call_sid__isnull=False):
        try:
            leg_status = provider.call_status(leg.provider_call_sid)
        except provider.ProviderError as exc:
            log.warning("reconciling leg=%s call=%s: %s", leg.pk, call.pk, exc)
            continue
        if leg_status is None or leg_status in provider.ENDED_STATUSES:
            legs.leg_left(leg=leg, now=now, found_by="reconciliation")
