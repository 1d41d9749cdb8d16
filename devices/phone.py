"""Phone numbers in, E.164 out.

Inputs are E.164 or a national number with an ISO `region`. We require a
*possible* number (right length for its country), not a *valid* one: test and
newly allocated ranges (e.g. +1 555 …) must work, and the carrier is the judge
of whether a number exists.

The one module that parses phone numbers (settings, the API, the provider's webhooks
all come here); nothing else imports `phonenumbers`.
"""

import phonenumbers

from devices.errors import ServiceError


def parse_e164(raw: str | None, region: str | None = None) -> str | None:
    """`raw` as E.164, or None when it is not a possible phone number (what a caller id
    the network withheld or garbled, or a setting, is checked with)."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        parsed = phonenumbers.parse(raw, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_PAYS_THE_CALLEE = frozenset({phonenumbers.PhoneNumberType.PREMIUM_RATE, phonenumbers.PhoneNumberType.SHARED_COST})


def pays_the_callee(number: str) -> bool:
    """A premium-rate or shared-cost number: a call there pays whoever owns it (toll fraud)."""
    try:
        return phonenumbers.number_type(phonenumbers.parse(number)) in _PAYS_THE_CALLEE
    except phonenumbers.NumberParseException:
        return False


def to_e164(raw: str, region: str | None = None, *, field: str = "number") -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _invalid(field, "A phone number is required.")
    if region is not None and (not isinstance(region, str) or len(region) != 2 or not region.isalpha()):
        raise ServiceError("invalid_region", "region must be a two-letter ISO country code.",
                       fields={"region": ["Not an ISO 3166-1 alpha-2 code."]})
    try:
        parsed = phonenumbers.parse(raw, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        hint = "" if region or raw.strip().startswith("+") else " Give E.164 (+…) or a region."
        raise _invalid(field, f"{raw!r} is not a phone number.{hint}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise _invalid(field, f"{raw!r} is not a possible phone number.")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _invalid(field: str, message: str) -> ServiceError:
    return ServiceError("invalid_phone_number", message, fields={field: [message]})
