"""The carrier: forwarding on busy by MMI code, and calls that ring, get rejected, forwarded or busy."""

import pytest

from tests.simulator.support import CALLER, LINE, SERVER_NUMBER, eventually


def mmi(sim, code, line=LINE):
    return sim.http.post("/simulator/carrier/mmi", json={"line": line, "code": code})


def test_forwarding_on_busy_is_registered_interrogated_and_erased(sim):
    assert mmi(sim, "*#67#").json() | {} == {
        "line": LINE, "code": "*#67#", "operation": "interrogation", "service": "cfb", "active": False,
        "target": None}
    registered = mmi(sim, f"**67*{SERVER_NUMBER}#")
    assert registered.status_code == 200
    assert registered.json()["active"] is True and registered.json()["operation"] == "registration"
    assert mmi(sim, "*#67#").json() | {"code": None} == {
        "line": LINE, "code": None, "operation": "interrogation", "service": "cfb", "active": True,
        "target": SERVER_NUMBER}
    assert mmi(sim, "*#67#", line="+15550005555").json()["active"] is False  # per line

    assert mmi(sim, "##67#").json()["active"] is False
    interrogated = mmi(sim, "*#67#").json()
    assert (interrogated["active"], interrogated["target"]) == (False, None)
    assert sim.http.get(f"/simulator/carrier/lines/{LINE}").json().items() >= {
        "line": LINE, "service": "cfb", "active": False, "target": None}.items()


def test_forwarding_can_be_deactivated_and_activated_again(sim):
    mmi(sim, f"**67*{SERVER_NUMBER}#")
    assert mmi(sim, "#67#").json() | {"code": None} == {
        "line": LINE, "code": None, "operation": "deactivation", "service": "cfb", "active": False,
        "target": SERVER_NUMBER}
    assert mmi(sim, "*67#").json()["active"] is True


@pytest.mark.parametrize("code", ["", "*#33#", "**67*#", "**67*5550100#", "*#67", "67", "##67*+15555550100#",
                                  "*67#"])
def test_bad_codes_are_refused_with_a_json_error(sim, code):
    response = mmi(sim, code)
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"code", "message", "fields"}


def test_a_bad_line_is_refused(sim):
    response = mmi(sim, "*#67#", line="5550001234")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_phone_number"


def ring(sim, caller=CALLER, **fields):
    response = sim.http.post("/simulator/carrier/calls", json={"line": LINE, "caller": caller, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_rejected_call_with_forwarding_reaches_the_server_number_with_forwarded_from(sim):
    mmi(sim, f"**67*{SERVER_NUMBER}#")
    call = ring(sim, caller_name="Ana")
    assert call["state"] == "ringing"

    rejected = sim.http.post(f"/simulator/carrier/calls/{call['id']}/reject").json()

    assert rejected["state"] == "forwarded"
    sid = rejected["provider_call_sid"]
    assert sid.startswith("CA") and len(sid) == 34
    voice = eventually(lambda: _one(sim.backend.to("/telephony/twilio/voice")))
    assert voice.signature_valid
    assert voice.params | {"AccountSid": None} == {
        "AccountSid": None, "CallSid": sid, "From": CALLER, "To": SERVER_NUMBER, "ForwardedFrom": LINE,
        "Caller": CALLER, "Called": SERVER_NUMBER, "CallStatus": "ringing", "Direction": "inbound",
        "ApiVersion": "2010-04-01", "CallerName": "Ana"}
    assert sim.http.get(f"/simulator/carrier/calls/{call['id']}").json()["provider_call_sid"] == sid


def test_a_withheld_caller_arrives_as_anonymous(sim):
    mmi(sim, f"**67*{SERVER_NUMBER}#")
    call = ring(sim, caller=None)
    sim.http.post(f"/simulator/carrier/calls/{call['id']}/reject")
    voice = eventually(lambda: _one(sim.backend.to("/telephony/twilio/voice")))
    assert voice.params["From"] == "anonymous"


def test_rejected_call_without_forwarding_is_busy_and_never_reaches_the_provider(sim):
    call = ring(sim)
    rejected = sim.http.post(f"/simulator/carrier/calls/{call['id']}/reject").json()
    assert (rejected["state"], rejected["provider_call_sid"]) == ("busy", None)
    assert sim.http.get("/simulator/calls").json() == []
    assert sim.backend.received == []


def test_a_call_answered_on_the_handset_stays_there(sim):
    mmi(sim, f"**67*{SERVER_NUMBER}#")
    call = ring(sim)
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/answer").json()["state"] == "answered_on_handset"
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/reject").status_code == 409
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/hangup").json()["state"] == "completed"
    assert sim.backend.received == []


def test_caller_giving_up_while_the_handset_rings_is_missed(sim):
    call = ring(sim)
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/hangup").json()["state"] == "missed"


def test_caller_hanging_up_a_forwarded_call_ends_the_provider_call(sim):
    mmi(sim, f"**67*{SERVER_NUMBER}#")
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: (
        '<Response><Play loop="0">ring.mp3</Play></Response>')
    call = ring(sim)
    sid = sim.http.post(f"/simulator/carrier/calls/{call['id']}/reject").json()["provider_call_sid"]
    eventually(lambda: _activity(sim, sid, "held"))

    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/hangup").json()["state"] == "completed"

    status = eventually(lambda: _one(sim.backend.to("/telephony/twilio/status")))
    assert (status.params["CallSid"], status.params["CallStatus"]) == (sid, "completed")
    assert sim.http.get(f"/simulator/carrier/calls/{call['id']}").json()["provider_call_status"] == "completed"


def test_unknown_carrier_call_is_404(sim):
    assert sim.http.get("/simulator/carrier/calls/nope").status_code == 404
    assert sim.http.post("/simulator/carrier/calls/nope/reject").status_code == 404


def _one(items):
    assert len(items) == 1, items
    return items[0]


def _activity(sim, sid, activity):
    leg = sim.http.get(f"/simulator/calls/{sid}").json()
    assert leg["activity"] == activity, leg
    return leg
