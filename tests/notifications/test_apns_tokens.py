"""The APNs tokens of a device over the API: set and rotated with PATCH on `me`, hex only,
never echoed (shown as booleans), only by the device itself, and gone with the device."""

import pytest

from devices.models import Device
from tests.conftest import client_for, error_code, make_device

pytestmark = pytest.mark.django_db
ME = "/api/v1/devices/me"
VOIP = "AB" * 32


def test_patch_me_sets_and_rotates_the_tokens_never_echoing_them(tablet_api, tablet):
    tablet, _ = tablet
    body = tablet_api.patch(ME, {"apns_voip_token": VOIP, "apns_token": "cd" * 40}, format="json").json()

    assert (body["apns_voip_registered"], body["apns_registered"]) == (True, True)
    assert VOIP.lower() not in str(body) and "cd" * 40 not in str(body)
    tablet.refresh_from_db()
    assert (tablet.apns_voip_token, tablet.apns_token) == (VOIP.lower(), "cd" * 40)  # stored lowercase

    tablet_api.patch(ME, {"apns_voip_token": "ef" * 32}, format="json")
    tablet.refresh_from_db()
    assert tablet.apns_voip_token == "ef" * 32 and tablet.apns_token == "cd" * 40

    body = tablet_api.patch(ME, {"apns_voip_token": "", "apns_token": ""}, format="json").json()
    assert (body["apns_voip_registered"], body["apns_registered"]) == (False, False)


@pytest.mark.parametrize("token", ["xyz" * 30, "ab" * 31, "abc" * 23, "ab" * 101, "ab" * 31 + "a b"])
def test_a_token_that_is_not_hex_of_32_bytes_or_more_is_refused(tablet_api, tablet, token):
    tablet, _ = tablet
    response = tablet_api.patch(ME, {"apns_voip_token": token}, format="json")

    assert response.status_code == 400 and "apns_voip_token" in str(response.json())
    tablet.refresh_from_db()
    assert tablet.apns_voip_token == ""


def test_another_device_cannot_set_them(user, tablet_api):
    phone, _ = make_device(user, kind="handset", platform="ios")

    response = tablet_api.patch(f"/api/v1/devices/{phone.pk}", {"apns_token": VOIP}, format="json")

    assert response.status_code == 403 and error_code(response) == "own_device_only"


def test_registration_takes_them_and_removal_clears_them(api, user, tablet_api):
    ipad, token = make_device(user, kind="tablet", platform="ios", apns_voip_token=VOIP.lower(),
                              apns_token="cd" * 32)
    assert client_for(token).delete(ME).status_code == 204

    row = Device.all_objects.get(pk=ipad.pk)
    assert (row.apns_voip_token, row.apns_token, row.revoked_at is not None) == ("", "", True)
