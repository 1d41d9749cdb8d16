"""Legs of a call's conference: the anchor that lets a live call move.

The forwarded caller waits in a per-call conference (`Call.conference_name`,
hearing ringback) that ends when the caller leaves. Devices are dialled into it
as participants; moving the call means adding the new device's leg and, once it
has joined, removing (or muting) the old one. The caller's leg is never touched,
so the caller hears nothing but the new device's voice.

Provider REST calls run off the request thread (`run_provider_action`), so a
webhook answers at once and a slow provider never holds a user's request. One
that fails for a while is tried again within its deadline, one that fails for
good is written on the call's timeline, and one about a call already over is
harmless (`_provider_request`; docs/MOVING.md, "Provider actions that fail").
Participants are updated and removed under the conference's SID, which Twilio
requires (`Call.conference_sid`, `_conference_sid`).
"""

import functools
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections
from django.db.models import Max, Q
from django.utils import timezone

from callpull.calls import all_devices, announce_end, notify
from callpull.models import Call, CallLeg, CallState, LegRole, LegState, Pull, PullState
from callpull.statemachine import Step, record, transition
from callpull.telephony import provider
from devices.models import Device
from devices.services import connect_usable

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


# A provider request is tried at most this many times (and only while its budget lasts).
RETRY_ATTEMPTS = 6
_CONFERENCE_SID = re.compile(r"CF[0-9a-fA-F]{32}")


def _later(delay: float, fn, *args) -> None:
    """`fn(*args)` on the provider pool after `delay` seconds, from a timer thread, so a
    request waiting to be tried again holds no pool thread. Inline (unit tests): at once."""
    if settings.PROVIDER_ACTIONS_INLINE:
        fn(*args)
        return
    timer = threading.Timer(delay, run_provider_action, args=(fn, *args))
    timer.daemon = True
    timer.start()


def _provider_request(action: str, request, *, budget: float, call_id=None, call_sid: str | None = None,
                      moot_when_gone: bool = True, on_failure=None, tries: int = 1, started: float | None = None,
                      waited: float = 0.0) -> None:
    """Make one provider request, `request(elapsed, tries)`, for the call `call_id` (or the
    call or leg whose CallSid is `call_sid`).

    - A transient failure (no answer, a timeout, HTTP 5xx or 429) is tried again after a
      backoff (PROVIDER_RETRY_BACKOFF_SECONDS, doubling), while the next try starts within
      `budget` seconds of the first and at most RETRY_ATTEMPTS times.
    - A request about something already over (the provider answers 404 / 20404, or 21220:
      the call is not in progress) is moot: logged once at INFO, nothing else
      (`moot_when_gone`).
    - Any other failure, or the last transient one, is final: logged, written on the
      call's timeline (`provider_action_failed {action, error, code?, attempts}`), and
      `on_failure(error)` is called."""
    started = time.monotonic() if started is None else started
    elapsed = max(time.monotonic() - started, waited)
    try:
        request(elapsed, tries)
        return
    except provider.ProviderError as exc:
        error = exc
    if error.gone and moot_when_gone:
        log.info("provider %s moot, the provider says it is over (call=%s sid=%s): %s",
                 action, call_id, call_sid, error)
        return
    delay = settings.PROVIDER_RETRY_BACKOFF_SECONDS * 2 ** (tries - 1)
    if error.transient and tries < RETRY_ATTEMPTS and elapsed + delay <= budget:
        log.warning("provider %s failed (try %d), trying again in %.1f s (call=%s sid=%s): %s",
                    action, tries, delay, call_id, call_sid, error)
        _later(delay, functools.partial(
            _provider_request, action, request, budget=budget, call_id=call_id, call_sid=call_sid,
            moot_when_gone=moot_when_gone, on_failure=on_failure, tries=tries + 1, started=started,
            waited=waited + delay))
        return
    log.warning("provider %s failed for good after %d tries (call=%s sid=%s): %s",
                action, tries, call_id, call_sid, error)
    _provider_failed(action, error, tries=tries, call_id=call_id, call_sid=call_sid)
    if on_failure is not None:
        on_failure(error)


def _provider_failed(action: str, error: provider.ProviderError, *, tries: int, call_id, call_sid) -> None:
    if call_id is None and call_sid:
        call_id = (Call.objects.filter(provider_call_sid=call_sid).values_list("pk", flat=True).first()
                   or CallLeg.objects.filter(provider_call_sid=call_sid).values_list("call_id", flat=True).first())
    call = Call.objects.filter(pk=call_id).first() if call_id else None
    if call is None:
        return
    detail = {"action": action, "error": error.kind, "attempts": tries}
    if error.code:
        detail["code"] = error.code
    record(call, now=timezone.now(), step=Step("provider_action_failed", detail=detail))


def conference_sid_learnt(call_id, conference_sid: str | None) -> bool:
    """Keep the provider's SID of the call's conference (from a conference callback or a
    participant just added), once: Twilio addresses participants only under it. True
    when this stored it."""
    if not conference_sid or not _CONFERENCE_SID.fullmatch(conference_sid):
        return False
    return bool(Call.objects.filter(pk=call_id, conference_sid="").update(conference_sid=conference_sid))


def _conference_sid(call_id) -> str | None:
    """The SID of the call's conference: the one learnt, else looked up by its friendly
    name (and kept). None when the provider has no live conference of that name."""
    call = Call.objects.filter(pk=call_id).only("id", "conference_sid").first()
    if call is None:
        return None
    if call.conference_sid:
        return call.conference_sid
    found = provider.conference_sid_for(call.conference_name)
    if found:
        conference_sid_learnt(call_id, found)
    return found


def _participant_request(action: str, call_id, call_sid: str, update) -> None:
    """`update(conference_sid)` on the participant `call_sid` of the call's conference."""
    def request(elapsed: float, tries: int) -> None:
        conference_sid = _conference_sid(call_id)
        if conference_sid is None:
            log.info("provider %s moot, no live conference (call=%s sid=%s)", action, call_id, call_sid)
            return
        update(conference_sid)

    _provider_request(action, request, budget=settings.PROVIDER_RETRY_SECONDS, call_id=call_id, call_sid=call_sid)


def _urls(call: Call, leg: CallLeg) -> dict:
    from callpull.telephony.services import webhook_url

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
    run_provider_action(_dial, leg.pk)
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
                    status_url=urls["status_url"], conference_status_url=urls["conference_status_url"])
                conference_sid_learnt(call.pk, added.conference_sid)
                sid = added.call_sid
        except provider.ProviderError as exc:
            if tries > 1 and exc.code == provider.LABEL_TAKEN:
                # An earlier try got through although its answer was lost: the leg is being
                # dialled, and its callbacks name its CallSid.
                log.info("dialling leg=%s call=%s: an earlier try got through", leg.pk, call.pk)
                return
            raise
        CallLeg.objects.filter(pk=leg.pk, provider_call_sid__isnull=True).update(provider_call_sid=sid)

    _provider_request("dial", request, budget=settings.DIAL_TIMEOUT_SECONDS, call_id=call.pk, moot_when_gone=False,
                      on_failure=lambda error: leg_failed(leg=leg, reason="provider_error", now=timezone.now()))


def leg_remove(leg: CallLeg, *, now: datetime, reason: str) -> bool:
    """Take a leg out of the conference (its call is hung up by the provider). True when
    this removed it (it was dialling or in the conference). A leg still dialling is not in
    the conference yet (a screened number leg may be whispering to whoever picked up): its
    call is hung up instead, so it stops ringing or whispering at once."""
    fields = {"state": LegState.LEFT, "ended_at": now, "end_reason": reason}
    dialling = bool(CallLeg.objects.filter(pk=leg.pk, state=LegState.DIALING).update(**fields))
    if not dialling and not CallLeg.objects.filter(pk=leg.pk, state=LegState.JOINED).update(**fields):
        return False
    sid = CallLeg.objects.values_list("provider_call_sid", flat=True).get(pk=leg.pk)
    if sid and dialling:
        run_provider_action(_hangup, sid, leg.call_id)
    elif sid:
        run_provider_action(_remove, leg.call_id, sid)
    return True


def _remove(call_id, sid: str) -> None:
    """Take the participant `sid` out of the call's conference (by the conference's SID)."""
    _participant_request("remove", call_id, sid, lambda conference_sid: provider.participant_remove(
        conference_sid=conference_sid, call_sid=sid))


def _mute(call_id, sid: str) -> None:
    _participant_request("mute", call_id, sid, lambda conference_sid: provider.participant_mute(
        conference_sid=conference_sid, call_sid=sid, muted=True))


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
        run_provider_action(_hold, call.pk, call.provider_call_sid, hold, hold_url)


def _hold(call_id, sid: str, hold: bool, hold_url: str | None) -> None:
    _participant_request("hold" if hold else "unhold", call_id, sid, lambda conference_sid: provider.participant_hold(
        conference_sid=conference_sid, call_sid=sid, hold=hold, hold_url=hold_url))


def _redirect(sid: str, url: str, call_id=None) -> None:
    """Make the live call `sid` (a caller's, or a leg's) fetch new TwiML from `url`."""
    _provider_request("redirect", lambda elapsed, tries: provider.call_redirect(sid, url),
                      budget=settings.PROVIDER_RETRY_SECONDS, call_id=call_id, call_sid=sid)


def _hangup(sid: str, call_id=None) -> None:
    """Hang up the live call `sid`; one that already ended is no failure."""
    _provider_request("hangup", lambda elapsed, tries: provider.call_hangup(sid),
                      budget=settings.PROVIDER_RETRY_SECONDS, call_id=call_id, call_sid=sid)


# What the provider tells us about legs -----------------------------------------

def _open_pull(leg: CallLeg) -> Pull | None:
    return Pull.objects.select_related("call").filter(leg=leg, state=PullState.APPROVED).first()


def join_unheard(leg: CallLeg) -> bool:
    """Whether a join of `leg` would still be news: it is dialling, or the call ended
    (the caller hung up, the holder did) while it was, before its join was heard. A
    conference cannot be joined once it ended, so such a join happened before the end."""
    return leg.state == LegState.DIALING or (
        leg.state == LegState.LEFT and leg.joined_at is None and leg.end_reason == "call_ended")


def leg_joined(*, leg: CallLeg, now: datetime, call_sid: str | None = None) -> None:
    """The leg joined the conference: its `participant-join`, or a callback that proves
    it joined (docs/MOVING.md, "Callbacks: order, repeats, lateness"). It counts once,
    whenever it is heard: also after the call ended under it, then only on the record
    (its pull completed, `held_by`), nothing at the provider."""
    fields = {"state": LegState.JOINED, "joined_at": now}
    if call_sid:
        fields["provider_call_sid"] = call_sid
    if not CallLeg.objects.filter(pk=leg.pk, state=LegState.DIALING).update(**fields):
        if CallLeg.objects.filter(pk=leg.pk, state=LegState.LEFT, end_reason="call_ended",
                                  joined_at__isnull=True).update(joined_at=now):
            _joined(Call.objects.select_related("line").get(pk=leg.call_id), leg, now=now)
            return
        sid = call_sid or leg.provider_call_sid
        if sid and CallLeg.objects.filter(pk=leg.pk, state__in=[LegState.LEFT, LegState.FAILED],
                                          joined_at__isnull=True).exists():
            # Removed (or given up on) before it joined (its device was revoked, its pull
            # timed out, no callback came) and joined all the same: take it out again.
            run_provider_action(_remove, leg.call_id, sid)
        return
    call = Call.objects.select_related("line").get(pk=leg.call_id)
    if call.is_terminal:  # joined as the call ended: it counts, but nothing is left to carry
        leg_remove(leg, now=now, reason="call_ended")
    _joined(call, leg, now=now)


def _joined(call: Call, leg: CallLeg, *, now: datetime) -> None:
    """What a leg joining does: connect a forwarded call, complete a transfer or a pull."""
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
    """A joined leg left the conference on its own (a removal we asked for is already
    `left`). `found_by` says who noticed when it was not the provider's callback.

    When it carried the conversation alone, either its device (or transfer target) hung
    up, or the caller did and the conference ended and took the leg with it: the leg's
    callbacks may come before the caller's. The provider is asked which
    (`_last_leg_left`), unless reconciliation, which found the leg, has just seen the
    caller's call live."""
    if not CallLeg.objects.filter(pk=leg.pk, state=LegState.JOINED).update(
            state=LegState.LEFT, ended_at=now, end_reason="hung_up"):
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
        run_provider_action(_last_leg_left, call.pk, leg.pk, now, found_by)


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
        run_provider_action(_mute, leg.call_id, sid)


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
