"""Limits that stop attackers, not owners (issue 12, attack 8).

Failed logins are counted per username *and* address, and per address whatever the
username, so a flood of wrong passwords from elsewhere does not lock the owner out.

Wrong PINs are limited per device (and per call for transfers), so a stolen token cannot
lock the owner out. But a stolen token can make pairing codes, and each code makes a new
device with a fresh per-device budget: the account's wrong PINs are capped per day
whichever device guessed, the password still works past that cap, and pairing codes are
limited per account.
"""

import pytest
from django.test import override_settings

from tests.conftest import PASSWORD, client_for, error_code, make_device, rate_limits

pytestmark = pytest.mark.django_db
ACCOUNT = "/api/v1/account"
URL = "/api/v1/devices"


def tablet_body():
    return {"name": "Tablet", "kind": "tablet", "platform": "android"}


@pytest.fixture
def small_budgets(settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "pin_failure_user": (3, 86400), "pairing_code": (2, 3600)}


def _set_pin(api, pin="2468"):
    response = api.patch(ACCOUNT, {"transfer_pin": pin, "transfer_allowlist": ["+15550001111"],
                                   "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content


def test_new_devices_bring_no_new_pin_guesses_for_sensitive_changes(user, tablet_api, small_budgets):
    _set_pin(tablet_api)
    guessers = [client_for(make_device(user, kind="tablet")[1]) for _ in range(3)]
    for api in guessers:  # one wrong PIN each: well within every per-device limit
        response = api.patch(ACCOUNT, {"transfer_allowlist": ["+19005550100"], "current_pin": "0000"},
                             format="json")
        assert error_code(response) == "reauthentication_required"
    fresh = client_for(make_device(user, kind="tablet")[1])
    response = fresh.patch(ACCOUNT, {"transfer_allowlist": ["+19005550100"], "current_pin": "2468"}, format="json")
    assert response.status_code == 429 and error_code(response) == "rate_limited"
    assert "Retry-After" in response
    # The owner is not locked out: the password still proves it is them.
    response = fresh.patch(ACCOUNT, {"transfer_allowlist": ["+15550002222"], "password": PASSWORD}, format="json")
    assert response.status_code == 200
    assert response.json()["transfer_allowlist"] == ["+15550002222"]


def test_transfer_pin_guesses_from_many_devices_share_the_accounts_budget(user, tablet_api, live_call, small_budgets):
    _set_pin(tablet_api)
    body = {"number": "+15550001111", "pin": "0000"}
    for _ in range(3):
        api = client_for(make_device(user, kind="desktop")[1])
        response = api.post(f"/api/v1/calls/{live_call}/transfer", body, format="json")
        assert error_code(response) == "wrong_pin"
    api = client_for(make_device(user, kind="desktop")[1])
    response = api.post(f"/api/v1/calls/{live_call}/transfer", {**body, "pin": "2468"}, format="json")
    assert response.status_code == 429


def test_pairing_codes_are_limited_per_account(user, tablet_api, handset_api, small_budgets):
    assert tablet_api.post("/api/v1/pairing-codes").status_code == 201
    assert handset_api.post("/api/v1/pairing-codes").status_code == 201
    response = tablet_api.post("/api/v1/pairing-codes")
    assert response.status_code == 429 and error_code(response) == "rate_limited"


@override_settings(RATE_LIMITS=rate_limits(login_failure=(3, 300), login_failure_address=(20, 300)))
def test_a_login_flood_from_other_addresses_does_not_lock_the_owner_out(api, user):
    for i in range(6):
        wrong = api.post(URL, {"username": "ana", "password": "guess", "device": tablet_body()}, format="json",
                         REMOTE_ADDR=f"203.0.113.{i % 2 + 1}")
        assert wrong.status_code == 401
    flooded = api.post(URL, {"username": "ana", "password": PASSWORD, "device": tablet_body()}, format="json",
                       REMOTE_ADDR="203.0.113.1")
    assert flooded.status_code == 429  # the attacker's address is limited for this username
    owner = api.post(URL, {"username": "ana", "password": PASSWORD, "device": tablet_body()}, format="json",
                     REMOTE_ADDR="198.51.100.7")
    assert owner.status_code == 201


@override_settings(RATE_LIMITS=rate_limits(login_failure=(3, 300), login_failure_address=(4, 300)))
def test_one_address_is_limited_across_usernames(api, user):
    for name in ("bob", "carol", "dave", "erin"):
        response = api.post(URL, {"username": name, "password": "guess", "device": tablet_body()}, format="json",
                            REMOTE_ADDR="203.0.113.9")
        assert response.status_code == 401
    response = api.post(URL, {"username": "ana", "password": PASSWORD, "device": tablet_body()}, format="json",
                        REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert api.post(URL, {"username": "ana", "password": PASSWORD, "device": tablet_body()}, format="json",
                    REMOTE_ADDR="198.51.100.7").status_code == 201
