"""The simulator refuses what Twilio refuses: its REST surface follows Twilio's API description.

Paths whose parameters break the description's patterns (a conference named by its
friendly name where only its SID is documented, an AccountSid that is not one),
missing required parameters, values outside an enum or a type: each is refused with
Twilio's error body. What the description does not list is ignored, and said so.
"""

from simulators.telephony.app import create_app
from tests.simulator.support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CALLER,
    PUBLIC_URL,
    SERVER_NUMBER,
    FakeBackend,
    Mounted,
    Stack,
    eventually,
    leg,
    make_config,
    until,
)

API = f"/2010-04-01/Accounts/{ACCOUNT_SID}"
VOICE = "/telephony/twilio/voice"
ROOM = "call-7"
CALLER_TWIML = (f'<Response><Dial><Conference startConferenceOnEnter="true" endConferenceOnExit="true" '
                f'beep="false" participantLabel="caller">{ROOM}</Conference></Dial></Response>')
HOLD = '<Response><Play loop="0">https://assets.example.test/ringback.mp3</Play></Response>'


def rest(sim, method, path, *, auth=(ACCOUNT_SID, AUTH_TOKEN), **kwargs):
    return sim.http.request(method, "/simulator" + path, auth=auth, **kwargs)


def twilio_error(response, status, code, path=None):
    """The body Twilio answers a refused request with, exactly."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}, body
    assert (body["code"], body["status"], body["more_info"]) == (
        code, status, f"https://www.twilio.com/docs/errors/{code}"), body
    if path is not None:
        assert body["message"] == f"The requested resource {path} was not found"
    return body


def incoming(sim, answer):
    sim.backend.answers[VOICE] = lambda params: answer
    response = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER})
    assert response.status_code == 201, response.text
    return response.json()["sid"]


def conference_with_device(sim):
    """A caller in conference ROOM, and a device added by friendly name (documented for a create)."""
    caller = incoming(sim, CALLER_TWIML)
    until(sim, caller, activity="conference-waiting")
    created = rest(sim, "POST", f"{API}/Conferences/{ROOM}/Participants.json",
                   data={"From": SERVER_NUMBER, "To": "client:tablet", "Label": "device-1"})
    assert created.status_code == 201, created.text
    device = created.json()
    until(sim, device["call_sid"], activity="conference")
    return caller, device


def test_a_participant_is_fetched_updated_and_removed_only_under_its_conference_sid(sim):
    caller, device = conference_with_device(sim)
    for who in (device["call_sid"], "device-1"):  # by CallSid or by label, as documented
        path = f"{API}/Conferences/{ROOM}/Participants/{who}.json"
        twilio_error(rest(sim, "GET", path), 404, 20404, path)
        twilio_error(rest(sim, "POST", path, data={"Muted": "true"}), 404, 20404, path)
        twilio_error(rest(sim, "DELETE", path), 404, 20404, path)
    listing = f"{API}/Conferences/{ROOM}/Participants.json"
    twilio_error(rest(sim, "GET", listing), 404, 20404, listing)
    record = leg(sim, device["call_sid"])
    assert record["conference"]["muted"] is False and record["ended_at"] is None  # nothing happened to it

    by_sid = f"{API}/Conferences/{device['conference_sid']}/Participants/device-1.json"
    assert rest(sim, "POST", by_sid, data={"Muted": "true"}).json()["muted"] is True
    assert rest(sim, "DELETE", by_sid).status_code == 204
    until(sim, device["call_sid"], status="completed")


def test_a_conference_is_fetched_only_by_its_sid(sim):
    conference_with_device(sim)
    for key in (ROOM, "CF" + "0" * 31, "CF" + "g" * 32):  # a name; one digit short; not hex
        path = f"{API}/Conferences/{key}.json"
        twilio_error(rest(sim, "GET", path), 404, 20404, path)
        twilio_error(rest(sim, "POST", path, data={"Status": "completed"}), 404, 20404, path)
    assert sim.http.get(f"/simulator/conferences/{ROOM}").json()["status"] == "in-progress"


def test_an_account_sid_off_its_pattern_is_not_found_even_with_its_credentials():
    """A simulator set up with an AccountSid Twilio never issues refuses it as Twilio would."""
    account = "ACnot-a-twilio-account-sid"
    backend = FakeBackend(PUBLIC_URL, AUTH_TOKEN)
    simulator = Stack(Mounted(create_app(make_config(PUBLIC_URL, account_sid=account), embedded=True),
                              backend)).start()
    try:
        for method, path in (("GET", f"/2010-04-01/Accounts/{account}/Calls.json"),
                             ("GET", f"/2010-04-01/Accounts/{account}/Conferences.json"),
                             ("POST", f"/2010-04-01/Accounts/{account}/Calls.json")):
            response = simulator.http.request(method, "/simulator" + path, auth=(account, AUTH_TOKEN),
                                              data={"To": "+15550001111", "From": SERVER_NUMBER,
                                                    "Url": PUBLIC_URL + VOICE} if method == "POST" else None)
            twilio_error(response, 404, 20404, path)
        assert simulator.http.get("/simulator/calls").json() == []  # no call was placed
    finally:
        simulator.stop()


def test_a_call_is_placed_only_with_to_and_from(sim):
    path = f"{API}/Calls.json"
    url = PUBLIC_URL + VOICE
    twilio_error(rest(sim, "POST", path, data={"From": SERVER_NUMBER, "Url": url}), 400, 21201)
    twilio_error(rest(sim, "POST", path, data={"To": "+15550001111", "From": "", "Url": url}), 400, 21213)
    twilio_error(rest(sim, "POST", path, data={"To": "+15550001111", "Url": url}), 400, 21213)
    twilio_error(rest(sim, "POST", f"{API}/Conferences/{ROOM}/Participants.json", data={"To": "client:x"}),
                 400, 21213)
    assert sim.http.get("/simulator/calls").json() == []


def test_values_outside_the_description_are_refused(sim):
    sid = incoming(sim, HOLD)
    until(sim, sid, activity="held")
    call = f"{API}/Calls/{sid}.json"
    twilio_error(rest(sim, "POST", call, data={"Status": "bogus"}), 400, 21200)
    twilio_error(rest(sim, "POST", call, data={"Status": "Completed"}), 400, 21200)  # enums are exact
    twilio_error(rest(sim, "POST", call, data={"Url": PUBLIC_URL + "/next", "Method": "PUT"}), 400, 21209)
    twilio_error(rest(sim, "POST", call, data={"Url": "/telephony/twilio/next"}), 400, 21205)  # not absolute
    twilio_error(rest(sim, "POST", call, data={"Url": PUBLIC_URL + "/next", "StatusCallbackMethod": "PUT"}),
                 400, 21200)
    twilio_error(rest(sim, "POST", call, data={"Url": PUBLIC_URL + "/next", "TimeLimit": "ten"}), 400, 21200)
    twilio_error(rest(sim, "GET", f"{API}/Calls.json", params={"Status": "live"}), 400, 21200)
    twilio_error(rest(sim, "GET", f"{API}/Calls.json", params={"PageSize": "0"}), 400, 21200)
    twilio_error(rest(sim, "GET", f"{API}/Conferences.json", params={"Status": "started"}), 400, 16002)
    twilio_error(rest(sim, "POST", f"{API}/Calls.json",
                      data={"To": "+15550001111", "From": SERVER_NUMBER, "Url": PUBLIC_URL + VOICE,
                            "Timeout": "2.5"}), 400, 21208)
    record = leg(sim, sid)
    assert record["ended_at"] is None and record["activity"] == "held"  # none of them touched the call
    assert [entry for entry in record["events"] if entry["event"] == "rest update"] == []


def test_participant_values_outside_the_description_are_refused(sim):
    caller, device = conference_with_device(sim)
    create = f"{API}/Conferences/{device['conference_sid']}/Participants.json"
    base = {"From": SERVER_NUMBER, "To": "client:other"}
    twilio_error(rest(sim, "POST", create, data=base | {"Muted": "yes"}), 400, 16002)
    twilio_error(rest(sim, "POST", create, data=base | {"WaitMethod": "PUT"}), 400, 16002)
    twilio_error(rest(sim, "POST", create, data=base | {"Label": "CA" + "a" * 32}), 400, 16024)  # like a CallSid
    twilio_error(rest(sim, "POST", create, data=base | {"Label": "a/b"}), 400, 16024)
    participant = f"{API}/Conferences/{device['conference_sid']}/Participants/device-1.json"
    twilio_error(rest(sim, "POST", participant, data={"Hold": "maybe"}), 400, 16002)
    twilio_error(rest(sim, "POST", participant, data={"CallSidToCoach": "CA123"}), 400, 16002)
    twilio_error(rest(sim, "POST", f"{API}/Conferences/{device['conference_sid']}.json",
                      data={"Status": "in-progress"}), 400, 16002)
    room = sim.http.get(f"/simulator/conferences/{device['conference_sid']}").json()
    assert [p["label"] for p in room["participants"]] == ["caller", "device-1"]
    assert room["participants"][1]["hold"] is False and room["status"] == "in-progress"


def test_a_method_twilio_does_not_document_is_refused_with_its_body(sim):
    sid = incoming(sim, HOLD)
    until(sim, sid, activity="held")
    response = rest(sim, "PUT", f"{API}/Calls/{sid}.json", data={"Status": "completed"})
    twilio_error(response, 405, 20004)
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    twilio_error(rest(sim, "DELETE", f"{API}/Calls/{sid}.json"), 405, 20004)  # Twilio's, not played
    path = f"{API}/Queues.json"
    twilio_error(rest(sim, "GET", path), 404, 20404, path)
    assert leg(sim, sid)["ended_at"] is None


def test_parameters_twilio_does_not_know_are_ignored_and_reported(sim):
    sid = incoming(sim, HOLD)
    until(sim, sid, activity="held")
    sim.backend.answers["/next"] = lambda params: "<Response><Say>Moved</Say><Pause length=\"30\"/></Response>"

    response = rest(sim, "POST", f"{API}/Calls/{sid}.json",
                    data={"Url": PUBLIC_URL + "/next", "Methd": "GET", "Twiml_": "<Response/>"})

    assert response.status_code == 200, response.text
    eventually(lambda: sim.backend.to("/next")[0])
    assert sim.backend.to("/next")[0].method == "POST"  # the misspelt Methd changed nothing
    reported = sim.http.get("/simulator/").json()["ignored_parameters"]
    assert {"operation": "UpdateCall", "parameter": "Methd"} in reported
    assert {"operation": "UpdateCall", "parameter": "Twiml_"} in reported


def test_create_call_prefers_url_over_twiml_and_update_refuses_both(sim):
    sim.backend.answers["/answer"] = lambda params: "<Response><Say>From the URL</Say></Response>"
    response = rest(sim, "POST", f"{API}/Calls.json",
                    data={"To": "+15550001111", "From": SERVER_NUMBER, "Url": PUBLIC_URL + "/answer",
                          "Twiml": "<Response><Say>Inline</Say></Response>"})
    assert response.status_code == 201, response.text
    placed = until(sim, response.json()["sid"], status="completed")
    assert placed["said"] == ["From the URL"]  # CreateCall: "then twiml parameter will be ignored"

    sid = incoming(sim, HOLD)
    until(sim, sid, activity="held")
    twilio_error(rest(sim, "POST", f"{API}/Calls/{sid}.json",
                      data={"Url": PUBLIC_URL + "/answer", "Twiml": "<Response><Hangup/></Response>"}), 400, 21200)
    assert leg(sim, sid)["ended_at"] is None


def test_lists_are_paged_as_twilio_pages_them(sim):
    sids = [incoming(sim, HOLD) for _ in range(3)]
    for sid in sids:
        until(sim, sid, activity="held")

    first = rest(sim, "GET", f"{API}/Calls.json", params={"Status": "in-progress", "PageSize": "2"}).json()
    second = rest(sim, "GET", first["next_page_uri"]).json()

    assert [call["sid"] for call in first["calls"] + second["calls"]] == sids[::-1]
    assert (first["page"], first["page_size"], first["start"], first["end"]) == (0, 2, 0, 1)
    assert (second["page"], second["start"], second["end"], second["next_page_uri"]) == (1, 2, 2, None)
    assert first["uri"] == first["first_page_uri"] == f"{API}/Calls.json?Status=in-progress&PageSize=2&Page=0"
    assert second["previous_page_uri"] == first["uri"] and first["previous_page_uri"] is None
    assert rest(sim, "GET", f"{API}/Calls.json", params={"To": "+15550000000"}).json()["calls"] == []
