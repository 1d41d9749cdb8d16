import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone

from devices import services
from devices.models import WsTicket
from tests.conftest import client_for, error_code, rate_limits

pytestmark = pytest.mark.django_db


def pair(api, code):
    return api.post("/api/v1/devices", {"pairing_code": code,
                                        "device": {"name": "Den", "kind": "desktop", "platform": "other"}},
                    format="json")


def new_code(client):
    response = client.post("/api/v1/pairing-codes")
    assert response.status_code == 201
    return response.json()


def test_pairing_code_is_short_and_expires_in_minutes(handset_api):
    body = new_code(handset_api)
    assert len(body["code"]) == 8 and body["code"].isalnum()
    remaining = (timezone.datetime.fromisoformat(body["expires_at"]) - timezone.now()).total_seconds()
    assert 60 < remaining <= 300


def test_a_device_joins_the_same_user_with_a_pairing_code(api, user, handset_api):
    code = new_code(handset_api)["code"]
    response = pair(api, code.lower()[:4] + "-" + code.lower()[4:])  # typed by a person
    assert response.status_code == 201
    device_id = response.json()["device"]["id"]
    assert device_id in {d["id"] for d in handset_api.get("/api/v1/devices").json()}


def test_a_handset_registers_with_the_password_never_with_a_pairing_code(api, tablet_api):
    """A device does not declare itself a handset (which reports rings and forwarding) with a
    code any device of the user can make (issue 12)."""
    code = new_code(tablet_api)["code"]
    response = api.post("/api/v1/devices", {"pairing_code": code, "device": {"name": "Fake phone", "kind": "handset",
                                                                             "platform": "android"}}, format="json")
    assert response.status_code == 403 and error_code(response) == "handset_requires_password"
    assert pair(api, code).status_code == 201  # the code was not used up: a desktop may still pair with it


@pytest.mark.parametrize("extra,field", [({"connect": {"type": "number", "address": "+19005550100"}}, "device.connect"),
                                         ({"phone_number": "+19005550100"}, "device.phone_number")])
def test_a_paired_device_cannot_bring_a_number_target_or_phone_number(api, tablet_api, extra, field):
    """They need the password or PIN on PATCH /devices/me; a code a stolen device made is neither."""
    code = new_code(tablet_api)["code"]
    response = api.post("/api/v1/devices", {"pairing_code": code, "device": {
        "name": "Den", "kind": "desktop", "platform": "other", **extra}}, format="json")
    assert response.status_code == 403 and error_code(response) == "reauthentication_required"
    assert set(response.json()["error"]["fields"]) == {field}
    assert pair(api, code).status_code == 201


def test_a_reused_pairing_code_is_refused(api, handset_api):
    code = new_code(handset_api)["code"]
    assert pair(api, code).status_code == 201
    response = pair(api, code)
    assert response.status_code == 400
    assert error_code(response) == "invalid_pairing_code"


def test_an_expired_pairing_code_is_refused(api, handset_api):
    code = new_code(handset_api)["code"]
    with time_machine.travel(timezone.now() + timezone.timedelta(seconds=301)):
        response = pair(api, code)
    assert response.status_code == 400
    assert error_code(response) == "invalid_pairing_code"


def test_a_code_from_a_since_revoked_device_is_refused(api, handset, handset_api):
    code = new_code(handset_api)["code"]
    services.device_revoke(device=handset[0], now=timezone.now())
    assert pair(api, code).status_code == 400


@override_settings(RATE_LIMITS=rate_limits(pairing_failure=(3, 300)))
def test_guessing_pairing_codes_is_rate_limited(api, handset_api):
    for _ in range(3):
        assert pair(api, "WRONGONE").status_code == 400
    real = new_code(handset_api)["code"]
    response = pair(api, real)
    assert response.status_code == 429
    assert "Retry-After" in response


def test_pairing_codes_need_a_device(api):
    assert api.post("/api/v1/pairing-codes").status_code == 401


def test_ws_ticket_is_single_use_and_short_lived(tablet, tablet_api):
    response = tablet_api.post("/api/v1/ws-tickets")
    assert response.status_code == 201
    body = response.json()
    assert body["expires_in"] == 30
    now = timezone.now()
    assert services.ws_ticket_redeem(ticket=body["ticket"], now=now) == tablet[0]
    assert services.ws_ticket_redeem(ticket=body["ticket"], now=now) is None
    assert not WsTicket.objects.filter(ticket_hash=body["ticket"]).exists()  # stored hashed


def test_an_expired_ws_ticket_is_refused(tablet_api):
    ticket = tablet_api.post("/api/v1/ws-tickets").json()["ticket"]
    later = timezone.now() + timezone.timedelta(seconds=31)
    assert services.ws_ticket_redeem(ticket=ticket, now=later) is None


def test_a_revoked_devices_ticket_is_refused(tablet, tablet_api):
    ticket = tablet_api.post("/api/v1/ws-tickets").json()["ticket"]
    services.device_revoke(device=tablet[0], now=timezone.now())
    assert services.ws_ticket_redeem(ticket=ticket, now=timezone.now()) is None


@override_settings(RATE_LIMITS=rate_limits(ws_ticket=(2, 60)))
def test_ws_tickets_are_rate_limited_per_device(tablet_api, handset_api):
    assert tablet_api.post("/api/v1/ws-tickets").status_code == 201
    assert tablet_api.post("/api/v1/ws-tickets").status_code == 201
    assert tablet_api.post("/api/v1/ws-tickets").status_code == 429
    assert handset_api.post("/api/v1/ws-tickets").status_code == 201


def test_ws_tickets_need_a_token(api):
    assert api.post("/api/v1/ws-tickets").status_code == 401
    assert client_for("cpd_x").post("/api/v1/ws-tickets").status_code == 401
