"""Callbacks that only report state are tried again when the backend could not take
them (no answer, 502/503/504), honouring Retry-After; TwiML fetches never are. And
the call resource the backend's reconciliation reads (GET Calls/{sid}.json), through
the backend's own adapter (callpull.telephony.provider)."""

import pytest

from tests.simulator.support import CALLER, SERVER_NUMBER, eventually, until

VOICE = "/telephony/twilio/voice"
STATUS = "/telephony/twilio/status"
CONFERENCE = "/telephony/twilio/conference"
NOT_NOW = (503, "service unavailable, retry", {"Retry-After": "0"})


def scripted(*answers):
    """A backend answer that plays `answers` in turn, then repeats the last."""
    queue = list(answers)

    def answer(params):
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return answer


def ended_call(sim, twiml="<Response><Hangup/></Response>"):
    sim.backend.answers[VOICE] = lambda params: twiml
    sid = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    until(sim, sid, status="completed")
    return sid


def callbacks(sim, sid):
    return [event for event in sim.http.get(f"/simulator/calls/{sid}").json()["events"]
            if event["event"] == "callback"]


def test_a_status_callback_answered_503_is_sent_again_until_taken(sim):
    sim.backend.answers[STATUS] = scripted(NOT_NOW, NOT_NOW, (204, ""))
    sid = ended_call(sim)
    tries = eventually(lambda: _exactly(sim.backend.to(STATUS), 3))
    assert {request.params["CallStatus"] for request in tries} == {"completed"}
    assert len({request.headers["i-twilio-idempotency-token"] for request in tries}) == 1  # one event, retried
    assert all(request.signature_valid for request in tries)
    record = eventually(lambda: _exactly(callbacks(sim, sid), 3))
    assert [(event["status"], event.get("retry_in"), event.get("retry")) for event in record] == \
        [(503, 0.0, None), (503, 0.0, None), (204, None, 2)]


def test_a_backend_that_stays_unavailable_is_given_up_after_the_retries(sim):
    sim.backend.answers[STATUS] = lambda params: NOT_NOW
    sid = ended_call(sim)
    record = eventually(lambda: _final(callbacks(sim, sid)))
    assert [event["status"] for event in record] == [503] * 4  # the first try and three retries
    assert len(sim.backend.to(STATUS)) == 4


@pytest.mark.parametrize("answer", [(500, "boom"), (200, "<Response/>"), (204, ""), (404, "no")])
def test_other_answers_are_not_retried(sim, answer):
    sim.backend.answers[STATUS] = lambda params: answer
    sid = ended_call(sim)
    record = eventually(lambda: _exactly(callbacks(sim, sid), 1))
    assert record[0]["status"] == answer[0] and "retry" not in record[0]
    assert len(sim.backend.to(STATUS)) == 1


def test_conference_callbacks_are_retried_in_order(sim):
    room = ('<Response><Dial><Conference startConferenceOnEnter="true" endConferenceOnExit="true" '
            f'statusCallback="{CONFERENCE}" statusCallbackEvent="join leave end">room-1</Conference></Dial>'
            '</Response>')
    sim.backend.answers[CONFERENCE] = scripted(NOT_NOW, (204, ""))
    sim.backend.answers[VOICE] = lambda params: room
    sid = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    eventually(lambda: _exactly(sim.backend.to(CONFERENCE), 2))  # the caller's join: 503, then taken
    assert sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"}).status_code == 202
    events = eventually(lambda: _events_end_with(sim.backend.to(CONFERENCE), "conference-end"))
    assert events == ["participant-join", "participant-join", "participant-leave", "conference-end"]
    assert [request.params["SequenceNumber"] for request in sim.backend.to(CONFERENCE)][:2] == ["1", "1"]


def test_a_twiml_fetch_answered_503_is_not_retried(sim):
    sim.backend.answers[VOICE] = lambda params: NOT_NOW
    sid = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
    until(sim, sid, status="completed")
    assert len(sim.backend.to(VOICE)) == 1  # the caller heard "an application error has occurred"


def test_the_backends_adapter_reads_a_calls_status_and_an_unknown_call_is_none(sim, settings):
    from callpull.telephony import provider
    from tests.simulator.support import ACCOUNT_SID, AUTH_TOKEN

    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT_SID, AUTH_TOKEN
    settings.TWILIO_API_BASE = sim.base_url + "/simulator"
    provider._client.cache_clear()
    try:
        sim.backend.answers[VOICE] = lambda params: '<Response><Play loop="0">https://a.test/x.mp3</Play></Response>'
        live = sim.http.post("/simulator/calls", json={"from": CALLER, "to": SERVER_NUMBER}).json()["sid"]
        until(sim, live, activity="held")
        assert provider.call_status(live) == "in-progress"
        assert provider.call_status(ended_call(sim)) == "completed"
        assert provider.call_status("CA" + "0" * 32) is None
        settings.TWILIO_AUTH_TOKEN = "wrong"
        provider._client.cache_clear()
        with pytest.raises(provider.ProviderError):
            provider.call_status(live)
    finally:
        provider._client.cache_clear()


def _exactly(items, count):
    assert len(items) == count, items
    return items


def _final(record):
    assert record and "retry_in" not in record[-1], record
    return record


def _events_end_with(requests, last):
    events = [request.params["StatusCallbackEvent"] for request in requests]
    assert events and events[-1] == last, events
    return events
