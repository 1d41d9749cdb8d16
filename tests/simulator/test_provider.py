"""The voice provider follows TwiML: <Dial> legs and their callbacks, holds, redirects, errors."""

from tests.simulator.support import CALLER, LINE, SERVER_NUMBER, eventually, leg, until

VOICE = "/telephony/twilio/voice"
DIAL_STATUS = "/telephony/twilio/dial-status"
STATUS = "/telephony/twilio/status"
EVERY_EVENT = 'statusCallbackEvent="initiated ringing answered completed"'


def dial(target="<Client statusCallback=\"/telephony/twilio/dial-status?leg=child\" "
                + EVERY_EVENT + ">tablet</Client>", timeout="5", extra=""):
    return f'<Response><Dial action="{DIAL_STATUS}" timeout="{timeout}"{extra}>{target}</Dial></Response>'


def incoming(sim, **fields):
    response = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER,
                                                       "forwarded_from": LINE, **fields})
    assert response.status_code == 201, response.text
    return response.json()["sid"]




def child_callbacks(sim):
    return [r.params for r in sim.backend.to(DIAL_STATUS) if r.params.get("CallbackSource")]


def actions(sim):
    return [r.params for r in sim.backend.to(DIAL_STATUS) if "DialCallStatus" in r.params]


def test_answered_dial_sends_child_callbacks_then_the_action_after_the_device_hangs_up(sim):
    sim.backend.answers[VOICE] = lambda params: dial()
    sim.backend.answers[DIAL_STATUS] = lambda params: "<Response><Hangup/></Response>"
    sid = incoming(sim)
    parent = until(sim, sid, activity="bridged")
    child_sid = parent["children"][0]

    assert sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "device"}).status_code == 202

    until(sim, sid, status="completed")
    status = eventually(lambda: sim.backend.to(STATUS)[0])
    callbacks = child_callbacks(sim)
    assert [c["CallStatus"] for c in callbacks] == ["initiated", "ringing", "in-progress", "completed"]
    assert [c["SequenceNumber"] for c in callbacks] == ["0", "1", "2", "3"]
    for callback in callbacks:
        assert callback["CallSid"] == child_sid and callback["ParentCallSid"] == sid
        assert (callback["To"], callback["From"]) == ("client:tablet", CALLER)
        assert callback["Timestamp"] and callback["AccountSid"].startswith("AC")
    [action] = actions(sim)
    assert (action["CallSid"], action["DialCallSid"], action["DialCallStatus"]) == (sid, child_sid, "completed")
    assert action["DialCallDuration"] == "0"
    assert (status.params["CallSid"], status.params["CallStatus"]) == (sid, "completed")
    assert status.params["From"] == CALLER and status.params["To"] == SERVER_NUMBER
    order = [r.params.get("CallStatus") if r.path != STATUS else "parent" for r in sim.backend.received[1:]]
    assert order == ["initiated", "ringing", "in-progress", "completed", "in-progress", "parent"]
    assert leg(sim, child_sid)["hung_up_by"] == "device"


def test_a_device_that_does_not_answer_gives_no_answer(sim):
    sim.http.post("/simulator/devices", json={"address": "client:tablet", "behaviour": "no-answer"})
    sim.backend.answers[VOICE] = lambda params: dial(timeout="0.3")
    sim.backend.answers[DIAL_STATUS] = lambda params: "<Response><Say>Nobody is there.</Say></Response>"
    sid = incoming(sim)

    parent = until(sim, sid, status="completed")

    [action] = actions(sim)
    assert action["DialCallStatus"] == "no-answer" and action["CallStatus"] == "in-progress"
    assert [c["CallStatus"] for c in child_callbacks(sim)] == ["initiated", "ringing", "no-answer"]
    assert leg(sim, parent["children"][0])["status"] == "no-answer"
    assert [e["text"] for e in parent["events"] if e["event"] == "say"] == ["Nobody is there."]


def test_a_device_slower_than_the_dial_timeout_gives_no_answer(sim):
    sim.http.post("/simulator/devices", json={"address": "tablet", "answer_after": 2})
    sim.backend.answers[VOICE] = lambda params: dial(timeout="0.2")
    sid = incoming(sim)
    until(sim, sid, status="completed")
    assert actions(sim)[0]["DialCallStatus"] == "no-answer"


def test_a_busy_device_gives_busy(sim):
    sim.http.post("/simulator/devices", json={"address": "+15550007777", "behaviour": "busy"})
    sim.backend.answers[VOICE] = lambda params: (
        "<Response><Dial action='/telephony/twilio/dial-status'>+15550007777</Dial></Response>")
    sid = incoming(sim)
    until(sim, sid, status="completed")
    assert actions(sim)[0]["DialCallStatus"] == "busy"


def test_without_action_the_document_goes_on_after_the_dial(sim):
    sim.http.post("/simulator/devices", json={"address": "sip:desk@example.test", "behaviour": "fail"})
    sim.backend.answers[VOICE] = lambda params: (
        "<Response><Dial><Sip>sip:desk@example.test</Sip></Dial><Say>After the dial.</Say></Response>")
    sid = incoming(sim)
    parent = until(sim, sid, status="completed")
    events = [e for e in parent["events"] if e["event"] != "callback"]
    assert [e["event"] for e in events][-3:] == ["dial_ended", "say", "ended"]
    assert events[-3]["dial_call_status"] == "failed"


def test_caller_hanging_up_while_the_device_rings_cancels_it_and_still_requests_the_action(sim):
    sim.http.post("/simulator/devices", json={"address": "client:tablet", "behaviour": "no-answer"})
    sim.backend.answers[VOICE] = lambda params: dial(extra=' answerOnBridge="true"')
    sid = incoming(sim)
    until(sim, sid, activity="dialing")

    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"})

    parent = until(sim, sid, status="canceled")
    assert [c["CallStatus"] for c in child_callbacks(sim)] == ["initiated", "ringing", "canceled"]
    [action] = actions(sim)
    assert (action["DialCallStatus"], action["CallStatus"]) == ("canceled", "completed")
    assert eventually(lambda: sim.backend.to(STATUS)[0]).params["CallStatus"] == "canceled"
    assert parent["hung_up_by"] == "caller"


def test_caller_hanging_up_while_bridged_completes_both_legs(sim):
    sim.backend.answers[VOICE] = lambda params: dial()
    sid = incoming(sim)
    until(sim, sid, activity="bridged")
    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"})
    parent = until(sim, sid, status="completed")
    assert leg(sim, parent["children"][0])["status"] == "completed"
    assert actions(sim)[0]["DialCallStatus"] == "completed"


def test_a_held_caller_stays_held_until_something_else_happens(sim):
    sim.backend.answers[VOICE] = lambda params: (
        '<Response><Say>Please hold.</Say><Play loop="0">ringback.mp3</Play></Response>')
    sid = incoming(sim)
    held = until(sim, sid, activity="held")
    assert held["status"] == "in-progress" and held["ended_at"] is None
    assert sim.backend.to(STATUS) == []


def test_a_retried_webhook_reposts_the_same_call_sid(sim):
    sim.backend.answers[VOICE] = lambda params: "<Response><Hangup/></Response>"
    sid = incoming(sim, retry_webhook=True)
    until(sim, sid, status="completed")
    voice = sim.backend.to(VOICE)
    assert [r.params["CallSid"] for r in voice] == [sid, sid]
    assert voice[0].headers["i-twilio-idempotency-token"] == voice[1].headers["i-twilio-idempotency-token"]


def test_an_error_page_or_invalid_twiml_ends_the_call_with_an_application_error(sim):
    sim.backend.answers[VOICE] = lambda params: (500, "<html>oops</html>")
    sid = incoming(sim)
    parent = until(sim, sid, status="completed")
    assert any(e["event"] == "error" for e in parent["events"])

    sim.backend.answers[VOICE] = lambda params: "<Response><Record/></Response>"
    sid = incoming(sim)
    parent = until(sim, sid, status="completed")
    assert "<Record> is not supported" in [e for e in parent["events"] if e["event"] == "error"][0]["message"]


def test_reject_ends_an_unanswered_call_busy(sim):
    sim.backend.answers[VOICE] = lambda params: '<Response><Reject reason="busy"/></Response>'
    sid = incoming(sim)
    until(sim, sid, status="busy")
    assert eventually(lambda: sim.backend.to(STATUS)[0]).params["CallStatus"] == "busy"


def test_redirect_verb_fetches_the_next_document(sim):
    sim.backend.answers[VOICE] = lambda params: '<Response><Redirect method="GET">/next?x=1</Redirect></Response>'
    sim.backend.answers["/next"] = lambda params: "<Response><Say>next</Say></Response>"
    sid = incoming(sim)
    until(sim, sid, status="completed")
    [fetched] = sim.backend.to("/next")
    assert fetched.method == "GET" and fetched.params["x"] == "1" and fetched.params["CallSid"] == sid
    assert fetched.signature_valid


def test_only_server_numbers_take_calls(sim):
    response = sim.http.post("/simulator/calls", json={"from": CALLER, "to": "+15550004444"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "not_a_server_number"


def test_hanging_up_an_unknown_or_ended_call(sim):
    assert sim.http.post("/simulator/calls/CAnope/hangup", json={"party": "caller"}).status_code == 404
    sim.backend.answers[VOICE] = lambda params: "<Response><Hangup/></Response>"
    sid = incoming(sim)
    until(sim, sid, status="completed")
    assert sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"}).status_code == 409
    assert sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "nobody"}).status_code == 400
