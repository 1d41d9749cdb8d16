import uuid

import pytest
from django.test import override_settings
from django.utils import timezone

from devices.models import AuditEntry, Device
from tests.conftest import PASSWORD, client_for, error_code, make_device, rate_limits

pytestmark = pytest.mark.django_db
URL = "/api/v1/devices"


def register(api, **body):
    return api.post(URL, body, format="json")


def tablet_body(**extra):
    return {"name": "Kitchen tablet", "kind": "tablet", "platform": "android", **extra}


def test_register_with_password_returns_device_and_token_once(api, user):
    response = register(api, username="ana", password=PASSWORD, device=tablet_body())
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("cpd_")
    assert body["device"]["kind"] == "tablet"
    assert body["device"]["me"] is True
    device = Device.objects.get(pk=body["device"]["id"])
    assert body["token"] not in device.token_hash  # stored only as a hash
    listed = client_for(body["token"]).get(URL).json()
    assert "token" not in listed[0]


def test_the_new_token_authenticates(api, user):
    token = register(api, username="ana", password=PASSWORD, device=tablet_body()).json()["token"]
    assert client_for(token).get(URL).status_code == 200


def test_register_with_connect_target_normalizes_a_number(api, user):
    response = register(api, username="ana", password=PASSWORD,
                        device=tablet_body(connect={"type": "number", "address": "(555) 765-4321"}))
    assert response.status_code == 400
    assert error_code(response) == "invalid_phone_number"
    response = register(api, username="ana", password=PASSWORD,
                        device=tablet_body(connect={"type": "number", "address": "+1 555 765 4321"}))
    assert response.status_code == 201
    assert response.json()["device"]["connect"] == {"type": "number", "address": "+15557654321", "verified": False}


@pytest.mark.parametrize("connect", [
    {"type": "client", "address": "has spaces"},
    {"type": "sip", "address": "not-a-sip-uri"},
    {"type": "carrier-pigeon", "address": "x"},
])
def test_register_rejects_bad_connect_targets(api, user, connect):
    response = register(api, username="ana", password=PASSWORD, device=tablet_body(connect=connect))
    assert response.status_code == 400
    assert error_code(response) == "invalid_input"
    assert any(name.startswith("device.connect") for name in response.json()["error"]["fields"])


@pytest.mark.parametrize("device,field", [
    ({"kind": "tablet", "platform": "android"}, "device.name"),
    ({"name": "x", "kind": "toaster", "platform": "android"}, "device.kind"),
    ({"name": "x", "kind": "tablet", "platform": "palm"}, "device.platform"),
])
def test_register_names_the_bad_device_field(api, user, device, field):
    response = register(api, username="ana", password=PASSWORD, device=device)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_register_needs_password_or_pairing_code_not_both(api, user):
    assert register(api, device=tablet_body()).status_code == 400
    both = register(api, username="ana", password=PASSWORD, pairing_code="ABCDEFGH", device=tablet_body())
    assert both.status_code == 400
    only_user = register(api, username="ana", device=tablet_body())
    assert only_user.status_code == 400
    assert "password" in only_user.json()["error"]["fields"]


def test_register_with_a_wrong_password_is_401(api, user):
    response = register(api, username="ana", password="wrong", device=tablet_body())
    assert response.status_code == 401
    assert error_code(response) == "invalid_credentials"


@override_settings(RATE_LIMITS=rate_limits(login_failure=(3, 300), login_failure_address=(20, 300)))
def test_wrong_passwords_until_429_then_even_the_right_one_waits(api, user):
    for _ in range(3):
        assert register(api, username="ana", password="wrong", device=tablet_body()).status_code == 401
    response = register(api, username="ana", password=PASSWORD, device=tablet_body())
    assert response.status_code == 429
    assert error_code(response) == "rate_limited"
    assert 0 < int(response["Retry-After"]) <= 300


def test_a_stale_token_does_not_block_registration(api, user):
    api.credentials(HTTP_AUTHORIZATION="Bearer cpd_revoked")
    assert register(api, username="ana", password=PASSWORD, device=tablet_body()).status_code == 201


def test_list_shows_only_my_users_devices_with_presence_fields(handset, tablet, tablet_api, stranger):
    body = tablet_api.get(URL).json()
    assert {d["id"] for d in body} == {str(handset[0].pk), str(tablet[0].pk)}
    assert all(d["online"] is False and "last_seen_at" in d for d in body)
    assert [d["me"] for d in body if d["id"] == str(tablet[0].pk)] == [True]


def test_no_token_is_401_and_a_bad_token_is_401(api):
    response = api.get(URL)
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    response = client_for("cpd_nonsense").get(URL)
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_me_is_the_calling_device(tablet, tablet_api):
    body = tablet_api.get(f"{URL}/me").json()
    assert body["id"] == str(tablet[0].pk)
    assert body["me"] is True


def test_patch_renames_toggles_ring_and_rotates_fcm_token(tablet, tablet_api):
    response = tablet_api.patch(f"{URL}/me", {"name": "Den", "ring_enabled": False, "fcm_token": "tok-2"},
                                format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "Den"
    assert response.json()["ring_enabled"] is False
    assert response.json()["fcm_registered"] is True
    tablet[0].refresh_from_db()
    assert tablet[0].fcm_token == "tok-2"


def test_patch_sets_and_clears_connect(tablet, tablet_api):
    set_ = tablet_api.patch(f"{URL}/me", {"connect": {"type": "sip", "address": "sip:tab@pbx.example"},
                                          "password": PASSWORD}, format="json")
    assert set_.json()["connect"] == {"type": "sip", "address": "sip:tab@pbx.example", "verified": True}
    # Clearing it returns to the device's own voice identity (a tablet always has a client target).
    cleared = tablet_api.patch(f"{URL}/me", {"connect": None}, format="json")
    assert cleared.json()["connect"] == {"type": "client", "address": tablet[0].voice_identity, "verified": True}


def test_patch_refuses_kind_changes(tablet_api):
    response = tablet_api.patch(f"{URL}/me", {"kind": "handset"}, format="json")
    assert response.status_code == 400
    assert error_code(response) == "unknown_fields"


def test_another_device_of_the_user_can_be_read_and_changed(handset, tablet_api):
    url = f"{URL}/{handset[0].pk}"
    assert tablet_api.get(url).status_code == 200
    assert tablet_api.patch(url, {"name": "Old phone"}, format="json").json()["name"] == "Old phone"


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_other_users_devices_are_404_never_403(handset, stranger, method):
    _, mallory = stranger
    response = getattr(mallory, method)(f"{URL}/{handset[0].pk}", {"name": "pwned"}, format="json")
    assert response.status_code == 404
    assert error_code(response) == "not_found"
    handset[0].refresh_from_db()
    assert handset[0].name == "Pixel" and handset[0].revoked_at is None


@pytest.mark.parametrize("device_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_device_is_404(tablet_api, device_id):
    assert tablet_api.get(f"{URL}/{device_id}").status_code == 404


def test_delete_revokes_the_token_at_once(user, tablet_api):
    phone, phone_token = make_device(user, kind="handset")
    assert tablet_api.delete(f"{URL}/{phone.pk}").status_code == 204
    assert client_for(phone_token).get(URL).status_code == 401
    assert str(phone.pk) not in {d["id"] for d in tablet_api.get(URL).json()}
    assert Device.all_objects.filter(pk=phone.pk, revoked_at__isnull=False).exists()


def test_a_device_can_delete_itself(tablet_api):
    assert tablet_api.delete(f"{URL}/me").status_code == 204
    assert tablet_api.get(URL).status_code == 401


# Connect targets: verified, SIP on the operator's domains ---------------------------

@pytest.mark.parametrize("address", ["sip:desk@evil.example", "sip:desk@pbx.example@evil.example",
                                     "sip:desk@evil.example;maddr=x?h=@pbx.example", "sip:desk@pbx.example.evil"])
def test_a_sip_target_off_sip_domains_is_refused(api, user, tablet_api, address):
    connect = {"type": "sip", "address": address}
    response = register(api, username="ana", password=PASSWORD, device=tablet_body(connect=connect))
    assert response.status_code == 400 and error_code(response) == "sip_domain_not_allowed"
    response = tablet_api.patch(f"{URL}/me", {"connect": connect, "password": PASSWORD}, format="json")
    assert response.status_code == 400 and error_code(response) == "sip_domain_not_allowed"
    assert "connect.address" in response.json()["error"]["fields"]


@pytest.mark.parametrize("address", ["sip:desk@pbx.example", "sips:desk@PBX.example:5061;transport=tls",
                                     "sip:desk@pbx.example.?subject=x"])
def test_a_sip_target_on_sip_domains_is_verified_at_once(api, user, address):
    response = register(api, username="ana", password=PASSWORD,
                        device=tablet_body(connect={"type": "sip", "address": address}))
    assert response.status_code == 201, response.content
    assert response.json()["device"]["connect"]["verified"] is True


def test_no_sip_domains_no_sip_targets(api, user, settings):
    settings.SIP_DOMAINS = []
    response = register(api, username="ana", password=PASSWORD,
                        device=tablet_body(connect={"type": "sip", "address": "sip:desk@pbx.example"}))
    assert response.status_code == 400 and error_code(response) == "sip_domain_not_allowed"


def test_a_client_target_is_verified_a_number_is_not_and_a_new_target_starts_over(tablet, tablet_api):
    def patch(connect, **proof):
        response = tablet_api.patch(f"{URL}/me", {"connect": connect, **proof}, format="json")
        assert response.status_code == 200, response.content
        tablet[0].refresh_from_db()
        return response.json()["connect"]

    assert patch({"type": "client", "address": "tab-1"})["verified"] is True
    assert patch({"type": "number", "address": "+15550002222"}, password=PASSWORD)["verified"] is False
    Device.objects.filter(pk=tablet[0].pk).update(connect_verified_at=timezone.now())  # as a verification call does
    assert patch({"type": "number", "address": "+15550002222"})["verified"] is True  # the same target: kept
    assert patch({"type": "number", "address": "+15550004444"}, password=PASSWORD)["verified"] is False
    assert tablet[0].connect_verified_at is None
    assert patch(None) == {"type": "client", "address": tablet[0].voice_identity, "verified": True}
    assert tablet[0].connect_verified_at is not None


# Sensitive changes need the password or the current PIN ------------------------------

@pytest.mark.parametrize("change", [
    {"connect": {"type": "number", "address": "+19005550100"}},
    {"connect": {"type": "sip", "address": "sip:attacker@pbx.example"}},
    {"phone_number": "+19005550100"},
])
def test_number_and_sip_targets_and_phone_numbers_need_the_password_or_pin(tablet, tablet_api, change):
    for proof in ({}, {"password": "wrong"}, {"current_pin": "1234"}):
        response = tablet_api.patch(f"{URL}/me", {**change, **proof}, format="json")
        assert response.status_code == 403, (proof, response.content)
        assert error_code(response) == "reauthentication_required"
    tablet[0].refresh_from_db()
    before = ("client", tablet[0].voice_identity, "")  # its default target, no phone number
    assert (tablet[0].connect_type, tablet[0].connect_address, tablet[0].phone_number) == before
    response = tablet_api.patch(f"{URL}/me", {**change, "password": PASSWORD}, format="json")
    assert response.status_code == 200
    assert "password" not in response.json()
    tablet[0].refresh_from_db()
    assert (tablet[0].connect_type, tablet[0].connect_address, tablet[0].phone_number) != before


def test_the_current_pin_will_do_once_one_is_set(tablet, tablet_api):
    assert tablet_api.patch("/api/v1/account", {"transfer_pin": "2468", "password": PASSWORD},
                            format="json").status_code == 200
    response = tablet_api.patch(f"{URL}/me", {"phone_number": "+15550003333", "current_pin": "2468"}, format="json")
    assert response.status_code == 200 and response.json()["phone_number"] == "+15550003333"


# A device changes only itself -------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"connect": {"type": "sip", "address": "sip:attacker@pbx.example"}, "password": PASSWORD},
    {"connect": None},
    {"phone_number": "+19005550100", "password": PASSWORD},
    {"fcm_token": "attacker-token"},
])
def test_another_devices_connect_phone_number_and_fcm_token_are_its_own(user, tablet_api, change):
    desktop, _ = make_device(user, kind="desktop", name="Desk", connect_type="sip",
                             connect_address="sip:desk@pbx.example", fcm_token="desk-token")
    response = tablet_api.patch(f"{URL}/{desktop.pk}", change, format="json")
    assert response.status_code == 403 and error_code(response) == "own_device_only"
    desktop.refresh_from_db()
    assert (desktop.connect_address, desktop.phone_number, desktop.fcm_token) == ("sip:desk@pbx.example", "",
                                                                                "desk-token")
    renamed = tablet_api.patch(f"{URL}/{desktop.pk}", {"name": "Den", "ring_enabled": False}, format="json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Den"


# The client's address: X-Forwarded-For only from trusted proxies ------------------------

def _seen_address(api, settings, trusted, remote, forwarded=None):
    settings.TRUSTED_PROXIES = trusted
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    response = api.post(URL, {"username": "ana", "password": PASSWORD, "device": tablet_body()}, format="json",
                        REMOTE_ADDR=remote, **headers)
    assert response.status_code == 201
    return AuditEntry.objects.get(device_id=response.json()["device"]["id"], action="device_registered").client_ip


@pytest.mark.parametrize("trusted,remote,forwarded,seen", [
    ([], "127.0.0.1", "203.0.113.5", "127.0.0.1"),                       # nobody trusted: the peer
    (["10.0.0.0/8"], "127.0.0.1", "203.0.113.5", "127.0.0.1"),           # the peer is no trusted proxy
    (["127.0.0.1"], "127.0.0.1", "203.0.113.5", "203.0.113.5"),          # a trusted proxy: its word
    (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "6.6.6.6, 203.0.113.5, 10.1.2.3", "203.0.113.5"),  # right-most untrusted
    (["127.0.0.1"], "127.0.0.1", "203.0.113.5, garbage", "127.0.0.1"),  # a header a proxy would not write
    (["127.0.0.1"], "127.0.0.1", None, "127.0.0.1"),
])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(api, user, settings, trusted, remote, forwarded, seen):
    assert _seen_address(api, settings, trusted, remote, forwarded) == seen
