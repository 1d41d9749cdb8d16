"""Legs of a call's conference: the anchor that lets a live call move.

The forwarded caller waits in a per-call conference (`Call.conference_name`,
hearing ringback) that ends when the caller leaves. Devices are dialled into it
as participants; moving the call means adding the new device's leg and, once it
has joined, removing (or muting) the old one. The caller's leg is never touched,
so the caller hears nothing but the new device's voice.

Provider REST calls run off the request thread (`run_provider_action`), so a
webhook answers at once and a slow provider never holds a user's request.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone

from callpull.calls import all_devices, announce_end, notify
from callpull.models import Call, CallLeg, CallState, LegRole, LegState, Pull, PullState
from callpull.statemachine import Step, record, transition
from callpull.telephony import provider
from callpull.verification import target_verified
from devices.models import Device

log = logging.getLogger(__name__)

_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="provider")


def run_provider_action(fn, *args, **kwargs) -> None:
    """Run a provider REST action in the background (inline when
    PROVIDER_ACTIONS_INLINE, as in unit tests)."""
    if settings.PROVIDER_ACTIONS_INLINE:
        fn(*args, **kwargs)
        return

    def task():
        close_old_connections()
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("provider action %s failed", getattr(fn, "__name__", fn))
        finally:
            close_old_connections()

    _executor.submit(task)


def _urls(call: Call, leg: CallLeg) -> dict:
    from callpull.telephony.services import webhook_url

    return {"status_url": webhook_url("status", call=call.pk, leg=leg.pk),
            "conference_status_url": webhook_url("conference", call=call.pk)}


# Dialling --------------------------------------------------------------------

def leg_dial(*, call: Call, now: datetime, role: str, device: Device | None = None, number: str = "",
             pull: Pull | None = None) -> CallLeg:
    """Add a participant (a device's connect target, or a number) to the call's conference.
    A revoked device is never dialled (say, the device that answered a call was revoked
    before the forwarded call arrived): its leg fails at once. The `pull` the leg is for
    is linked to it before anything is dialled, so a leg that fails at once (refused
    target, provider error) fails its pull too instead of leaving it approved."""
    leg = CallLeg.objects.create(call=call, device=device, number=number, role=role, created_at=now)
    if pull is not None:
        Pull.objects.filter(pk=pull.pk).update(leg=leg)
        pull.leg = leg
    record(call, now=now, step=Step("leg_dialing", device.pk if device else None,
                                    {"role": role, **({"number": number} if number else {})}))
    if device is not None and Device.all_objects.filter(pk=device.pk, revoked_at__isnull=False).exists():
        leg_failed(leg=leg, reason="device_revoked", now=now)
        return leg
    run_provider_action(_dial, leg.pk)
    return leg


def _dial(leg_id) -> None:
    leg = CallLeg.objects.select_related("call__line__server_number", "device").get(pk=leg_id)
    call = leg.call
    kind, address = (leg.device.connect_type, leg.device.connect_address) if leg.device else ("number", leg.number)
    if leg.device and not target_verified(leg.device):  # the target changed (or lost its proof) since
        log.warning("not dialling leg=%s call=%s: device=%s has no verified connect target",
                    leg.pk, call.pk, leg.device_id)
        leg_failed(leg=leg, reason="target_not_verified", now=timezone.now())
        return
    try:
        sid = provider.participant_add(
            conference=call.conference_name, kind=kind, address=address,
            caller_id=call.line.server_number.number, label=str(leg.pk), timeout=settings.DIAL_TIMEOUT_SECONDS,
            **_urls(call, leg))
    except provider.ProviderError as exc:
        log.warning("dialling leg=%s call=%s failed: %s", leg.pk, call.pk, exc)
        leg_failed(leg=leg, reason="provider_error", now=timezone.now())
        return
    CallLeg.objects.filter(pk=leg.pk, provider_call_sid__isnull=True).update(provider_call_sid=sid)


def leg_remove(leg: CallLeg, *, now: datetime, reason: str) -> bool:
    """Take a leg out of the conference (its call is hung up by the provider). True when
    this removed it (it was dialling or in the conference)."""
    if not CallLeg.objects.filter(pk=leg.pk, state__in=[LegState.DIALING, LegState.JOINED]).update(
            state=LegState.LEFT, ended_at=now, end_reason=reason):
        return False
    sid = CallLeg.objects.values_list("provider_call_sid", flat=True).get(pk=leg.pk)
    if sid:
        conference = leg.call.conference_name
        run_provider_action(_remove, conference, sid)
    return True


def _remove(conference: str, sid: str) -> None:
    try:
        provider.participant_remove(conference=conference, call_sid=sid)
    except provider.ProviderError as exc:
        log.warning("removing %s from %s failed: %s", sid, conference, exc)


def _mute(conference: str, sid: str) -> None:
    try:
        provider.participant_mute(conference=conference, call_sid=sid, muted=True)
    except provider.ProviderError as exc:
        log.warning("muting %s in %s failed: %s", sid, conference, exc)


def release_caller(call: Call, *, now: datetime, goodbye: bool = False) -> None:
    """Nobody takes (or keeps) the call: the caller goes to the line's fallback,
    else is hung up politely. Ends the conference with the caller.

    `goodbye`: the caller had been talking (the device holding the call was revoked
    and nobody took it): the fallback applies although the call is `completed`, and
    without one the caller hears a goodbye (the `fallback` webhook says it) instead
    of being cut off."""
    from callpull.telephony.services import webhook_url

    if not call.provider_call_sid:
        return
    for leg in call.legs.filter(state__in=[LegState.DIALING, LegState.JOINED]):
        CallLeg.objects.filter(pk=leg.pk).update(state=LegState.LEFT, ended_at=now, end_reason="call_ended")
    if call.line.fallback_number and (goodbye or call.state != CallState.COMPLETED):
        record(call, now=now, step=Step("sent_to_fallback", detail={"number": call.line.fallback_number}))
        run_provider_action(_redirect, call.provider_call_sid, webhook_url("fallback", call=call.pk))
    elif goodbye:
        record(call, now=now, step=Step("caller_released", detail={"goodbye": True}))
        run_provider_action(_redirect, call.provider_call_sid, webhook_url("fallback", call=call.pk))
    else:
        record(call, now=now, step=Step("caller_released"))
        run_provider_action(_hangup, call.provider_call_sid)


def hold_caller(call: Call, *, hold: bool, hold_url: str | None = None) -> None:
    """Put the caller's participant on hold (hearing `hold_url`) or take it off hold."""
    if call.provider_call_sid:
        run_provider_action(_hold, call.conference_name, call.provider_call_sid, hold, hold_url)


def _hold(conference: str, sid: str, hold: bool, hold_url: str | None) -> None:
    try:
        provider.participant_hold(conference=conference, call_sid=sid, hold=hold, hold_url=hold_url)
    except provider.ProviderError as exc:
        log.warning("%s %s in %s failed: %s", "holding" if hold else "unholding", sid, conference, exc)


def _redirect(sid: str, url: str) -> None:
    try:
        provider.call_redirect(sid, url)
    except provider.ProviderError as exc:
        log.warning("redirect of %s failed: %s", sid, exc)


def _hangup(sid: str) -> None:
    try:
        provider.call_hangup(sid)
    except provider.ProviderError as exc:
        log.warning("hang-up of %s failed: %s", sid, exc)


# What the provider tells us about legs -----------------------------------------

def _open_pull(leg: CallLeg) -> Pull | None:
    return Pull.objects.select_related("call").filter(leg=leg, state=PullState.APPROVED).first()


def leg_joined(*, leg: CallLeg, now: datetime, call_sid: str | None = None) -> None:
    fields = {"state": LegState.JOINED, "joined_at": now}
    if call_sid:
        fields["provider_call_sid"] = call_sid
    if not CallLeg.objects.filter(pk=leg.pk, state=LegState.DIALING).update(**fields):
        sid = call_sid or leg.provider_call_sid
        if sid and CallLeg.objects.filter(pk=leg.pk, state=LegState.LEFT, joined_at__isnull=True).exists():
            # Removed before it joined (its device was revoked, its pull timed out) and
            # joined all the same: take it out again.
            run_provider_action(_remove, leg.call.conference_name, sid)
        return
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    if call.is_terminal:  # joined too late: nothing left to carry
        leg_remove(leg, now=now, reason="call_ended")
        return
    record(call, now=now, step=Step("leg_joined", leg.device_id, {"role": leg.role}))
    if leg.role == LegRole.TRANSFER:
        _transfer_completed(call, leg, now=now)
        return
    if call.state == CallState.FORWARDED:
        if transition(call, "device_connected", now=now, step=Step("connected", leg.device_id),
                      fields={"held_by_id": leg.device_id, "expires_at": None}):
            notify(call, "call.connected", all_devices(call), now=now, push=False)
        return
    pull = _open_pull(leg)
    if pull is not None:
        from callpull import moves

        moves.pull_completed(pull, leg, now=now)


def _transfer_completed(call: Call, leg: CallLeg, *, now: datetime) -> None:
    on_hold = holder_lost(call)  # the caller waits on hold since the holder was revoked
    for other in call.legs.filter(state__in=[LegState.DIALING, LegState.JOINED]).exclude(pk=leg.pk):
        leg_remove(other, now=now, reason="transferred")
    Call.objects.filter(pk=call.pk).update(held_by=None, transferred_to=leg.number, expires_at=None)
    call.held_by_id, call.transferred_to, call.expires_at = None, leg.number, None
    record(call, now=now, step=Step("transferred", detail={"number": leg.number}))
    if on_hold:
        hold_caller(call, hold=False)
    notify(call, "call.transferred", all_devices(call), now=now, push=False, number=leg.number)


def leg_failed(*, leg: CallLeg, reason: str, now: datetime) -> None:
    """The leg never joined: no answer, busy, failed, or the provider refused."""
    if not CallLeg.objects.filter(pk=leg.pk, state=LegState.DIALING).update(
            state=LegState.FAILED, ended_at=now, end_reason=reason):
        return
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    record(call, now=now, step=Step("leg_failed", leg.device_id, {"role": leg.role, "reason": reason}))
    pull = _open_pull(leg)
    if pull is not None:
        from callpull import moves

        moves.pull_failed(pull, now=now, reason=reason)
        return
    if leg.role == LegRole.TRANSFER or call.is_terminal:
        return
    still_dialling = call.legs.filter(state__in=[LegState.DIALING, LegState.JOINED]).exists()
    if call.state == CallState.FORWARDED and not still_dialling:
        if reason in ("failed", "provider_error", "device_revoked", "target_not_verified"):
            name, end_reason = "dial_failed", {"failed": "device_failed"}.get(reason, reason)
        else:
            name, end_reason = "dial_unanswered", f"device_{reason.replace('-', '_')}"
        if transition(call, name, now=now, step=Step("dial_ended", leg.device_id, {"reason": reason}),
                      fields={"end_reason": end_reason}):
            announce_end(call, now=now, reason=call.end_reason)
            release_caller(call, now=now)


def leg_revoked(leg: CallLeg, *, now: datetime) -> bool:
    """The leg's device was revoked: take the leg out of the conference at once. A
    `forwarded` call left with no leg (the revoked device was being dialled for it)
    ends as `failed` (`device_revoked`) and the caller goes to the fallback. True when
    this removed the leg."""
    if not leg_remove(leg, now=now, reason="device_revoked"):
        return False
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    record(call, now=now, step=Step("leg_removed", leg.device_id, {"role": leg.role, "reason": "device_revoked"}))
    log.info("leg of a revoked device removed leg=%s call=%s device=%s", leg.pk, call.pk, leg.device_id)
    if call.state == CallState.FORWARDED and not call.legs.filter(
            state__in=[LegState.DIALING, LegState.JOINED]).exists():
        if transition(call, "dial_failed", now=now, step=Step("dial_ended", leg.device_id,
                                                              {"reason": "device_revoked"}),
                      fields={"end_reason": "device_revoked"}):
            announce_end(call, now=now, reason=call.end_reason)
            release_caller(call, now=now)
    return True


# A revoked holder: the caller waits on hold for another device -------------------

def holder_lost(call: Call) -> bool:
    """A connected call nobody holds and nobody took by transfer: its holder was revoked
    and the caller waits on hold for another device of the user (until `expires_at`)."""
    return call.state == CallState.CONNECTED and call.held_by_id is None and not call.transferred_to


def holder_lost_expired(call: Call, *, now: datetime) -> bool:
    """Nobody took the call on hold in time: end it (`completed`, `holder_revoked`) and
    send the caller to the fallback, else let them hear a goodbye. True when this ended it."""
    if not transition(call, "holder_timeout", now=now, step=Step("expired", detail={"reason": "holder_revoked"}),
                      fields={"end_reason": "holder_revoked"}, guard={"held_by__isnull": True}):
        return False
    log.info("call on hold expired, nobody took it after its holder was revoked call=%s", call.pk)
    announce_end(call, now=now, reason="holder_revoked")
    release_caller(call, now=now, goodbye=True)
    return True


def leg_left(*, leg: CallLeg, now: datetime, found_by: str | None = None) -> None:
    """A joined leg hung up on its own (a removal we asked for is already `left`).
    `found_by` says who noticed when it was not the provider's callback."""
    if not CallLeg.objects.filter(pk=leg.pk, state=LegState.JOINED).update(
            state=LegState.LEFT, ended_at=now, end_reason="hung_up"):
        return
    noticed = {"found_by": found_by} if found_by else {}
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    record(call, now=now, step=Step("leg_left", leg.device_id, {"role": leg.role, **noticed}))
    if call.is_terminal or leg.role == LegRole.MONITOR:
        return
    if call.legs.filter(state=LegState.JOINED).exclude(role=LegRole.MONITOR).exists():
        return  # someone still carries the conversation
    # The device (or transfer target) holding the call hung up: the call is over.
    if transition(call, "hung_up", now=now, step=Step("ended", leg.device_id, {"by": leg.role, **noticed}),
                  fields={"end_reason": "completed"}):
        announce_end(call, now=now, reason="completed")
        for other in call.legs.filter(state__in=[LegState.DIALING, LegState.JOINED]):
            leg_remove(other, now=now, reason="call_ended")
        run_provider_action(_hangup, call.provider_call_sid)


def caller_gone(call: Call, *, status: str, now: datetime, found_by: str | None = None) -> bool:
    """The caller's (forwarded) call ended at the provider with `status`: end the
    call; its conference ended with the caller (endConferenceOnExit), and so did
    every leg in it. True when this ended the call."""
    detail = {"call_status": status, **({"found_by": found_by} if found_by else {})}
    if not transition(call, "caller_hung_up", now=now, step=Step("caller_hung_up", detail=detail),
                      fields={"end_reason": "completed" if call.state == CallState.CONNECTED else "caller_hung_up"}):
        return False
    log.info("forwarded call ended call=%s status=%s found_by=%s", call.pk, status, found_by or "callback")
    announce_end(call, now=now, reason=call.end_reason)
    CallLeg.objects.filter(call=call, state__in=[LegState.DIALING, LegState.JOINED]).update(
        state=LegState.LEFT, ended_at=now, end_reason="call_ended")
    return True


def legs_dialing_expired(*, now: datetime) -> int:
    """Legs the provider never reported on (lost callbacks): fail them."""
    cutoff = now - timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + 15)
    stale = list(CallLeg.objects.filter(state=LegState.DIALING, created_at__lt=cutoff))
    for leg in stale:
        leg_failed(leg=leg, reason="no_callback", now=now)
    return len(stale)


def mute_as_monitor(leg: CallLeg, *, now: datetime) -> None:
    CallLeg.objects.filter(pk=leg.pk).update(role=LegRole.MONITOR)
    sid = CallLeg.objects.values_list("provider_call_sid", flat=True).get(pk=leg.pk)
    if sid:
        run_provider_action(_mute, leg.call.conference_name, sid)


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
                run_provider_action(call_reconcile, call_id)
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
        caller_gone(call, status=status or "not_found", now=now, found_by="reconciliation")
        return
    for leg in call.legs.filter(state=LegState.JOINED, provider_call_sid__isnull=False):
        try:
            leg_status = provider.call_status(leg.provider_call_sid)
        except provider.ProviderError as exc:
            log.warning("reconciling leg=%s call=%s: %s", leg.pk, call.pk, exc)
            continue
        if leg_status is None or leg_status in provider.ENDED_STATUSES:
            leg_left(leg=leg, now=now, found_by="reconciliation")
