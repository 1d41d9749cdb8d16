import uuid

import pytest
from django.test import override_settings

from callpull.models import Line
from tests.conftest import error_code, make_device, make_user

pytestmark = pytest.mark.django_db
URL = "/api/v1/lines"


def register(client, number="+15551234567", **extra):
    return client.post(URL, {"number": number, **extra}, format="json")


def test_handset_registers_its_line_and_gets_the_cfb_codes(handset_api):
    response = register(handset_api)
    assert response.status_code == 201
    body = response.json()
    assert body["number"] == "+15551234567"
    assert body["server_number"] == "+15555550100"
    assert body["policy"] == "on_answer"
    assert body["forwarding"] == {"state": "unverified", "target": None, "verified_at": None}
    assert body["mmi"] == {"register": "**67*+15555550100#", "interrogate": "*#67#", "erase": "##67#"}


def test_a_national_number_with_region_comes_back_in_e164(handset_api):
    response = register(handset_api, number="030 1234567", region="DE")
    assert response.status_code == 201
    assert response.json()["number"] == "+49301234567"


@pytest.mark.parametrize("body,field", [
    ({"number": "hello"}, "number"),
    ({"number": "555 1234"}, "number"),           # national without region
    ({"number": "+1 555"}, "number"),             # too short to be possible
    ({"number": "5551234567", "region": "XX1"}, "region"),
    ({}, "number"),
])
def test_unparseable_numbers_are_400(handset_api, body, field):
    response = handset_api.post(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_registering_the_same_number_again_returns_the_line(handset_api):
    first = register(handset_api).json()
    again = register(handset_api, number="(555) 123-4567", region="us")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert Line.objects.count() == 1


def test_a_number_of_another_user_is_409(handset_api, stranger):
    register(handset_api)
    response = register(stranger[1])
    assert response.status_code == 409
    assert error_code(response) == "line_taken"


def test_a_tablet_cannot_register_a_line(tablet_api):
    response = register(tablet_api)
    assert response.status_code == 403
    assert error_code(response) == "handset_only"


def test_no_token_is_401_not_403(api):
    assert register(api).status_code == 401


@override_settings(SERVER_NUMBERS=["+15555550100", "+15555550101", "+15555550102"])
def test_lines_are_spread_across_the_server_number_pool(db):
    assigned = []
    for i in range(6):
        _, token = make_device(make_user(), kind="handset")
        from tests.conftest import client_for
        assigned.append(register(client_for(token), number=f"+1555123450{i}").json()["server_number"])
    assert sorted(assigned) == sorted(["+15555550100", "+15555550101", "+15555550102"] * 2)


def test_any_device_of_the_user_lists_and_reads_lines(handset_api, tablet_api, stranger):
    line = register(handset_api).json()
    assert [listed["id"] for listed in tablet_api.get(URL).json()] == [line["id"]]
    assert tablet_api.get(f"{URL}/{line['id']}").json()["number"] == "+15551234567"
    assert stranger[1].get(URL).json() == []


@pytest.mark.parametrize("method", ["get", "patch"])
def test_other_users_lines_are_404(handset_api, stranger, method):
    line = register(handset_api).json()
    response = getattr(stranger[1], method)(f"{URL}/{line['id']}", {"policy": "immediate"}, format="json")
    assert response.status_code == 404
    assert Line.objects.get().policy == "on_answer"


def test_unknown_line_is_404(tablet_api):
    assert tablet_api.get(f"{URL}/{uuid.uuid4()}").status_code == 404
    assert tablet_api.get(f"{URL}/zzz").status_code == 404


def test_policy_and_fallback_are_editable(handset_api, tablet_api):
    line = register(handset_api).json()
    response = tablet_api.patch(f"{URL}/{line['id']}", {"policy": "immediate", "fallback_number": "+15550009999"},
                                format="json")
    assert response.status_code == 200
    assert response.json()["policy"] == "immediate"
    assert response.json()["fallback_number"] == "+15550009999"
    bad = tablet_api.patch(f"{URL}/{line['id']}", {"policy": "whenever"}, format="json")
    assert bad.status_code == 400
    assert "policy" in bad.json()["error"]["fields"]


def forwarding(client, line_id, **body):
    return client.post(f"{URL}/{line_id}/forwarding", body, format="json")


def test_forwarding_to_the_server_number_is_active(handset_api):
    line = register(handset_api).json()
    response = forwarding(handset_api, line["id"], state="active", target="+15555550100")
    assert response.status_code == 200
    assert response.json()["forwarding"]["state"] == "active"
    assert response.json()["forwarding"]["target"] == "+15555550100"
    assert response.json()["forwarding"]["verified_at"]


def test_forwarding_written_nationally_still_matches(handset_api):
    line = register(handset_api).json()
    response = forwarding(handset_api, line["id"], state="active", target="1 (555) 555-0100")
    assert response.status_code == 400  # no region on this line: ambiguous
    line = register(handset_api, number="5551112222", region="US").json()
    response = forwarding(handset_api, line["id"], state="active", target="(555) 555-0100")
    assert response.json()["forwarding"]["state"] == "active"


def test_forwarding_elsewhere_is_a_mismatch(handset_api):
    line = register(handset_api).json()
    response = forwarding(handset_api, line["id"], state="active", target="+15550001111")
    assert response.json()["forwarding"]["state"] == "mismatch"


def test_forwarding_reported_off_is_inactive(handset_api):
    line = register(handset_api).json()
    forwarding(handset_api, line["id"], state="active", target="+15555550100")
    response = forwarding(handset_api, line["id"], state="inactive")
    assert response.json()["forwarding"]["state"] == "inactive"


@pytest.mark.parametrize("body,field", [
    ({"state": "active"}, "target"),
    ({"state": "mismatch", "target": "+15555550100"}, "state"),
    ({"state": "active", "target": "nope"}, "target"),
])
def test_bad_forwarding_reports_are_400(handset_api, body, field):
    line = register(handset_api).json()
    response = forwarding(handset_api, line["id"], **body)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_only_the_handset_reports_forwarding(handset_api, tablet_api):
    line = register(handset_api).json()
    response = forwarding(tablet_api, line["id"], state="active", target="+15555550100")
    assert response.status_code == 403
    assert error_code(response) == "handset_only"


def test_forwarding_of_another_users_line_is_404(handset_api, stranger):
    line = register(handset_api).json()
    response = forwarding(stranger[1], line["id"], state="inactive")
    assert response.status_code == 404
    assert Line.objects.get().forwarding_state == "unverified"
