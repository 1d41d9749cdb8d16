"""Calls the carrier forwards without any app: unconditional, handset off (not reachable), no
reply after the line's timer T, and simultaneous ring, where the first to answer wins.

The stack here runs the carrier's timer at SCALE: T=5 s lasts 0.1 s, T=30 s 0.6 s.
"""

import time

import pytest

from simulators.telephony.app import create_app
from tests.simulator.support import (
    AUTH_TOKEN,
    CALLER,
    LINE,
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

SCALE = 0.02
OTHER = "+15555550199"  # not a provider number: leaves the simulation
HELD = '<Response><Play loop="0">ring.mp3</Play></Response>'  # answers the call at once, as a ringback would
# Rings the device without answering the caller until it answers (answerOnBridge).
ON_BRIDGE = '<Response><Dial answerOnBridge="true" timeout="60"><Client>tab</Client></Dial></Response>'


@pytest.fixture(scope="module")
def stack():
    backend = FakeBackend(PUBLIC_URL, AUTH_TOKEN)
    simulator = create_app(make_config(PUBLIC_URL, carrier_timer_scale=SCALE), embedded=True)
    running = Stack(Mounted(simulator, backend)).start()
    running.backend = backend
    try:
        yield running
    finally:
        running.stop()


def mmi(sim, code):
    response = sim.http.post("/simulator/carrier/mmi", json={"line": LINE, "code": code})
    assert response.status_code == 200, response.text
    return response.json()


def ring(sim, caller=CALLER, **fields):
    response = sim.http.post("/simulator/carrier/calls", json={"line": LINE, "caller": caller, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def carrier_call(sim, call_id):
    return sim.http.get(f"/simulator/carrier/calls/{call_id}").json()


def until_carrier(sim, call_id, **expected):
    def check():
        current = carrier_call(sim, call_id)
        assert {key: current[key] for key in expected} == expected, current
        return current
    return eventually(check)


def voice_webhooks(sim):
    return sim.backend.to("/telephony/twilio/voice")


def handset(sim, state):
    response = sim.http.post(f"/simulator/carrier/lines/{LINE}/handset", json={"state": state})
    assert response.status_code == 200, response.text
    return response.json()


def simultaneous_ring(sim, number):
    response = sim.http.patch(f"/simulator/carrier/lines/{LINE}", json={"simultaneous_ring": number})
    assert response.status_code == 200, response.text
    return response.json()


def _forwarded_webhook(sim, sid):
    hooks = voice_webhooks(sim)
    assert len(hooks) == 1, hooks
    assert hooks[0].signature_valid
    assert (hooks[0].params["CallSid"], hooks[0].params["From"], hooks[0].params["To"],
            hooks[0].params["ForwardedFrom"]) == (sid, CALLER, SERVER_NUMBER, LINE)
    return hooks[0]


# Unconditional ----------------------------------------------------------------------

def test_always_forwards_at_once_and_the_handset_never_rings(sim):
    mmi(sim, f"**21*{SERVER_NUMBER}#")
    mmi(sim, f"**61*{OTHER}**5#")  # never reached: unconditional wins
    call = ring(sim, caller_name="Ana")
    assert (call["state"], call["forwarded_because"], call["handset_ringing"]) == ("forwarded", "always", False)
    assert "ringing" not in [event["event"] for event in call["events"]]
    hook = eventually(lambda: _forwarded_webhook(sim, call["provider_call_sid"]))
    assert hook.params["CallerName"] == "Ana"


def test_always_wins_over_a_handset_that_is_off(sim):
    mmi(sim, f"**21*{SERVER_NUMBER}#")
    mmi(sim, f"**62*{OTHER}#")
    handset(sim, "off")
    call = ring(sim)
    assert (call["forwarded_because"], call["forwarded_to"]) == ("always", SERVER_NUMBER)


# Not reachable ----------------------------------------------------------------------

def test_a_handset_that_is_off_forwards_when_unreachable_at_once(sim):
    mmi(sim, f"**62*{SERVER_NUMBER}#")
    assert handset(sim, "off")["handset"] == "off"
    call = ring(sim)
    assert (call["state"], call["forwarded_because"], call["handset_ringing"]) == \
           ("forwarded", "unreachable", False)
    eventually(lambda: _forwarded_webhook(sim, call["provider_call_sid"]))


def test_a_handset_that_is_off_without_forwarding_is_not_reachable(sim):
    mmi(sim, f"**67*{SERVER_NUMBER}#")  # busy forwarding does not help an unreachable handset
    handset(sim, "off")
    call = ring(sim)
    assert (call["state"], call["provider_call_sid"]) == ("not_reachable", None)
    assert call["ended_at"]
    assert sim.http.get("/simulator/calls").json() == []


def test_unreachable_forwarding_does_not_touch_a_handset_that_is_on(sim):
    mmi(sim, f"**62*{SERVER_NUMBER}#")
    handset(sim, "off")
    assert handset(sim, "on")["handset"] == "on"
    call = ring(sim)
    assert (call["state"], call["handset_ringing"]) == ("ringing", True)
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/hangup").json()["state"] == "missed"
    assert voice_webhooks(sim) == []


@pytest.mark.parametrize("body", [{"state": "standby"}, {}])
def test_a_bad_handset_state_is_refused(sim, body):
    response = sim.http.post(f"/simulator/carrier/lines/{LINE}/handset", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


# No reply ----------------------------------------------------------------------------

def test_no_reply_forwards_after_the_timer_and_the_handset_stops_ringing(sim):
    mmi(sim, f"**61*{SERVER_NUMBER}**5#")
    call = ring(sim)
    assert (call["state"], call["handset_ringing"]) == ("ringing", True)
    assert voice_webhooks(sim) == []
    forwarded = until_carrier(sim, call["id"], state="forwarded")
    assert (forwarded["forwarded_because"], forwarded["handset_ringing"]) == ("no_answer", False)
    eventually(lambda: _forwarded_webhook(sim, forwarded["provider_call_sid"]))
    names = [event["event"] for event in forwarded["events"]]
    assert names.index("no reply") < names.index("handset stops ringing") < names.index("forwarded"), names


def test_the_timer_is_the_lines_t(sim):
    mmi(sim, f"**61*{SERVER_NUMBER}**30#")  # 0.6 s here
    call = ring(sim)
    started = [event for event in call["events"] if event["event"] == "no-reply timer started"]
    assert [(event["timer"], event["seconds"]) for event in started] == [(30, pytest.approx(30 * SCALE))]
    forwarded = until_carrier(sim, call["id"], state="forwarded")
    assert forwarded["forwarded_because"] == "no_answer"


@pytest.mark.parametrize("action", ["answer", "reject", "hangup"])
def test_anything_done_before_the_timer_stops_it(sim, action):
    mmi(sim, f"**61*{OTHER}**5#")  # a number outside: a late forward would still show on the call
    call = ring(sim)
    done = sim.http.post(f"/simulator/carrier/calls/{call['id']}/{action}").json()
    assert done["state"] == {"answer": "answered_on_handset", "reject": "busy", "hangup": "missed"}[action]
    time.sleep(5 * SCALE * 3)  # well past T
    final = carrier_call(sim, call["id"])
    assert final["state"] == done["state"] and final["forwarded_to"] is None, final


def test_a_reject_before_the_timer_forwards_on_busy(sim):
    mmi(sim, f"**004*{SERVER_NUMBER}**30#")
    call = ring(sim)
    rejected = sim.http.post(f"/simulator/carrier/calls/{call['id']}/reject").json()
    assert (rejected["state"], rejected["forwarded_because"]) == ("forwarded", "busy")
    eventually(lambda: _forwarded_webhook(sim, rejected["provider_call_sid"]))
    time.sleep(30 * SCALE * 1.5)
    assert len(voice_webhooks(sim)) == 1  # the no-reply timer did not forward a second time


def test_deactivating_no_reply_while_it_rings_keeps_the_handset_ringing(sim):
    mmi(sim, f"**61*{SERVER_NUMBER}**10#")
    call = ring(sim)
    mmi(sim, "#61#")
    expired = until_carrier(sim, call["id"], state="ringing")
    eventually(lambda: _has_event(sim, call["id"], "no-reply timer expired"))
    assert expired["handset_ringing"] is True
    assert voice_webhooks(sim) == []


def _has_event(sim, call_id, name):
    current = carrier_call(sim, call_id)
    assert name in [event["event"] for event in current["events"]], current["events"]
    return current


def test_reset_cancels_the_timers(sim):
    mmi(sim, f"**61*{SERVER_NUMBER}**30#")
    ring(sim)
    sim.http.delete("/simulator/state").raise_for_status()
    time.sleep(30 * SCALE * 1.5)
    assert sim.http.get("/simulator/calls").json() == []
    assert voice_webhooks(sim) == []


# Simultaneous ring ---------------------------------------------------------------------

def test_simultaneous_ring_calls_the_server_number_at_once_while_the_handset_rings(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: ON_BRIDGE
    sim.http.post("/simulator/devices", json={"address": "client:tab", "behaviour": "no-answer"})
    assert simultaneous_ring(sim, SERVER_NUMBER)["simultaneous_ring"] == SERVER_NUMBER
    call = ring(sim)
    assert (call["state"], call["handset_ringing"], call["simultaneous_ring_to"]) == ("ringing", True, SERVER_NUMBER)
    sid = call["provider_call_sid"]
    eventually(lambda: _forwarded_webhook(sim, sid))
    until(sim, sid, status="ringing")  # the provider has not answered the caller


def test_the_handset_answering_first_hangs_the_parallel_call_up(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: ON_BRIDGE
    sim.http.post("/simulator/devices", json={"address": "client:tab", "behaviour": "no-answer"})
    simultaneous_ring(sim, SERVER_NUMBER)
    call = ring(sim)
    sid = call["provider_call_sid"]
    eventually(lambda: _forwarded_webhook(sim, sid))

    answered = sim.http.post(f"/simulator/carrier/calls/{call['id']}/answer").json()

    assert answered["state"] == "answered_on_handset"
    ended = eventually(lambda: _ended(sim, sid))
    assert ended["hung_up_by"] == "caller" and ended["answered_at"] is None
    status = eventually(lambda: _one(sim.backend.to("/telephony/twilio/status")))
    assert status.params["CallSid"] == sid and status.params["CallStatus"] in ("canceled", "completed")
    assert carrier_call(sim, call["id"])["state"] == "answered_on_handset"


def test_a_device_answering_through_the_provider_stops_the_handset_ringing(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: ON_BRIDGE
    sim.http.post("/simulator/devices", json={"address": "client:tab", "behaviour": "answer", "answer_after": 0.2})
    simultaneous_ring(sim, SERVER_NUMBER)
    call = ring(sim)
    forwarded = until_carrier(sim, call["id"], state="forwarded")
    assert (forwarded["forwarded_because"], forwarded["handset_ringing"]) == ("simultaneous_ring", False)
    assert leg(sim, call["provider_call_sid"])["answered_at"]
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/answer").status_code == 409  # it stopped
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/hangup").json()["state"] == "completed"
    until(sim, call["provider_call_sid"], status="completed")


def test_a_backend_that_answers_at_once_takes_the_call_from_the_handset_at_once(sim):
    """What Twilio does with TwiML that answers (a <Play>, a conference's wait music): the
    carrier sees the parallel call answered, so the handset stops ringing."""
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: HELD
    simultaneous_ring(sim, SERVER_NUMBER)
    call = ring(sim)
    forwarded = until_carrier(sim, call["id"], state="forwarded")
    assert (forwarded["forwarded_because"], forwarded["handset_ringing"]) == ("simultaneous_ring", False)


def test_a_parallel_call_ended_unanswered_leaves_the_handset_ringing(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: '<Response><Reject/></Response>'
    simultaneous_ring(sim, SERVER_NUMBER)
    call = ring(sim)
    current = eventually(lambda: _has_event(sim, call["id"], "simultaneous ring ended unanswered"))
    assert (current["state"], current["handset_ringing"]) == ("ringing", True)


def test_the_caller_hanging_up_ends_both(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: ON_BRIDGE
    sim.http.post("/simulator/devices", json={"address": "client:tab", "behaviour": "no-answer"})
    simultaneous_ring(sim, SERVER_NUMBER)
    call = ring(sim)
    eventually(lambda: _forwarded_webhook(sim, call["provider_call_sid"]))
    assert sim.http.post(f"/simulator/carrier/calls/{call['id']}/hangup").json()["state"] == "missed"
    assert eventually(lambda: _ended(sim, call["provider_call_sid"]))["hung_up_by"] == "caller"


def test_no_reply_with_the_parallel_call_to_the_same_number_makes_no_second_call(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: ON_BRIDGE
    sim.http.post("/simulator/devices", json={"address": "client:tab", "behaviour": "no-answer"})
    simultaneous_ring(sim, SERVER_NUMBER)
    mmi(sim, f"**61*{SERVER_NUMBER}**5#")
    call = ring(sim)
    forwarded = until_carrier(sim, call["id"], state="forwarded")
    assert (forwarded["forwarded_because"], forwarded["provider_call_sid"]) == ("no_answer", call["provider_call_sid"])
    assert leg(sim, call["provider_call_sid"])["ended_at"] is None
    assert len(voice_webhooks(sim)) == 1


def test_a_handset_that_is_off_leaves_the_parallel_call_ringing_alone(sim):
    sim.backend.answers["/telephony/twilio/voice"] = lambda params: ON_BRIDGE
    sim.http.post("/simulator/devices", json={"address": "client:tab", "behaviour": "no-answer"})
    simultaneous_ring(sim, SERVER_NUMBER)
    handset(sim, "off")
    call = ring(sim)
    assert (call["state"], call["forwarded_because"], call["handset_ringing"]) == \
           ("forwarded", "simultaneous_ring", False)
    eventually(lambda: _forwarded_webhook(sim, call["provider_call_sid"]))


def test_simultaneous_ring_is_switched_off_with_null_and_checked(sim):
    simultaneous_ring(sim, SERVER_NUMBER)
    assert simultaneous_ring(sim, None)["simultaneous_ring"] is None
    response = sim.http.patch(f"/simulator/carrier/lines/{LINE}", json={"simultaneous_ring": "555"})
    assert response.json()["error"]["code"] == "invalid_phone_number"
    response = sim.http.patch(f"/simulator/carrier/lines/{LINE}", json={"ring": SERVER_NUMBER})
    assert response.json()["error"]["code"] == "invalid_input"


def _ended(sim, sid):
    current = leg(sim, sid)
    assert current["ended_at"], current["status"]
    return current


def _one(items):
    assert len(items) == 1, items
    return items[0]
