"""<Gather> collects keys the test presses (POST /simulator/calls/{sid}/digits); dial-in callers."""

from tests.simulator.support import CALLER, SERVER_NUMBER, until, until_event

VOICE = "/telephony/twilio/voice"
MENU = "/telephony/twilio/menu"


def incoming(sim, caller=CALLER):
    response = sim.http.post("/simulator/calls", json={"from": caller, "to": SERVER_NUMBER})
    assert response.status_code == 201, response.text
    return response.json()["sid"]



def press(sim, sid, digits):
    return sim.http.post(f"/simulator/calls/{sid}/digits", json={"digits": digits})


def menu(attributes='numDigits="1" timeout="3"'):
    return (f'<Response><Gather action="{MENU}" {attributes}><Say>Press 1 to talk.</Say><Pause length="5"/>'
            '</Gather><Say>We did not hear you.</Say></Response>')


def test_digits_are_posted_to_the_action_and_its_twiml_followed(sim):
    sim.backend.answers[VOICE] = lambda params: menu()
    sim.backend.answers[MENU] = lambda params: f"<Response><Say>You pressed {params['Digits']}.</Say></Response>"
    sid = incoming(sim)
    until(sim, sid, activity="gathering")

    response = press(sim, sid, "1")

    assert response.status_code == 202
    record = until(sim, sid, status="completed")
    [action] = sim.backend.to(MENU)
    assert action.params["Digits"] == "1" and action.params["CallSid"] == sid and action.signature_valid
    assert action.params["CallStatus"] == "in-progress" and action.params["From"] == CALLER
    assert record["said"] == ["Press 1 to talk.", "You pressed 1."]  # the <Pause> was cut short, no fallback
    assert record["digits"] == ["1"]
    [ended] = [e for e in record["events"] if e["event"] == "gather_ended"]
    assert (ended["digits"], ended["reason"]) == ("1", "num_digits")


def test_keys_until_the_finish_key(sim):
    sim.backend.answers[VOICE] = lambda params: menu('timeout="3"')
    sid = incoming(sim)
    until(sim, sid, activity="gathering")
    press(sim, sid, "4")
    press(sim, sid, "2#")
    until(sim, sid, status="completed")
    [action] = sim.backend.to(MENU)
    assert (action.params["Digits"], action.params["FinishedOnKey"]) == ("42", "#")


def test_no_keys_within_the_timeout_goes_on_after_the_gather(sim):
    sim.backend.answers[VOICE] = lambda params: menu('numDigits="1" timeout="0.2"').replace(
        '<Pause length="5"/>', "")
    sid = incoming(sim)
    record = until(sim, sid, status="completed")
    assert sim.backend.to(MENU) == []
    assert record["said"] == ["Press 1 to talk.", "We did not hear you."]
    assert [e["reason"] for e in record["events"] if e["event"] == "gather_ended"] == ["timeout"]


def test_without_action_the_keys_go_to_the_current_document(sim):
    sim.backend.answers[VOICE] = lambda params: (
        "<Response><Say>Thanks.</Say></Response>" if "Digits" in params else
        '<Response><Gather numDigits="2" method="POST"><Say>Two digits.</Say></Gather></Response>')
    sid = incoming(sim)
    until(sim, sid, activity="gathering")
    press(sim, sid, "123")
    record = until(sim, sid, status="completed")
    assert [r.params.get("Digits") for r in sim.backend.to(VOICE)] == [None, "12"]
    assert record["said"] == ["Two digits.", "Thanks."]
    assert [e["digits"] for e in record["events"] if e["event"] == "digits_ignored"] == ["3"]


def test_keys_nobody_listens_for_are_refused(sim):
    sim.backend.answers[VOICE] = lambda params: '<Response><Play loop="0">hold.mp3</Play></Response>'
    sid = incoming(sim)
    until(sim, sid, activity="held")
    refused = press(sim, sid, "1")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_gathering"
    assert press(sim, sid, "12a").status_code == 400
    assert press(sim, "CAnope", "1").status_code == 404


def test_a_caller_hanging_up_during_a_gather_posts_nothing(sim):
    sim.backend.answers[VOICE] = lambda params: menu()
    sid = incoming(sim)
    until(sim, sid, activity="gathering")
    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"})
    record = until(sim, sid, status="completed")
    assert sim.backend.to(MENU) == [] and record["said"] == ["Press 1 to talk."]


def test_a_withheld_caller_dials_in_picks_from_a_menu_and_waits_in_a_conference(sim):
    sim.backend.answers[VOICE] = lambda params: (
        '<Response><Say>Welcome.</Say><Gather numDigits="1" action="/telephony/twilio/pick">'
        "<Say>Press 2 for the desk.</Say></Gather></Response>")
    sim.backend.answers["/telephony/twilio/pick"] = lambda params: (
        '<Response><Dial><Conference waitUrl="/static/ringback.wav" waitMethod="GET">desk</Conference></Dial>'
        "</Response>")
    sid = incoming(sim, caller="anonymous")
    until(sim, sid, activity="gathering")
    press(sim, sid, "2")

    until(sim, sid, activity="conference-waiting")
    record = until_event(sim, sid, "wait_audio")

    assert sim.backend.to(VOICE)[0].params["From"] == "anonymous" and record["from"] == "anonymous"
    steps = [e["event"] for e in record["events"] if e["event"] not in ("callback",)]
    assert steps == ["incoming", "webhook", "answered", "say", "gather", "say", "digits", "gather_ended", "webhook",
                     "dial", "conference_joined", "wait_audio"]
    assert record["events"][steps.index("wait_audio")]["url"] == "https://callpull.example.test/static/ringback.wav"
    assert record["conference"]["friendly_name"] == "desk"
    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"})
    until(sim, sid, status="completed")
    assert sim.http.get("/simulator/conferences/desk").json()["reason_conference_ended"] == "last-participant-left"


def test_any_e164_caller_or_anonymous_can_dial_in_but_not_garbage(sim):
    assert sim.http.post("/simulator/calls", json={"from": "+442071838750", "to": SERVER_NUMBER}).status_code == 201
    assert sim.http.post("/simulator/calls", json={"from": "Anonymous", "to": SERVER_NUMBER}).json()["from"] == \
        "anonymous"
    assert sim.http.post("/simulator/calls", json={"from": "12345", "to": SERVER_NUMBER}).status_code == 400


def test_action_on_empty_result_posts_empty_digits_signed(sim):
    sim.backend.answers[VOICE] = lambda params: menu('timeout="0.1" actionOnEmptyResult="true"').replace(
        '<Pause length="5"/>', "")
    sid = incoming(sim)
    record = until(sim, sid, status="completed")
    [action] = sim.backend.to(MENU)
    assert action.params["Digits"] == "" and "FinishedOnKey" not in action.params and action.signature_valid
    assert record["said"] == ["Press 1 to talk."]
