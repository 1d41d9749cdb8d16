"""Moving a live call: pull to another device of the same user (from the app or
by dialling in), with the holder's approval where the user wants it, and
transfer to an allow-listed number behind a PIN.

The server checks that both devices belong to the same user without involving
the remote party (US8799484): requests are scoped to the user. A dial-in names
its account by a caller id registered for one of the user's devices, but caller
id is no proof (it is trivially spoofed): it must enter the account's PIN.

Here a pull is requested, decided and connected; it completes when its leg joins
(callpull.joins, `pull_completed`), fails with its leg (callpull.pulls,
`pull_failed`) and times out in the sweeper (`pulls_sweep`). Its states change
only through PULL_TRANSITIONS (callpull.statemachine).
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.db import IntegrityError, transaction
from django.db.models import Q

from callpull import actions, legs
from callpull.events import announce_pull
from callpull.models import AccountSettings, Call, CallLeg, CallState, LegRole, LegState, Pull, PullState
from callpull.pulls import pull_failed
from callpull.statemachine import Step, leg_transition, pull_transition, record
from callpull.telephony.callbacks import webhook_url
from callpull.verification import require_verified_target
from devices import ratelimit
from devices.errors import ServiceError, one_or_not_found
from devices.models import Device
from devices.phone import to_e164

log = logging.getLogger(__name__)


def _movable(call: Call) -> bool:
    """A connected call held by a device, or waiting on hold because its holder was revoked."""
    return call.state == CallState.CONNECTED and (call.held_by_id is not None or legs.holder_lost(call))


def movable_calls_for(*, user):
    return (Call.objects.select_related("line").filter(user=user, state=CallState.CONNECTED)
            .filter(Q(held_by__isnull=False) | Q(transferred_to="")).order_by("created_at"))


def _approval_required(call: Call) -> bool:
    return AccountSettings.objects.filter(user_id=call.user_id, pull_requires_approval=True).exists()


def _open(call: Call, *, device: Device, method: str, now: datetime, leg: CallLeg | None = None,
          dial_in_from: str | None = None) -> Pull:
    # With no holder (it was revoked) there is nobody to approve.
    approval = call.held_by_id is not None and _approval_required(call)
    wait = settings.PULL_APPROVAL_SECONDS if approval else legs.dial_allowance(device) + 10
    try:
        with transaction.atomic():
            pull = Pull.objects.create(
                call=call, requested_by=device, from_device_id=call.held_by_id, method=method, leg=leg,
                state=PullState.AWAITING_APPROVAL if approval else PullState.APPROVED,
                created_at=now, expires_at=now + timedelta(seconds=wait))
    except IntegrityError:
        raise ServiceError("pull_in_progress", "Another pull of this call is in progress.") from None
    pull.call = call
    # A dial-in names the number it came from, so the holder knows who asks.
    extra = {"dial_in_from": dial_in_from} if dial_in_from else {}
    record(call, now=now, step=Step("pull_requested", device.pk, {"pull": str(pull.pk), "method": method,
                                                                  "approval": approval, **extra}))
    holder = list(Device.objects.filter(pk=call.held_by_id)) if approval else None
    announce_pull(pull, "pull.requested", now=now, push_to=holder, **extra)
    log.info("pull requested pull=%s call=%s device=%s method=%s approval=%s", pull.pk, call.pk, device.pk,
             method, approval)
    return pull


def pull_request(*, call: Call, device: Device, now: datetime) -> Pull:
    """`device` asks for the live call to move to it."""
    if not _movable(call):
        raise ServiceError("call_not_movable", f"The call is {call.state}; only a connected call can be moved.")
    if call.held_by_id == device.pk:
        raise ServiceError("already_here", "This device already holds the call.")
    if not device.connect_type:
        raise ServiceError("no_connect_target", "This device has no connect target: set `connect` on it first.")
    require_verified_target(device=device)
    pull = _open(call, device=device, method="app", now=now)
    if pull.state == PullState.APPROVED:
        _connect(pull, now=now)
    return pull


def pull_for_user(*, user, pull_id) -> Pull:
    return one_or_not_found(Pull.objects.select_related("call__line").filter(call__user=user), pull_id, "pull")


def pull_decide(*, pull: Pull, device: Device, approve: bool, now: datetime) -> Pull:
    """The holding device approves or denies (CN110996358B)."""
    if pull.from_device_id != device.pk:
        raise ServiceError("not_holder", "Only the device holding the call decides on a pull.")
    if not _decide(pull, approve=approve, now=now, step=Step("pull_approved" if approve else "pull_denied",
                                                            device.pk, {"pull": str(pull.pk)})):
        pull.refresh_from_db()
        raise ServiceError("pull_not_pending", f"The pull is {pull.state}.")
    return pull


def pull_holder_revoked(pull: Pull, *, now: datetime) -> None:
    """The holder that was to decide on `pull` was revoked: with nobody left to ask,
    the pull (of another device of the same user) is approved at once."""
    if _decide(pull, approve=True, now=now, step=Step("pull_approved", detail={"pull": str(pull.pk),
                                                                               "reason": "holder_revoked"})):
        log.info("pull approved, its holder was revoked pull=%s call=%s", pull.pk, pull.call_id)


def pull_requester_revoked(pull: Pull, *, now: datetime) -> None:
    """The device that asked for `pull` was revoked: the pull fails (`device_revoked`);
    a dial-in not yet in the conference (on hold, or on its way to join) is hung up."""
    pull_failed(pull, now=now, reason="device_revoked")
    if pull.method == "dial_in" and pull.leg_id:  # an open dial-in has not joined yet
        dial_in_release(pull, now=now)


def _decide(pull: Pull, *, approve: bool, now: datetime, step: Step) -> bool:
    """Approve or deny a pull awaiting approval; False when it was no longer awaiting."""
    fields = {"decided_at": now}
    if approve:
        fields["expires_at"] = now + timedelta(seconds=legs.dial_allowance(pull.requested_by) + 10)
    else:
        fields["reason"] = "denied"
    if not pull_transition(pull, "approved" if approve else "denied", now=now, fields=fields, step=step):
        return False
    announce_pull(pull, "pull.approved" if approve else "pull.denied", now=now)
    if approve:
        _connect(pull, now=now)
    elif pull.leg_id:  # a dial-in waiting on hold
        dial_in_release(pull, now=now)
    return True


def _connect(pull: Pull, *, now: datetime) -> None:
    call = pull.call
    if pull.method == "dial_in":
        leg = CallLeg.objects.get(pk=pull.leg_id)
        actions.run_provider_action(actions.redirect, leg.provider_call_sid, webhook_url("join", pull=pull.pk))
        return
    legs.leg_dial(call=call, now=now, role=LegRole.DEVICE, device=pull.requested_by, pull=pull)


# Dial-in pull (CN101877748A) ------------------------------------------------

def dial_in_arrive(*, caller: str, pin: str, call_sid: str, now: datetime) -> tuple[str, object]:
    """A caller who dialled a server number (no forwarded call) entered a PIN. Caller
    id only names the account (the one whose device registered that `phone_number`);
    the account's transfer PIN proves the caller is its user. Returns (outcome, detail):
    ("limited", None) before any PIN check when the calling number or the account used
    up its wrong PINs, ("wrong_pin", None) (also for a number no account or several
    accounts registered, and for an account without a PIN: the caller cannot tell
    these apart), then ("none", device), ("menu", (device, calls)), ("join", pull)
    or ("hold", pull)."""
    devices = list(Device.objects.select_related("user").filter(phone_number=caller))
    # A number two accounts claim names neither.
    device = devices[0] if len({d.user_id for d in devices}) == 1 else None
    keys = [f"number:{caller}"] + ([f"user:{device.user_id}"] if device is not None else [])
    try:
        ratelimit.check("dial_in_pin", *keys)
    except ServiceError:
        log.warning("dial-in refused: too many wrong PINs sid=%s device=%s", call_sid,
                    device.pk if device else None)
        return "limited", None
    account = AccountSettings.objects.filter(user_id=device.user_id).first() if device is not None else None
    if account is not None and account.transfer_pin_hash:
        right = check_password(str(pin or ""), account.transfer_pin_hash)
    else:
        make_password(str(pin or ""))  # as slow as a real check: the time tells nothing either
        right = False
    if not right:
        ratelimit.hit("dial_in_pin", *keys)
        log.warning("dial-in refused: wrong PIN sid=%s device=%s", call_sid, device.pk if device else None)
        return "wrong_pin", None
    calls = list(movable_calls_for(user=device.user))
    if not calls:
        return "none", device
    if len(calls) > 1:
        return "menu", (device, calls)
    return dial_in_take(device=device, call=calls[0], call_sid=call_sid, now=now)


def dial_in_take(*, device: Device, call: Call, call_sid: str, now: datetime) -> tuple[str, Pull]:
    """The caller `call_sid`, proven to be `device`'s user, takes `call`. A retry
    (same CallSid) finds its leg and pull again."""
    leg = CallLeg.objects.filter(provider_call_sid=call_sid).first()
    if leg is None:
        leg = CallLeg.objects.create(call=call, device=device, role=LegRole.DEVICE, provider_call_sid=call_sid,
                                     created_at=now)
    pull = Pull.objects.filter(leg=leg).first() or _open(call, device=device, method="dial_in", now=now, leg=leg,
                                                         dial_in_from=device.phone_number or None)
    return ("join" if pull.state == PullState.APPROVED else "hold"), pull


def dial_in_release(pull: Pull, *, now: datetime) -> None:
    """A dial-in whose pull was denied (or failed) is let go: its leg fails, its call is hung up."""
    leg = CallLeg.objects.filter(pk=pull.leg_id).first()
    if leg is not None and leg.provider_call_sid:
        leg_transition(leg, "failed", now=now, reason="pull_denied")
        actions.run_provider_action(actions.hangup, leg.provider_call_sid)


# Transfer to a final number --------------------------------------------------

def call_transfer(*, call: Call, device: Device, number: str, pin: str, now: datetime) -> CallLeg:
    """Hand the live call to an allow-listed number, behind the user's PIN.

    The allow-list is checked first: a number off the list is refused whatever
    the PIN, so the PIN cannot be probed with arbitrary numbers.
    """
    target = to_e164(number, call.line.region or None, field="number")
    account = AccountSettings.objects.filter(user_id=call.user_id).first()
    if account is None or target not in account.transfer_allowlist:
        log.warning("transfer refused: number not on the allow-list call=%s device=%s", call.pk, device.pk)
        raise ServiceError("number_not_allowed", "That number is not on your transfer allow-list.")
    if not account.transfer_pin_hash:
        raise ServiceError("transfer_pin_not_set", "Set a transfer PIN in your account first.")
    # Per call and calling device: wrong PINs from a stolen token do not lock the owner
    # out on another device, and a device cannot probe the PIN beyond the limit per call.
    key = f"call:{call.pk}:device:{device.pk}"
    ratelimit.check("transfer_pin", key)
    # Every new device (a pairing code away) would bring a fresh budget: the account's
    # wrong PINs over a day are capped too, whichever device or path guessed.
    ratelimit.check("pin_failure_user", f"user:{call.user_id}")
    if not check_password(str(pin or ""), account.transfer_pin_hash):
        ratelimit.hit("transfer_pin", key)
        ratelimit.hit("pin_failure_user", f"user:{call.user_id}")
        log.warning("transfer refused: wrong PIN call=%s device=%s", call.pk, device.pk)
        raise ServiceError("wrong_pin", "The transfer PIN is wrong.")
    if not _movable(call):
        raise ServiceError("call_not_movable", f"The call is {call.state}; only a connected call can be transferred.")
    if call.legs.filter(role=LegRole.TRANSFER, state=LegState.DIALING).exists():
        raise ServiceError("transfer_in_progress", "A transfer of this call is in progress.")
    record(call, now=now, step=Step("transfer_requested", device.pk, {"number": target}))
    log.info("transfer call=%s to an allow-listed number by device=%s", call.pk, device.pk)
    return legs.leg_dial(call=call, now=now, role=LegRole.TRANSFER, number=target)
