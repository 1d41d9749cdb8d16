import pytest
from django.contrib.auth.hashers import check_password

from callpull.models import AccountSettings
from tests.conftest import error_code

pytestmark = pytest.mark.django_db
URL = "/api/v1/account"


def test_defaults(tablet_api):
    body = tablet_api.get(URL).json()
    assert body == {"username": "ana", "pull_requires_approval": False, "monitor_after_switch": False,
                    "transfer_allowlist": [], "transfer_pin_set": False}


def test_settings_are_saved_and_numbers_normalized(tablet_api, user):
    response = tablet_api.patch(URL, {"pull_requires_approval": True,
                                      "transfer_allowlist": ["+1 555 000 1111", "+15550001111", "+4930123456"],
                                      "transfer_pin": "4321"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["pull_requires_approval"] is True
    assert body["transfer_allowlist"] == ["+15550001111", "+4930123456"]
    assert body["transfer_pin_set"] is True
    assert "transfer_pin" not in body
    stored = AccountSettings.objects.get(user=user)
    assert stored.transfer_pin_hash != "4321" and check_password("4321", stored.transfer_pin_hash)


def test_pin_can_be_cleared(tablet_api):
    tablet_api.patch(URL, {"transfer_pin": "4321"}, format="json")
    assert tablet_api.patch(URL, {"transfer_pin": None}, format="json").json()["transfer_pin_set"] is False


@pytest.mark.parametrize("body,field", [
    ({"transfer_pin": "12"}, "transfer_pin"),
    ({"transfer_pin": "abcd"}, "transfer_pin"),
    ({"transfer_allowlist": ["+15550001111", "not a number"]}, "transfer_allowlist.1"),
    ({"pull_requires_approval": "maybe"}, "pull_requires_approval"),
])
def test_bad_settings_are_400(tablet_api, body, field):
    response = tablet_api.patch(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_each_user_sees_only_their_own_settings(tablet_api, stranger):
    tablet_api.patch(URL, {"monitor_after_switch": True}, format="json")
    assert stranger[1].get(URL).json()["monitor_after_switch"] is False


def test_account_needs_a_token(api):
    response = api.get(URL)
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"
