"""Twilio-shaped REST for live calls: redirect a held caller, hang up, place calls; Basic auth."""

import pytest
from twilio.rest import Client

from callpull.telephony.provider import ApiBaseHttpClient
from tests.simulator.support import ACCOUNT_SID, AUTH_TOKEN, CALLER, SERVER_NUMBER, eventually

VOICE = "/telephony/twilio/voice"
DIAL_STATUS = "/telephony/twilio/dial-status"
STATUS = "/telephony/twilio/status"
HOLD = '<Response><Play loop="0">https://assets.example.test/ringback.mp3</Play></Response>'
CALLS = f"/simulator/2010-04-01/Accounts/{ACCOUNT_SID}/Calls"


def rest(sim, method, path, *, auth=(ACCOUNT_SID, AUTH_TOKEN), **kwargs):
    return sim.http.request(method, path, auth=auth, **kwargs)


def held_call(sim):
    sim.backend.answers[VOICE] = lambda params: HOLD
    sid = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    eventually(lambda: _activity(sim, sid, "held"))
    return sid


def _activity(sim, sid, activity):
    leg = sim.http.get(f"/simulator/calls/{sid}").json()
    assert leg["activity"] == activity, leg
    return leg


def _status(sim, sid, status):
    leg = sim.http.get(f"/simulator/calls/{sid}").json()
    assert leg["status"] == status, leg
    return leg


def test_held_caller_is_redirected_to_new_twiml_fetched_from_url(sim):
    sid = held_call(sim)
    sim.backend.answers["/telephony/twilio/connect"] = lambda params: (
        '<Response><Dial action="/telephony/twilio/dial-status"><Client>tablet</Client></Dial></Response>')

    response = rest(sim, "POST", f"{CALLS}/{sid}.json",
                    data={"Url": "https://callpull.example.test/telephony/twilio/connect?call=42"})

    assert response.status_code == 200
    resource = response.json()
    assert (resource["sid"], resource["status"], resource["from"], resource["to"]) == (
        sid, "in-progress", CALLER, SERVER_NUMBER)
    assert resource["parent_call_sid"] is None and resource["account_sid"] == ACCOUNT_SID
    leg = eventually(lambda: _activity(sim, sid, "bridged"))
    [fetched] = sim.backend.to("/telephony/twilio/connect")
    assert fetched.signature_valid and fetched.url.endswith("/connect?call=42")
    assert fetched.params["CallSid"] == sid and fetched.params["CallStatus"] == "in-progress"
    assert [e["event"] for e in leg["events"]].count("play") == 1  # the hold did not start again
    assert leg["ended_at"] is None


def test_twiml_given_inline_is_executed_directly(sim):
    sid = held_call(sim)
    response = rest(sim, "POST", f"{CALLS}/{sid}.json", data={"Twiml": "<Response><Say>Bye</Say></Response>"})
    assert response.status_code == 200
    leg = eventually(lambda: _status(sim, sid, "completed"))
    assert [e["text"] for e in leg["events"] if e["event"] == "say"] == ["Bye"]


def test_redirect_during_a_dial_cancels_the_ringing_device_without_an_action(sim):
    sim.http.post("/simulator/devices", json={"address": "client:old", "behaviour": "no-answer"})
    sim.backend.answers[VOICE] = lambda params: (
        '<Response><Dial action="/telephony/twilio/dial-status"><Client statusCallback="/cb" '
        'statusCallbackEvent="initiated ringing answered completed">old</Client></Dial></Response>')
    sid = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    eventually(lambda: _activity(sim, sid, "dialing"))

    rest(sim, "POST", f"{CALLS}/{sid}.json", data={"Twiml": HOLD}).raise_for_status()

    eventually(lambda: _activity(sim, sid, "held"))
    assert [r.params["CallStatus"] for r in eventually(lambda: _three(sim.backend.to("/cb")))] == [
        "initiated", "ringing", "canceled"]
    assert sim.backend.to(DIAL_STATUS) == []


def test_redirect_while_bridged_completes_the_old_device_leg(sim):
    sim.backend.answers[VOICE] = lambda params: '<Response><Dial><Client>old</Client></Dial></Response>'
    sid = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    old = eventually(lambda: _activity(sim, sid, "bridged"))["children"][0]

    rest(sim, "POST", f"{CALLS}/{sid}.json",
         data={"Twiml": "<Response><Dial><Client>new</Client></Dial></Response>"}).raise_for_status()

    def bridged_to_the_new_device():
        leg = _activity(sim, sid, "bridged")
        assert len(leg["children"]) == 2
        return leg

    leg = eventually(bridged_to_the_new_device)
    assert sim.http.get(f"/simulator/calls/{old}").json()["status"] == "completed"
    assert sim.http.get(f"/simulator/calls/{leg['children'][1]}").json()["to"] == "client:new"
    assert leg["ended_at"] is None  # the caller never noticed


def test_status_completed_hangs_up_the_call(sim):
    sid = held_call(sim)
    response = rest(sim, "POST", f"{CALLS}/{sid}.json", data={"Status": "completed"})
    assert response.status_code == 200
    eventually(lambda: _status(sim, sid, "completed"))
    status = eventually(lambda: sim.backend.to(STATUS)[0])
    assert status.params["CallStatus"] == "completed" and status.signature_valid
    assert rest(sim, "GET", f"{CALLS}/{sid}.json").json()["status"] == "completed"
    again = rest(sim, "POST", f"{CALLS}/{sid}.json", data={"Url": "https://callpull.example.test/x"})
    assert again.status_code == 400 and again.json()["code"] == 21220


@pytest.mark.parametrize("auth", [None, (ACCOUNT_SID, "wrong"), ("AC" + "2" * 32, AUTH_TOKEN)])
def test_rest_needs_the_account_basic_auth(sim, auth):
    sid = held_call(sim)
    for method, path in [("POST", f"{CALLS}/{sid}.json"), ("GET", f"{CALLS}/{sid}.json"),
                         ("POST", f"{CALLS}.json")]:
        response = rest(sim, method, path, auth=auth, data={"Status": "completed"} if method == "POST" else None)
        assert response.status_code == 401
        assert response.json()["code"] == 20003
    assert _activity(sim, sid, "held")


def test_unknown_call_is_404(sim):
    response = rest(sim, "POST", f"{CALLS}/CA{'0' * 32}.json", data={"Status": "completed"})
    assert response.status_code == 404 and response.json()["code"] == 20404


def test_placing_a_call_rings_the_target_then_follows_its_url(sim):
    sim.backend.answers["/telephony/twilio/dial-in"] = lambda params: "<Response><Say>Welcome</Say></Response>"
    response = rest(sim, "POST", f"{CALLS}.json", data={
        "To": "client:tablet", "From": SERVER_NUMBER,
        "Url": "https://callpull.example.test/telephony/twilio/dial-in",
        "StatusCallback": "https://callpull.example.test/telephony/twilio/status",
        "StatusCallbackEvent": "initiated ringing answered completed"})
    assert response.status_code == 201
    sid = response.json()["sid"]
    assert response.json()["direction"] == "outbound-api"

    eventually(lambda: _status(sim, sid, "completed"))
    [fetched] = sim.backend.to("/telephony/twilio/dial-in")
    assert fetched.params["CallStatus"] == "in-progress" and fetched.params["To"] == "client:tablet"
    statuses = eventually(lambda: _four(sim.backend.to(STATUS)))
    assert [r.params["CallStatus"] for r in statuses] == ["initiated", "ringing", "in-progress", "completed"]


def test_the_twilio_sdk_can_drive_the_simulator(sim):
    sid = held_call(sim)
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=ApiBaseHttpClient(sim.base_url + "/simulator"))
    call = client.calls(sid).update(twiml="<Response><Hangup/></Response>")
    assert call.sid == sid
    eventually(lambda: _status(sim, sid, "completed"))
    assert client.calls(sid).fetch().status == "completed"


def test_unknown_simulator_paths_answer_json_404(sim):
    response = sim.http.get("/simulator/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert sim.http.get("/simulator/").json()["server_numbers"] == [SERVER_NUMBER]
    assert sim.http.put("/simulator/calls").status_code == 405


def _three(items):
    assert len(items) == 3, items
    return items


def _four(items):
    assert len(items) == 4, items
    return items
