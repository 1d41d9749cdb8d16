"""Legs of a call's conference: the anchor that lets a live call move.

The forwarded caller waits in a per-call conference (`Call.conference_name`,
hearing ringback) that ends when the caller leaves. Devices are dialled into it
as participants; moving the call means adding the new device's leg and, once it
has joined, removing (or muting) the old one. The caller's leg is never touched,
so the caller hears nothing but the new device's voice.

A leg's life here: dialled (`leg_dial`), taken out (`leg_remove`, `leg_revoked`),
failed (`leg_failed`), left on its own (`leg_left`); its joining is in
callpull.joins. What the provider is asked to do runs through callpull.actions
(off the request thread, tried again while it fails for a while). Every change of
a leg's state is a guarded transition (callpull.statemachine, LEG_TRANSITIONS).
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from callpull import actions
from callpull.events import announce_end
from callpull.models import Call, CallLeg, CallState, LegRole, LegState, Pull
from callpull.pulls import open_pull, pull_failed
from callpull.statemachine import Step, leg_transition, legs_transition, record, transition
from callpull.telephony import provider
from callpull.telephony.callbacks import webhook_url
from devices.models import Device
from devices.services import connect_usable

log = logging.getLogger(__name__)


# What a `client` leg tells the device's voice SDK about itself, as custom parameters of the
# participant's `To` (docs/PROVIDER.md, "Client legs' parameters"): the web companion
# (static/callpull/web/voice-twilio.js, LEG_PARAMETERS) accepts only the leg of the answer or
# move it made. `callpull_pull` only on a leg dialled for a move.
CLIENT_LEG_PARAMETERS = ("callpull_call", "callpull_leg", "callpull_pull")


def client_leg_parameters(leg: CallLeg) -> dict[str, str]:
    """The custom parameters of `leg` (a device's `client` leg): its call, itself, and the pull
    it was dialled for, if any."""
    parameters = {"callpull_call": str(leg.call_id), "callpull_leg": str(leg.pk)}
    pull_id = Pull.objects.filter(leg_id=leg.pk).values_list("pk", flat=True).first()
    if pull_id is not None:
        parameters["callpull_pull"] = str(pull_id)
    return parameters


def _urls(call: Call, leg: CallLeg) -> dict:
    return {"status_url": webhook_url("status", call=call.pk, leg=leg.pk),
            "conference_status_url": webhook_url("conference", call=call.pk),
            "screen_url": webhook_url("screen", call=call.pk, leg=leg.pk)}


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
    actions.run_provider_action(_dial, leg.pk)
    return leg


def _dial(leg_id) -> None:
    leg = CallLeg.objects.select_related("call__line__server_number", "device").get(pk=leg_id)
    call = leg.call
    kind, address = (leg.device.connect_type, leg.device.connect_address) if leg.device else ("number", leg.number)
    if leg.device and not connect_usable(leg.device):  # the target changed (or lost its proof) since
        log.warning("not dialling leg=%s call=%s: device=%s has no verified connect target",
                    leg.pk, call.pk, leg.device_id)
        leg_failed(leg=leg, reason="target_not_verified", now=timezone.now())
        return
    urls = _urls(call, leg)
    parameters = client_leg_parameters(leg) if kind == "client" else None

    def request(elapsed: float, tries: int) -> None:
        if tries > 1 and not CallLeg.objects.filter(pk=leg.pk, state=LegState.DIALING).exists():
            return  # taken out (or failed) while it waited to be tried again
        timeout = max(5, round(settings.DIAL_TIMEOUT_SECONDS - elapsed))  # retries ring no longer in all
        try:
            if kind == "number":
                # Screened: a phone number may be answered by voicemail, which would swallow the
                # caller. Its own call hears "press 1" (the `screen` webhook) and joins the
                # conference only once a person pressed it (docs/MOVING.md, "Screened number legs").
                sid = provider.call_place_url(
                    to=address, from_=call.line.server_number.number, url=urls["screen_url"],
                    status_url=urls["status_url"], timeout=timeout)
            else:
                added = provider.participant_add(
                    conference=call.conference_name, kind=kind, address=address,
                    caller_id=call.line.server_number.number, label=str(leg.pk), timeout=timeout,
                    status_url=urls["status_url"], conference_status_url=urls["conference_status_url"],
                    parameters=parameters)
                actions.conference_sid_learnt(call.pk, added.conference_sid)
                sid = added.call_sid
        except provider.ProviderError as exc:
            if tries > 1 and exc.code == provider.LABEL_TAKEN:
                # An earlier try got through although its answer was lost: the leg is being
                # dialled, and its callbacks name its CallSid.
                log.info("dialling leg=%s call=%s: an earlier try got through", leg.pk, call.pk)
                return
            raise
        CallLeg.objects.filter(pk=leg.pk, provider_call_sid__isnull=True).update(provider_call_sid=sid)

    actions.provider_request("dial", request, budget=settings.DIAL_TIMEOUT_SECONDS, call_id=call.pk,
                             moot_when_gone=False,
                             on_failure=lambda error: leg_failed(leg=leg, reason="provider_error", now=timezone.now()))


def leg_remove(leg: CallLeg, *, now: datetime, reason: str) -> bool:
    """Take a leg out of the conference (its call is hung up by the provider). True when
    this removed it (it was dialling or in the conference). A leg still dialling is not in
    the conference yet (a screened number leg may be whispering to whoever picked up): its
    call is hung up instead, so it stops ringing or whispering at once."""
    dialling = leg_transition(leg, "hung_up_dialling", now=now, reason=reason)
    if not dialling and not leg_transition(leg, "removed", now=now, reason=reason):
        return False
    sid = CallLeg.objects.values_list("provider_call_sid", flat=True).get(pk=leg.pk)
    if sid and dialling:
        actions.run_provider_action(actions.hangup, sid, leg.call_id)
    elif sid:
        actions.run_provider_action(actions.remove, leg.call_id, sid)
    return True


def release_caller(call: Call, *, now: datetime, goodbye: bool = False) -> None:
    """Nobody takes (or keeps) the call: the caller goes to the line's fallback,
    else is hung up politely. Ends the conference with the caller.

    `goodbye`: the caller had been talking (the device holding the call was revoked
    and nobody took it): the fallback applies although the call is `completed`, and
    without one the caller hears a goodbye (the `fallback` webhook says it) instead
    of being cut off."""
    if not call.provider_call_sid:
        return
    legs_transition(call, "call_ended", now=now, reason="call_ended")
    if call.line.fallback_number and (goodbye or call.state != CallState.COMPLETED):
        record(call, now=now, step=Step("sent_to_fallback", detail={"number": call.line.fallback_number}))
        actions.run_provider_action(actions.redirect, call.provider_call_sid, webhook_url("fallback", call=call.pk))
    elif goodbye:
        record(call, now=now, step=Step("caller_released", detail={"goodbye": True}))
        actions.run_provider_action(actions.redirect, call.provider_call_sid, webhook_url("fallback", call=call.pk))
    else:
        record(call, now=now, step=Step("caller_released"))
        actions.run_provider_action(actions.hangup, call.provider_call_sid)


def hold_caller(call: Call, *, hold: bool, hold_url: str | None = None) -> None:
    """Put the caller's participant on hold (hearing `hold_url`) or take it off hold."""
    if call.provider_call_sid:
        actions.run_provider_action(actions.hold, call.pk, call.provider_call_sid, hold, hold_url)


# What the provider tells us about legs -----------------------------------------

def join_unheard(leg: CallLeg) -> bool:
    """Whether a join of `leg` would still be news: it is dialling, or the call ended
    (the caller hung up, the holder did) while it was, before its join was heard. A
    conference cannot be joined once it ended, so such a join happened before the end."""
    return leg.state == LegState.DIALING or (
        leg.state == LegState.LEFT and leg.joined_at is None and leg.end_reason == "call_ended")


def leg_failed(*, leg: CallLeg, reason: str, now: datetime) -> None:
    """The leg never joined: no answer, busy, failed, or the provider refused."""
    if not leg_transition(leg, "failed", now=now, reason=reason,
                          step=Step("leg_failed", leg.device_id, {"role": leg.role, "reason": reason})):
        return
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    pull = open_pull(leg)
    if pull is not None:
        pull_failed(pull, now=now, reason=reason)
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
    """A joined leg left the conference on its own (a removal we asked for is already
    `left`). `found_by` says who noticed when it was not the provider's callback.

    When it carried the conversation alone, either its device (or transfer target) hung
    up, or the caller did and the conference ended and took the leg with it: the leg's
    callbacks may come before the caller's. The provider is asked which
    (`_last_leg_left`), unless reconciliation, which found the leg, has just seen the
    caller's call live."""
    if not leg_transition(leg, "left", now=now, reason="hung_up"):
        return
    noticed = {"found_by": found_by} if found_by else {}
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    if call.is_terminal or leg.role == LegRole.MONITOR or \
            call.legs.filter(state=LegState.JOINED).exclude(role=LegRole.MONITOR).exists():
        # Over already, a monitor, or someone still carries the conversation.
        record(call, now=now, step=Step("leg_left", leg.device_id, {"role": leg.role, **noticed}))
        return
    if found_by == "reconciliation":
        _holder_hung_up(call, leg, now=now, noticed=noticed)
    else:
        actions.run_provider_action(_last_leg_left, call.pk, leg.pk, now, found_by)


def _last_leg_left(call_id, leg_id, now: datetime, found_by: str | None) -> None:
    """The leg that carried the conversation alone left: is the caller's call still live?
    If the provider says it ended (or does not know it), the caller hung up first and the
    conference took the leg along: the call ends as the caller's own callback would end
    it (`caller_hung_up`), with no `leg_left`. Otherwise (or when the provider cannot
    tell) the leg's side hung up: `_holder_hung_up`."""
    call = Call.objects.select_related("line").filter(pk=call_id).first()
    leg = CallLeg.objects.filter(pk=leg_id).first()
    if call is None or leg is None:
        return
    status = "in-progress"
    if call.provider_call_sid and not call.is_terminal:
        try:
            status = provider.call_status(call.provider_call_sid)
        except provider.ProviderError as exc:
            log.warning("the last leg of call=%s left; the caller's status is unknown, taken as live: %s",
                        call.pk, exc)
    if call.is_terminal or status is None or status in provider.ENDED_STATUSES:
        CallLeg.objects.filter(pk=leg.pk, end_reason="hung_up").update(end_reason="call_ended")
        if not call.is_terminal:
            caller_gone(call, status=status or "not_found", now=now, found_by=found_by)
        return
    _holder_hung_up(call, leg, now=now, noticed={"found_by": found_by} if found_by else {})


def _holder_hung_up(call: Call, leg: CallLeg, *, now: datetime, noticed: dict) -> None:
    """The device (or transfer target) holding the call hung up: the call is over, and
    the caller, left alone in the conference, is hung up."""
    record(call, now=now, step=Step("leg_left", leg.device_id, {"role": leg.role, **noticed}))
    if transition(call, "hung_up", now=now, step=Step("ended", leg.device_id, {"by": leg.role, **noticed}),
                  fields={"end_reason": "completed"}):
        announce_end(call, now=now, reason="completed")
        for other in call.legs.filter(state__in=[LegState.DIALING, LegState.JOINED]):
            leg_remove(other, now=now, reason="call_ended")
        actions.run_provider_action(actions.hangup, call.provider_call_sid)


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
    legs_transition(call, "call_ended", now=now, reason="call_ended")
    return True


# A screened number leg (docs/MOVING.md) rings for DIAL_TIMEOUT_SECONDS like any other,
# then whispers "Call for …, press 1" (a few seconds) and waits for the key
# (telephony.services.SCREEN_KEY_TIMEOUT_SECONDS, 8 s): the deadlines of what waits for it
# (a pull, the dial of an answered call, a leg's silence) allow this much more.
SCREENING_SECONDS = 15


def screened(device: Device | None) -> bool:
    """Whether a leg to `device` (None: a transfer to a number) is screened with a key press."""
    return device is None or device.connect_type == "number"


def dial_allowance(device: Device | None) -> int:
    """How long a leg to `device` may take from dialling to joining, screening included."""
    return settings.DIAL_TIMEOUT_SECONDS + (SCREENING_SECONDS if screened(device) else 0)


def legs_dialing_expired(*, now: datetime) -> int:
    """Legs the provider never reported on (lost callbacks): fail them."""
    cutoff = now - timedelta(seconds=settings.DIAL_TIMEOUT_SECONDS + 15)
    screened_legs = Q(device__isnull=True) | Q(device__connect_type="number")
    stale = list(CallLeg.objects.filter(state=LegState.DIALING, created_at__lt=cutoff).filter(
        ~screened_legs | Q(created_at__lt=cutoff - timedelta(seconds=SCREENING_SECONDS))))
    for leg in stale:
        leg_failed(leg=leg, reason="no_callback", now=now)
    return len(stale)


def mute_as_monitor(leg: CallLeg, *, now: datetime) -> None:
    CallLeg.objects.filter(pk=leg.pk).update(role=LegRole.MONITOR)
    sid = CallLeg.objects.values_list("provider_call_sid", flat=True).get(pk=leg.pk)
    if sid:
        actions.run_provider_action(actions.mute, leg.call_id, sid)
