"""Proof that a device's connect target is the user's before it carries a call.

A `client` target is one of our own soft-phone identities and needs no proof; a
`sip` target is proven when it is set, by its host being on SIP_DOMAINS
(devices/services.py); a `number` target is proven the way every phone
verification works: the provider calls the number and reads out a short code,
and the user sends the code back. Until then the device can neither answer nor
pull a call (`require_verified_target`), and no leg is dialled to it
(callpull/legs.py `_dial`).

The code is never stored or logged: the database keeps a keyed digest (HMAC with
SECRET_KEY) bound to the verification and the number, compared in constant time.
Starting a verification places a call, which costs money: it is rate-limited per
device (`RATE_LIMITS["number_verification"]`) and per user and per called number
(`number_verification_daily`), premium-rate and shared-cost numbers are never
called, and a newer request supersedes older ones.
"""

import logging
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils.crypto import constant_time_compare, salted_hmac

from callpull.models import Line
from callpull.telephony import provider
from devices import ratelimit
from devices.errors import ServiceError
from devices.models import ConnectType, Device, NumberVerification
from devices.phone import pays_the_callee
from devices.services import connect_usable

log = logging.getLogger(__name__)

CODE_DIGITS = 6
MAX_ATTEMPTS = 5
START_PATH = "/api/v1/devices/me/number-verification"
_DIGEST_SALT = "callpull.verification.number-code"
_CODE_FORMAT = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")


# The check ----------------------------------------------------------------------

def require_verified_target(*, device: Device) -> None:
    """409 `connect_not_verified` for a device whose connect target is set but not proven."""
    if device.connect_type and not connect_usable(device):
        raise ServiceError(
            "connect_not_verified",
            "This device's connect target is not verified. For a number: POST "
            f"{START_PATH}, then send the code the call reads out to {START_PATH}/confirm. "
            "A SIP address must be on the server's SIP domains.")


# Number verification --------------------------------------------------------------

def _digest(verification_id, number: str, code: str) -> str:
    return salted_hmac(_DIGEST_SALT, f"{verification_id}|{number}|{code}", algorithm="sha256").hexdigest()


def _announcement(code: str) -> str:
    spoken = provider.digits_aloud(code)
    return (f"This is callpull with your verification code. Your code is: {spoken}. "
            f"Once more, your code is: {spoken}. Goodbye.")


def _caller_id(device: Device) -> str:
    """The server number of the user's oldest line, or the first configured one."""
    line = (Line.objects.filter(user_id=device.user_id).select_related("server_number")
            .order_by("created_at").first())
    return line.server_number.number if line is not None else settings.SERVER_NUMBERS[0]


def _require_unverified_number(device: Device) -> None:
    if device.connect_type != ConnectType.NUMBER:
        raise ServiceError("no_number_target", "This device's connect target is not a number: there is nothing to "
                                           "verify by phone.")
    if device.connect_verified_at is not None:
        raise ServiceError("already_verified", "This device's number is already verified.")


def _require_callable(number: str) -> None:
    """Premium-rate and shared-cost numbers are never called: a call there pays whoever owns them."""
    if pays_the_callee(number):
        raise ServiceError("number_not_callable", "We do not call premium-rate or shared-cost numbers: "
                                              "set another number as this device's target.")


def attempts_left(verification: NumberVerification) -> int:
    return max(0, MAX_ATTEMPTS - verification.attempts)


def verification_start(*, device: Device, now: datetime) -> NumberVerification:
    """Have the provider call the device's `number` target and read out a new code."""
    device = Device.objects.get(pk=device.pk)  # the target as stored now
    _require_unverified_number(device)
    number = device.connect_address
    _require_callable(number)
    daily = (f"user:{device.user_id}", f"number:{number}")
    ratelimit.check("number_verification", f"device:{device.pk}")
    ratelimit.check("number_verification_daily", *daily)
    ratelimit.hit("number_verification", f"device:{device.pk}")
    ratelimit.hit("number_verification_daily", *daily)

    code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
    verification = NumberVerification(device=device, number=number, created_at=now,
                                      expires_at=now + timedelta(seconds=settings.NUMBER_VERIFICATION_TTL_SECONDS))
    verification.code_hash = _digest(verification.pk, number, code)
    # The call first: when the provider refuses, nothing is stored and older codes stay valid.
    try:
        sid = provider.call_place(to=number, from_=_caller_id(device),
                                  twiml=provider.twiml_goodbye(_announcement(code)))
    except provider.ProviderError as exc:
        log.warning("number verification call not placed device=%s verification=%s: %s",
                    device.pk, verification.pk, exc)
        raise ServiceError("provider_unavailable",
                           "The call to your number could not be placed. Try again later.") from None
    verification.provider_call_sid = sid or ""
    with transaction.atomic():
        NumberVerification.objects.filter(device=device, verified_at__isnull=True, expires_at__gt=now).update(
            expires_at=now)  # superseded
        verification.save(force_insert=True)
    log.info("number verification started device=%s verification=%s call=%s", device.pk, verification.pk, sid)
    return verification


def _start_again(reason: str) -> ServiceError:
    return ServiceError("verification_expired", f"{reason} Start again with POST {START_PATH}.")


def normalize_code(code: str) -> str | None:
    """The code without spaces or dashes; None when it is not CODE_DIGITS digits."""
    cleaned = re.sub(r"[\s-]", "", code or "")
    return cleaned if _CODE_FORMAT.fullmatch(cleaned) else None


def verification_confirm(*, device: Device, code: str, now: datetime) -> Device:
    """Check the code read out for the device's CURRENT number; when right, the
    target is verified. Every attempt counts; after MAX_ATTEMPTS the code is dead."""
    device = Device.objects.get(pk=device.pk)
    _require_unverified_number(device)
    verification = (NumberVerification.objects.filter(device=device, verified_at__isnull=True)
                    .order_by("-created_at").first())
    if verification is None:
        raise _start_again("No verification is pending for this device.")
    if verification.number != device.connect_address:
        raise _start_again("The code was sent to a number this device no longer uses.")
    if verification.expires_at <= now:
        raise _start_again("The code has expired.")
    # Count the attempt before comparing, guarded, so parallel guesses cannot exceed the limit.
    if not NumberVerification.objects.filter(pk=verification.pk, verified_at__isnull=True,
                                             attempts__lt=MAX_ATTEMPTS).update(attempts=F("attempts") + 1):
        raise _start_again("Too many wrong codes.")
    verification.refresh_from_db(fields=["attempts"])
    if not constant_time_compare(_digest(verification.pk, verification.number, code), verification.code_hash):
        left = attempts_left(verification)
        log.warning("number verification: wrong code device=%s verification=%s attempts_left=%d",
                    device.pk, verification.pk, left)
        message = (f"That code is wrong; {left} attempt{'s' if left != 1 else ''} left." if left
                   else f"That code is wrong and no attempts are left. Start again with POST {START_PATH}.")
        raise ServiceError("wrong_code", message, fields={"code": [message]})
    with transaction.atomic():
        # Guarded: a target changed since the code was read out is not marked.
        if not Device.objects.filter(pk=device.pk, connect_type=ConnectType.NUMBER,
                                     connect_address=verification.number).update(connect_verified_at=now):
            raise _start_again("The code was sent to a number this device no longer uses.")
        NumberVerification.objects.filter(pk=verification.pk).update(verified_at=now)
    device.connect_verified_at = now
    log.info("number verified device=%s verification=%s", device.pk, verification.pk)
    return device
