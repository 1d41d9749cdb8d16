import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.conftest import PASSWORD, error_code, make_user, rate_limits

pytestmark = pytest.mark.django_db
URL = "/api/v1/accounts"


def test_signup_creates_a_user(api):
    response = api.post(URL, {"username": "ana", "password": PASSWORD}, format="json")
    assert response.status_code == 201
    assert response.json()["username"] == "ana"
    assert get_user_model().objects.get(username="ana").check_password(PASSWORD)


def test_signup_with_a_taken_username_is_409_whatever_the_case(api):
    make_user("ana")
    response = api.post(URL, {"username": "ANA", "password": PASSWORD}, format="json")
    assert response.status_code == 409
    assert error_code(response) == "username_taken"


def test_signup_with_a_weak_password_lists_why(api):
    response = api.post(URL, {"username": "ana", "password": "123"}, format="json")
    assert response.status_code == 400
    assert error_code(response) == "invalid_password"
    assert response.json()["error"]["fields"]["password"]


def test_signup_with_missing_fields_names_them(api):
    response = api.post(URL, {}, format="json")
    assert response.status_code == 400
    assert error_code(response) == "invalid_input"
    assert set(response.json()["error"]["fields"]) == {"username", "password"}


def test_signup_with_malformed_json_is_400_in_the_envelope(api):
    response = api.post(URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert error_code(response) == "malformed_json"


@override_settings(ALLOW_SIGNUP=False)
def test_signup_can_be_switched_off(api):
    response = api.post(URL, {"username": "ana", "password": PASSWORD}, format="json")
    assert response.status_code == 403
    assert error_code(response) == "signup_disabled"
    assert not get_user_model().objects.exists()


@override_settings(RATE_LIMITS=rate_limits(signup=(2, 3600)))
def test_signups_from_one_address_are_rate_limited(api):
    for i in range(2):
        assert api.post(URL, {"username": f"u{i}", "password": PASSWORD}, format="json").status_code == 201
    response = api.post(URL, {"username": "u3", "password": PASSWORD}, format="json")
    assert response.status_code == 429
    assert error_code(response) == "rate_limited"
    assert int(response["Retry-After"]) > 0


def test_unknown_api_path_is_404_in_the_envelope(api):
    response = api.get("/api/v1/nope")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_wrong_method_is_405_in_the_envelope(api):
    response = api.get(URL)
    assert response.status_code in (401, 405)
    error_code(response)
