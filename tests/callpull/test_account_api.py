import pytest
from django.contrib.auth.hashers import check_password
from django.test import override_settings

from callpull.models import AccountSettings
from devices.models import AuditEntry
from tests.conftest import PASSWORD, client_for, error_code, rate_limits

pytestmark = pytest.mark.django_db
URL = "/api/v1/account"


def test_defaults(tablet_api):
    body = tablet_api.get(URL).json()
    assert body == {"username": "ana", "pull_requires_approval": False, "monitor_after_switch": False,
                    "transfer_allowlist": [], "transfer_pin_set": False}


def test_settings_are_saved_and_numbers_normalized(tablet_api, user):
    response = tablet_api.patch(URL, {"pull_requires_approval": True,
                                      "transfer_allowlist": ["+1 555 000 1111", "+15550001111", "+4930123456"],
                                      "transfer_pin": "4321", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["pull_requires_approval"] is True
    assert body["transfer_allowlist"] == ["+15550001111", "+4930123456"]
    assert body["transfer_pin_set"] is True
    assert "transfer_pin" not in body and "password" not in body
    stored = AccountSettings.objects.get(user=user)
    assert stored.transfer_pin_hash != "4321" and check_password("4321", stored.transfer_pin_hash)


def test_pin_can_be_cleared(tablet_api):
    assert tablet_api.patch(URL, {"transfer_pin": "4321", "password": PASSWORD},
                            format="json").json()["transfer_pin_set"] is True
    assert tablet_api.patch(URL, {"transfer_pin": None, "current_pin": "4321"},
                            format="json").json()["transfer_pin_set"] is False


def _stored(user):
    return AccountSettings.objects.filter(user=user).values("transfer_allowlist", "transfer_pin_hash").first()


@pytest.mark.parametrize("change", [{"transfer_pin": "0000"}, {"transfer_allowlist": ["+19005550100"]},
                                    {"transfer_pin": None}])
def test_pin_and_allow_list_changes_need_the_password_or_the_current_pin(tablet_api, user, change):
    """A stolen token alone cannot replace the transfer guard (issue 12)."""
    assert tablet_api.patch(URL, {"transfer_pin": "2468", "transfer_allowlist": ["+15550001111"],
                                  "password": PASSWORD}, format="json").status_code == 200
    before = _stored(user)
    for proof in ({}, {"password": "wrong password"}, {"current_pin": "1357"}):
        response = tablet_api.patch(URL, {**change, **proof}, format="json")
        assert response.status_code == 403, proof
        assert error_code(response) == "reauthentication_required"
        assert "`password`" in response.json()["error"]["message"]
        assert "`current_pin`" in response.json()["error"]["message"]  # a PIN is set: it would do too
        assert _stored(user) == before
    assert tablet_api.patch(URL, {**change, "current_pin": "2468"}, format="json").status_code == 200
    assert _stored(user) != before


def test_without_a_pin_only_the_password_will_do(tablet_api, user):
    response = tablet_api.patch(URL, {"transfer_pin": "2468", "current_pin": "2468"}, format="json")
    assert response.status_code == 403 and error_code(response) == "reauthentication_required"
    assert set(response.json()["error"]["fields"]) == {"password"}
    assert "current_pin" not in response.json()["error"]["message"]
    assert tablet_api.patch(URL, {"transfer_pin": "2468", "password": PASSWORD}, format="json").status_code == 200


@override_settings(RATE_LIMITS=rate_limits(login_failure=(2, 300)))
def test_wrong_secrets_are_rate_limited_per_device_not_for_the_whole_account(tablet_api, handset_api):
    for _ in range(2):
        response = tablet_api.patch(URL, {"transfer_pin": "0000", "password": "guess"}, format="json")
        assert response.status_code == 403 and error_code(response) == "reauthentication_required"
    limited = tablet_api.patch(URL, {"transfer_pin": "0000", "password": PASSWORD}, format="json")
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"
    assert 0 < int(limited["Retry-After"]) <= 300
    # The owner on another device is not locked out by the stolen token's guesses.
    assert handset_api.patch(URL, {"transfer_pin": "2468", "password": PASSWORD}, format="json").status_code == 200


# The audit log -----------------------------------------------------------------

AUDIT_URL = "/api/v1/account/audit-log"


def test_sensitive_changes_are_in_the_audit_log_newest_first(api, user, tablet, tablet_api, handset, stranger):
    tablet_api.patch(URL, {"monitor_after_switch": True}, format="json")  # not sensitive: not logged
    assert tablet_api.patch(URL, {"transfer_pin": "2468", "transfer_allowlist": ["+1 555 000 1111"],
                                  "password": PASSWORD}, format="json", REMOTE_ADDR="198.51.100.7").status_code == 200
    assert tablet_api.patch("/api/v1/devices/me", {"connect": {"type": "number", "address": "+15550002222"},
                                                   "phone_number": "+15550003333", "current_pin": "2468"},
                            format="json").status_code == 200
    code = tablet_api.post("/api/v1/pairing-codes").json()["code"]
    paired = api.post("/api/v1/devices", {"pairing_code": code, "device": {
        "name": "Old desktop", "kind": "desktop", "platform": "other"}}, format="json", REMOTE_ADDR="203.0.113.4")
    old = paired.json()["device"]["id"]
    assert tablet_api.delete(f"/api/v1/devices/{old}").status_code == 204
    mallory = api.post("/api/v1/devices", {"username": "mallory", "password": PASSWORD, "device": {
        "name": "Mallory's tablet", "kind": "tablet", "platform": "web"}}, format="json").json()

    body = tablet_api.get(AUDIT_URL).json()
    assert [entry["action"] for entry in body] == [
        "device_revoked", "device_registered", "device_phone_number_changed", "device_connect_changed",
        "transfer_pin_changed", "transfer_allowlist_changed"]
    by_action = {entry["action"]: entry for entry in body}
    me = {"id": str(tablet[0].pk), "name": "Tablet", "kind": "tablet"}
    assert by_action["transfer_pin_changed"]["device"] == me
    assert by_action["transfer_pin_changed"]["client_ip"] == "198.51.100.7"
    assert by_action["transfer_pin_changed"]["detail"] == {"set": True}
    assert by_action["transfer_allowlist_changed"]["detail"] == {"numbers": ["+15550001111"]}
    assert by_action["device_connect_changed"]["detail"] == {"device": str(tablet[0].pk), "type": "number",
                                                              "address": "+15550002222"}
    assert by_action["device_phone_number_changed"]["detail"]["phone_number"] == "+15550003333"
    assert by_action["device_revoked"]["device"] == me
    assert by_action["device_revoked"]["detail"] == {"device": old, "name": "Old desktop", "kind": "desktop"}
    assert by_action["device_registered"]["device"] == {"id": old, "name": "Old desktop", "kind": "desktop"}
    assert by_action["device_registered"]["client_ip"] == "203.0.113.4"
    # (its connect target is its own voice identity, which the log does not show: client targets never are)
    assert by_action["device_registered"]["detail"] == {"device": old, "name": "Old desktop", "kind": "desktop",
                                                        "method": "pairing_code", "paired_by": str(tablet[0].pk),
                                                        "connect": {"type": "client"}}
    assert set(body[0]) == {"id", "action", "detail", "device", "client_ip", "at"}
    text = str(body)
    assert PASSWORD not in text and "2468" not in text  # never a secret
    assert [entry["action"] for entry in tablet_api.get(AUDIT_URL, {"limit": 2}).json()] == [
        "device_revoked", "device_registered"]
    [hers] = client_for(mallory["token"]).get(AUDIT_URL).json()  # her own registration, nothing of Ana's
    assert hers["device"]["name"] == "Mallory's tablet" and hers["detail"]["method"] == "password"


@pytest.mark.parametrize("limit", ["0", "201", "many"])
def test_audit_log_limit_is_1_to_200(tablet_api, limit):
    response = tablet_api.get(AUDIT_URL, {"limit": limit})
    assert response.status_code == 400 and "limit" in response.json()["error"]["fields"]


def test_a_revoked_devices_changes_stay_in_the_log_with_the_device(user, tablet, tablet_api, handset_api):
    tablet_api.patch(URL, {"transfer_allowlist": ["+15550001111"], "password": PASSWORD}, format="json")
    assert handset_api.delete(f"/api/v1/devices/{tablet[0].pk}").status_code == 204
    entry = next(e for e in handset_api.get(AUDIT_URL).json() if e["action"] == "transfer_allowlist_changed")
    assert entry["device"] == {"id": str(tablet[0].pk), "name": "Tablet", "kind": "tablet"}
    assert AuditEntry.objects.filter(user=user, action="device_revoked").count() == 1
    assert client_for(tablet[1]).get(AUDIT_URL).status_code == 401


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
