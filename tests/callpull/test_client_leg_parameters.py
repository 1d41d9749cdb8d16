"""What a `client` leg tells the device's voice SDK about itself (docs/PROVIDER.md, "Client
legs' parameters"): callpull puts the leg's call, the leg and, for a move, its pull in the
`To` of the participant it adds (`client:<identity>?callpull_call=…&…`, Twilio's custom
parameters), and the web companion's Twilio voice client (voice-twilio.js) accepts only the
leg whose parameters name the answer or move it made. Both sides use the same names."""

import re
from pathlib import Path
from urllib.parse import urlencode

from callpull.legs import CLIENT_LEG_PARAMETERS
from callpull.models import CallLeg, Pull
from callpull.telephony.provider import participant_add as real_participant_add
from simulators.telephony.twiml import client_parameters
from tests.callpull.conftest import forward, join_leg, report
from tests.callpull.test_provider_actions import real_provider  # noqa: F401 (fixture)
from tests.conftest import client_for, make_device
from tests.simulator.conftest import sim, stack  # noqa: F401 (fixtures)
from tests.simulator.support import PUBLIC_URL, SERVER_NUMBER

VOICE_TWILIO = Path(__file__).resolve().parents[2] / "callpull" / "static" / "callpull" / "web" / "voice-twilio.js"


def js_leg_parameters() -> dict[str, str]:
    """voice-twilio.js's LEG_PARAMETERS: {call: "…", leg: "…", pull: "…"}."""
    source = VOICE_TWILIO.read_text()
    found = re.search(r"export const LEG_PARAMETERS = \{([^}]*)\};", source)
    assert found, "voice-twilio.js no longer exports LEG_PARAMETERS"
    return dict(re.findall(r'(\w+): "([^"]+)"', found.group(1)))


def test_the_names_callpull_attaches_are_the_names_the_browser_matches():
    names = js_leg_parameters()
    assert set(names) == {"call", "leg", "pull"}
    assert sorted(names.values()) == sorted(CLIENT_LEG_PARAMETERS)
    assert (names["call"], names["leg"], names["pull"]) == CLIENT_LEG_PARAMETERS


def test_an_answer_leg_names_its_call_and_itself_and_no_pull(client, handset_api, line, tablet, tablet_api, online,
                                                            fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    assert tablet_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    forward(client, sid="CA" + "1" * 32)
    leg = CallLeg.objects.get()
    assert fake_provider.parameters[str(leg.pk)] == {"callpull_call": call_id, "callpull_leg": str(leg.pk)}


def test_a_move_leg_names_the_pull_the_browser_was_answered_with(client, user, live_call, fake_provider):
    browser, token = make_device(user, kind="web", platform="web")  # reached at client:<voice_identity>
    response = client_for(token).post(f"/api/v1/calls/{live_call}/pull")
    assert response.status_code == 202, response.content
    pull_id = response.json()["pull"]["id"]
    leg = CallLeg.objects.get(device=browser)
    assert Pull.objects.get(pk=pull_id).leg_id == leg.pk
    assert fake_provider.parameters[str(leg.pk)] == {
        "callpull_call": live_call, "callpull_leg": str(leg.pk), "callpull_pull": pull_id}
    # The tablet's own leg (an answer) carried none of this pull.
    tablet_leg = CallLeg.objects.exclude(pk=leg.pk).get()
    assert "callpull_pull" not in fake_provider.parameters[str(tablet_leg.pk)]
    join_leg(client, live_call, fake_provider, label=str(leg.pk))


def test_a_number_or_sip_leg_carries_no_parameters(client, user, live_call, desktop_api, fake_provider):
    assert desktop_api.post(f"/api/v1/calls/{live_call}/pull").status_code == 202
    label = list(fake_provider.sids)[-1]
    assert fake_provider.parameters[label] is None


def test_the_parameters_travel_in_to_and_the_simulator_rings_the_identity_with_them(sim, real_provider):  # noqa: F811
    """Through the twilio SDK to the simulator: `To` is `client:<identity>?…`; the simulator
    rings the device registered at `client:<identity>` and hands it the parameters."""
    real_provider(sim.base_url + "/simulator")
    parameters = {"callpull_call": "c-1", "callpull_leg": "l-1", "callpull_pull": "p-1"}
    added = real_participant_add(
        conference="callpull-params", kind="client", address="dweb1", caller_id=SERVER_NUMBER, label="l-1",
        status_url=PUBLIC_URL + "/telephony/twilio/status", conference_status_url=PUBLIC_URL + "/conference",
        timeout=10, parameters=parameters)
    leg = sim.http.get(f"/simulator/calls/{added.call_sid}").json()
    assert leg["to"] == "client:dweb1"  # the identity the device registered, without the query
    assert leg["parameters"] == parameters  # only `To` carried them
    created = next(event for event in leg["events"] if event["event"] == "created")
    assert created["parameters"] == parameters


def test_parameters_are_form_encoded_in_to():
    """Values with reserved characters survive the trip (urlencode there, parse_qsl at the SDK)."""
    parameters = {"callpull_call": "a&b=c", "callpull_leg": "x y"}
    to = "client:dweb1?" + urlencode(parameters)
    assert client_parameters(to) == ("client:dweb1", parameters)
    assert client_parameters("client:dweb1") == ("client:dweb1", {})
    assert client_parameters("+15551234567") == ("+15551234567", {})
