"""Number verification: the provider calls a device's `number` target and reads out
a code; the user sends it back (callpull/verification.py). The provider's REST side
is faked: what the call would say is read from the TwiML it was given."""

import logging
import re
import uuid
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.utils import timezone

from callpull import verification
from callpull.telephony import provider
from devices.errors import ServiceError
from devices.models import Device, NumberVerification
from tests.conftest import client_for, error_code, make_device, make_user

pytestmark = pytest.mark.django_db

START = "/api/v1/devices/me/number-verification"
CONFIRM = START + "/confirm"
NUMBER = "+15557654321"
SPOKEN_CODE = re.compile(r"(?<!\d)(?<!\d )\d(?: \d){5}(?! ?\d)")


class PlacedCalls:
    """Stands in for provider.call_place and remembers every call it was asked to place."""

    def __init__(self):
        self.calls = []
        self.refuse = False

    def __call__(self, *, to, from_, twiml, status_url=None, timeout=None):
        if self.refuse:
            raise provider.ProviderError("placing a call failed: 503")
        sid = "CA" + uuid.uuid4().hex
        self.calls.append({"to": to, "from": from_, "twiml": twiml, "sid": sid})
        return sid

    def said(self, index=-1) -> str:
        return " ".join(say.text or "" for say in ElementTree.fromstring(self.calls[index]["twiml"]).iter("Say"))

    def code(self, index=-1) -> str:
        """The code as a listener hears it: the digits the call says (twice)."""
        spoken = SPOKEN_CODE.findall(self.said(index))
        assert len(spoken) == 2 and spoken[0] == spoken[1], self.said(index)
        return spoken[0].replace(" ", "")


@pytest.fixture
def placed(monkeypatch):
    fake = PlacedCalls()
    monkeypatch.setattr(provider, "call_place", fake)
    return fake


@pytest.fixture
def phone(user):
    """A tablet whose connect target is a phone number, not verified yet."""
    return make_device(user, kind="tablet", name="Phone", connect_type="number", connect_address=NUMBER)


@pytest.fixture
def phone_api(phone):
    return client_for(phone[1])


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


def test_starting_calls_the_number_from_our_number_and_reads_a_six_digit_code_twice(phone, phone_api, line,
                                                                                   placed):
    response = phone_api.post(START)
    assert response.status_code == 202, response.content
    body = response.json()["verification"]
    assert set(body) == {"id", "number", "expires_at", "attempts_left"}
    assert (body["number"], body["attempts_left"]) == (NUMBER, 5)
    call, = placed.calls
    assert (call["to"], call["from"]) == (NUMBER, line.server_number.number)
    code = placed.code()
    assert re.fullmatch(r"\d{6}", code)
    stored = NumberVerification.objects.get(pk=body["id"])
    assert (stored.device_id, stored.number, stored.provider_call_sid) == (phone[0].pk, NUMBER, call["sid"])
    assert stored.expires_at - stored.created_at == timedelta(seconds=600)
    assert code not in stored.code_hash and len(stored.code_hash) == 64  # a digest, not the code


def test_the_right_code_verifies_the_devices_number(phone, phone_api, placed):
    phone_api.post(START)
    response = phone_api.post(CONFIRM, {"code": placed.code()}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(phone[0].pk)
    assert response.json()["connect"]["verified"] is True
    assert Device.objects.get(pk=phone[0].pk).connect_verified_at is not None
    assert NumberVerification.objects.get().verified_at is not None
    assert error_code(phone_api.post(START)) == "already_verified"
    assert error_code(phone_api.post(CONFIRM, {"code": placed.code()}, format="json")) == "already_verified"
    assert len(placed.calls) == 1


def test_a_wrong_code_says_how_many_attempts_are_left_and_five_wrong_codes_end_the_verification(
        phone, phone_api, placed):
    phone_api.post(START)
    right = placed.code()
    for left in (4, 3, 2, 1, 0):
        wrong = phone_api.post(CONFIRM, {"code": other_code(right)}, format="json")
        assert wrong.status_code == 400 and error_code(wrong) == "wrong_code"
        assert (f"{left} attempt" in wrong.json()["error"]["message"]) == bool(left), wrong.json()
        assert wrong.json()["error"]["fields"]["code"]
    late = phone_api.post(CONFIRM, {"code": right}, format="json")
    assert late.status_code == 409 and error_code(late) == "verification_expired"
    assert Device.objects.get(pk=phone[0].pk).connect_verified_at is None


def test_an_expired_code_is_refused(phone, placed):
    started = verification.verification_start(device=phone[0], now=timezone.now())
    later = started.expires_at + timedelta(seconds=1)
    with pytest.raises(ServiceError) as refused:
        verification.verification_confirm(device=phone[0], code=placed.code(), now=later)
    assert refused.value.code == "verification_expired"
    assert Device.objects.get(pk=phone[0].pk).connect_verified_at is None


def test_an_expired_code_is_refused_over_http(phone, phone_api, placed):
    phone_api.post(START)
    NumberVerification.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # the TTL went by
    response = phone_api.post(CONFIRM, {"code": placed.code()}, format="json")
    assert response.status_code == 409 and error_code(response) == "verification_expired"


def test_a_code_read_out_to_a_number_the_device_no_longer_uses_is_refused(phone, phone_api, placed):
    phone_api.post(START)
    Device.objects.filter(pk=phone[0].pk).update(connect_address="+15557650000")  # the target changed since
    response = phone_api.post(CONFIRM, {"code": placed.code()}, format="json")
    assert response.status_code == 409 and error_code(response) == "verification_expired"
    assert Device.objects.get(pk=phone[0].pk).connect_verified_at is None


def test_a_newer_request_supersedes_older_ones(phone, phone_api, placed):
    phone_api.post(START)
    first = placed.code()
    phone_api.post(START)
    second = placed.code()
    if first != second:
        assert error_code(phone_api.post(CONFIRM, {"code": first}, format="json")) == "wrong_code"
    assert NumberVerification.objects.filter(expires_at__gt=timezone.now()).count() == 1
    assert phone_api.post(CONFIRM, {"code": second}, format="json").status_code == 200


def test_calls_are_rate_limited_per_device_and_per_user(settings, user, phone, phone_api, placed):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "number_verification": (2, 3600),
                            "number_verification_daily": (3, 86400)}
    assert [phone_api.post(START).status_code for _ in range(2)] == [202, 202]
    limited = phone_api.post(START)
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"
    assert int(limited["Retry-After"]) > 0
    _, other_token = make_device(user, kind="desktop", name="Other phone", connect_type="number",
                                 connect_address="+15557650001")
    other_api = client_for(other_token)
    assert other_api.post(START).status_code == 202  # its own device limit is untouched
    assert other_api.post(START).status_code == 429  # but the user's is used up
    assert len(placed.calls) == 3


def test_calls_to_one_number_are_rate_limited_across_accounts(settings, phone, phone_api, placed):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "number_verification": (5, 3600),
                            "number_verification_daily": (2, 86400)}
    _, mallory_token = make_device(make_user("mallory"), kind="tablet", connect_type="number",
                                   connect_address=NUMBER)
    mallory_api = client_for(mallory_token)
    assert [phone_api.post(START).status_code, mallory_api.post(START).status_code] == [202, 202]
    limited = mallory_api.post(START)  # her own device and account are far from their limits
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"
    assert [call["to"] for call in placed.calls] == [NUMBER, NUMBER]


def test_premium_rate_numbers_are_never_called(user, placed):
    _, token = make_device(user, kind="tablet", connect_type="number", connect_address="+19005550123")
    refused = client_for(token).post(START)
    assert refused.status_code == 409 and error_code(refused) == "number_not_callable"
    assert placed.calls == []


def test_a_provider_failure_is_502_and_leaves_nothing_behind(phone, phone_api, placed):
    phone_api.post(START)
    code = placed.code()
    placed.refuse = True
    failed = phone_api.post(START)
    assert failed.status_code == 502 and error_code(failed) == "provider_unavailable"
    assert NumberVerification.objects.count() == 1
    placed.refuse = False
    assert phone_api.post(CONFIRM, {"code": code}, format="json").status_code == 200  # the first still holds


def test_only_a_number_target_is_verified_by_phone(tablet, tablet_api, placed):
    for path, body in ((START, None), (CONFIRM, {"code": "123456"})):
        response = tablet_api.post(path, body, format="json")
        assert response.status_code == 409 and error_code(response) == "no_number_target"
    assert placed.calls == []


def test_a_malformed_code_is_bad_input_and_costs_no_attempt(phone, phone_api, placed):
    phone_api.post(START)
    for code in ("12345", "abcdef", "1234567", ""):
        response = phone_api.post(CONFIRM, {"code": code}, format="json")
        assert response.status_code == 400 and error_code(response) == "invalid_input", code
    assert NumberVerification.objects.get().attempts == 0
    spaced = " ".join(placed.code()[:3]) + " - " + placed.code()[3:]
    assert phone_api.post(CONFIRM, {"code": spaced}, format="json").status_code == 200


def test_the_paths_are_not_taken_for_a_device_id(phone_api, placed):
    assert phone_api.get("/api/v1/devices/me").status_code == 200
    assert phone_api.post(START).status_code == 202
    assert phone_api.get(START).status_code == 405


def test_the_code_never_reaches_the_logs(caplog, phone, phone_api, placed):
    with caplog.at_level(logging.DEBUG):
        phone_api.post(START)
        code = placed.code()
        phone_api.post(CONFIRM, {"code": other_code(code)}, format="json")
        phone_api.post(CONFIRM, {"code": code}, format="json")
    assert Device.objects.get(pk=phone[0].pk).connect_verified_at is not None
    logged = "\n".join(f"{record.getMessage()} {record.args!r} {record.exc_text or ''}" for record in caplog.records)
    assert "number verification started" in logged and "wrong code" in logged
    standalone = re.compile(rf"(?<!\d){code}(?!\d)|{' '.join(code)}")
    assert not standalone.search(logged), "the verification code appears in the logs"
