"""The simulator signs exactly as twilio's own RequestValidator computes."""

import pytest
from twilio.request_validator import RequestValidator

from simulators.telephony.signature import is_valid, signature

CASES = [
    ("https://callpull.example.test/telephony/twilio/voice",
     {"CallSid": "CA" + "a" * 32, "From": "+15550009999", "To": "+15555550100", "ForwardedFrom": "+15550001234",
      "CallStatus": "ringing", "AccountSid": "AC" + "1" * 32, "Caller": "+15550009999"}),
    ("http://127.0.0.1:8000/telephony/twilio/dial-status?leg=CA123&attempt=2",
     {"DialCallStatus": "no-answer", "DialCallDuration": "0", "CallerName": "Zoë Ünïcode & co"}),
    ("https://example.test/status", {}),
    ("https://example.test/a?b=c d", {"Empty": "", "Space": " ", "Digits": "0123"}),
]


@pytest.mark.parametrize(("url", "params"), CASES)
def test_signature_matches_twilio_request_validator(url, params):
    token = "a secret auth token"
    assert signature(token, url, params) == RequestValidator(token).compute_signature(url, params)
    assert RequestValidator(token).validate(url, params, signature(token, url, params))


def test_signature_depends_on_token_url_and_every_parameter():
    url, params = CASES[0]
    reference = signature("token", url, params)
    assert signature("other", url, params) != reference
    assert signature("token", url + "?x=1", params) != reference
    assert signature("token", url, params | {"CallStatus": "completed"}) != reference
    assert is_valid("token", url, params, reference)
    assert not is_valid("token", url, params, None)


def test_every_webhook_the_simulator_sends_validates_with_twilio(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: (
        '<Response><Dial action="/telephony/twilio/dial-status?step=1" method="GET">'
        '<Client statusCallback="/telephony/twilio/dial-status?leg=1" '
        'statusCallbackEvent="initiated ringing answered completed">tablet</Client></Dial></Response>')
    sim.backend.answers["/telephony/twilio/dial-status"] = lambda params: "<Response><Hangup/></Response>"
    sim.http.post("/simulator/devices", json={"address": "client:tablet", "hangup_after": 0.05})
    leg = sim.http.post("/simulator/calls", json={"from": "+15550009999", "to": "+15555550100"}).json()

    from tests.simulator.support import eventually

    eventually(lambda: _assert_status_callback(sim))
    assert len(sim.backend.received) == 7  # voice, 4 child callbacks, action (GET), status
    assert all(request.signature_valid for request in sim.backend.received), sim.backend.received
    action = [r for r in sim.backend.received if r.method == "GET"]
    assert len(action) == 1 and action[0].params["CallSid"] == leg["sid"]
    assert action[0].params["step"] == "1" and action[0].params["DialCallStatus"] == "completed"


def _assert_status_callback(sim):
    assert sim.backend.to("/telephony/twilio/status")
