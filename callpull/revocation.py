"""A revoked device leaves every call at once (`devices.signals.device_revoked`).

Deleting a device kills its token (devices) and closes its sockets
(notifications); here it loses its presence on calls:

- the pulls it asked for fail (`device_revoked`);
- every leg of it still dialling or in a conference (device or monitor) is taken
  out at the provider (`leg_removed` on the timeline);
- a call it held is not dropped: the caller is put on hold with music, the call
  has no holder and a deadline (`HOLDER_LOST_HOLD_SECONDS`), and the user's other
  devices hear `call.holder_lost` so one of them can pull it (no approval: nobody
  holds it). A pull that was waiting for its approval is approved at once. Nobody
  pulls it in time: the sweeper ends it (`holder_revoked`, callpull.sweeper).

A device on no call changes nothing.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from callpull import legs, moves
from callpull.events import all_devices, notify
from callpull.models import PULL_FINAL_STATES, TERMINAL_STATES, Call, CallLeg, CallState, LegState, Pull, PullState
from callpull.statemachine import Step, transition
from callpull.telephony.callbacks import ringback_url
from devices.models import Device

log = logging.getLogger(__name__)


def on_device_revoked(sender, device: Device, **kwargs) -> None:
    """The signal's receiver (sent on commit). Never raises: the device is revoked
    whatever happens here, and each call is dealt with on its own."""
    try:
        calls_device_revoked(device=device, now=timezone.now())
    except Exception:
        log.exception("taking a revoked device off its calls failed device=%s", device.pk)


def calls_device_revoked(*, device: Device, now: datetime) -> int:
    """Take `device` off every call it is on; returns how many calls it was on."""
    touched = set()
    for pull in list(Pull.objects.select_related("call__line").filter(requested_by=device).exclude(
            state__in=PULL_FINAL_STATES)):
        touched.add(pull.call_id)
        _safely(moves.pull_requester_revoked, pull, now=now, what=f"pull={pull.pk}")
    for call in list(Call.objects.select_related("line").filter(held_by=device, state=CallState.CONNECTED)):
        touched.add(call.pk)
        _safely(_holder_revoked, call, device=device, now=now, what=f"call={call.pk}")
    live = [LegState.DIALING, LegState.JOINED]
    for leg in list(CallLeg.objects.select_related("call").filter(device=device, state__in=live)
                    .exclude(call__state__in=TERMINAL_STATES)):
        touched.add(leg.call_id)
        _safely(legs.leg_revoked, leg, now=now, what=f"leg={leg.pk}")
    if touched:
        log.info("revoked device taken off its calls device=%s calls=%d", device.pk, len(touched))
    return len(touched)


def _safely(fn, *args, what: str, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:
        log.exception("taking a revoked device off a call failed %s", what)


def _holder_revoked(call: Call, *, device: Device, now: datetime) -> None:
    hold = settings.HOLDER_LOST_HOLD_SECONDS
    if not transition(call, "holder_revoked", now=now, step=Step("holder_revoked", device.pk, {"hold_seconds": hold}),
                      fields={"held_by_id": None, "expires_at": now + timedelta(seconds=hold)},
                      guard={"held_by_id": device.pk}):
        return
    log.info("holder of a call revoked, caller on hold call=%s device=%s", call.pk, device.pk)
    for leg in list(call.legs.filter(device=device, state__in=[LegState.DIALING, LegState.JOINED])):
        legs.leg_revoked(leg, now=now)  # out first: the caller never hears it again
    legs.hold_caller(call, hold=True, hold_url=ringback_url())
    notify(call, "call.holder_lost", all_devices(call), now=now,
           device={"id": str(device.pk), "name": device.name, "kind": device.kind})
    for pull in list(Pull.objects.filter(call=call, from_device=device, state=PullState.AWAITING_APPROVAL)):
        pull.call = call
        moves.pull_holder_revoked(pull, now=now)
