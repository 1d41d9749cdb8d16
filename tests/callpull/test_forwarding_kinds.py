"""A line's forwarding kinds, their codes per carrier profile, and calls the network
forwards with no ring report (issue 18; docs/FORWARDING.md, docs/CALLS.md
"Network-forwarded calls"). End to end: tests/e2e/test_network_forwarding.py."""

import uuid
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.utils import timezone

from callpull import mmi
from callpull import services as line_services
from callpull.models import Call, Line
from callpull.sweeper import calls_sweep
from tests.callpull.conftest import forward, report, signed_post
from tests.conftest import error_code, make_device

pytestmark = pytest.mark.django_db
SERVER = "+15555550100"
CALLER = "+15550009999"
SID = "CA" + "4" * 32
FALLBACK = "+15550007777"


def xml(response):
    assert response.status_code == 200, response.content
    return ElementTree.fromstring(response.content)


def conference_of(root) -> str | None:
    room = root.find("Dial/Conference")
    return room.text if room is not None else None


def set_kind(api, line, **body):
    return api.post(f"/api/v1/lines/{line.pk}/forwarding", body, format="json")


@pytest.fixture
def no_answer_line(line):
    """The conftest's line (busy active) with forwarding on no answer active too."""
    return line_services.line_forwarding_confirm(line=line, kind="no_answer", state="active", target=SERVER,
                                                 timer=15, now=timezone.now())


# The line's kinds and codes ---------------------------------------------------------

def test_a_line_shows_every_kind_and_its_codes_and_keeps_forwarding_and_mmi_as_the_busy_kind(handset_api, line):
    body = handset_api.get(f"/api/v1/lines/{line.pk}").json()
    assert body["carrier_profile"] == "3gpp"
    assert body["forwarding_kinds"]["busy"] == body["forwarding"]
    assert body["forwarding"]["state"] == "active"
    assert body["forwarding_kinds"]["no_answer"] == {"state": "unverified", "target": None, "verified_at": None,
                                                     "timer": None}
    assert body["forwarding_kinds"]["unreachable"]["state"] == body["forwarding_kinds"]["always"]["state"] == \
        "unverified"
    assert body["mmi"] == body["codes"]["busy"] == {"register": f"**67*{SERVER}#", "interrogate": "*#67#",
                                                    "erase": "##67#"}
    assert body["codes"]["no_answer"] == {"register": f"**61*{SERVER}**20#", "interrogate": "*#61#",
                                          "erase": "##61#"}
    assert body["codes"]["unreachable"]["register"] == f"**62*{SERVER}#"
    assert body["codes"]["always"] == {"register": f"**21*{SERVER}#", "interrogate": "*#21#", "erase": "##21#"}
    assert body["codes"]["conditional"] == {"register": f"**004*{SERVER}**20#", "interrogate": "*#004#",
                                            "erase": "##004#"}


def test_the_handset_reports_no_answer_with_its_timer(handset_api, line):
    response = set_kind(handset_api, line, kind="no_answer", state="active", target=SERVER, timer=10)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["forwarding_kinds"]["no_answer"]["state"] == "active"
    assert body["forwarding_kinds"]["no_answer"]["timer"] == 10
    assert body["codes"]["no_answer"]["register"] == f"**61*{SERVER}**10#"
    assert body["forwarding"]["state"] == "active"  # busy untouched


def test_conditional_sets_busy_no_answer_and_unreachable_but_not_always(handset_api, line):
    body = set_kind(handset_api, line, kind="conditional", state="active", target="+15550001111").json()
    kinds = body["forwarding_kinds"]
    assert [kinds[k]["state"] for k in ("busy", "no_answer", "unreachable", "always")] == \
        ["mismatch", "mismatch", "mismatch", "unverified"]
    assert kinds["busy"]["target"] == "+15550001111" and body["forwarding"] == kinds["busy"]


def test_without_a_kind_the_report_is_the_busy_kind_as_before(handset_api, line):
    body = set_kind(handset_api, line, state="inactive").json()
    assert body["forwarding"]["state"] == "inactive"
    assert body["forwarding_kinds"]["no_answer"]["state"] == "unverified"
    assert Line.objects.get(pk=line.pk).forwarding_state == "inactive"


@pytest.mark.parametrize("body, field", [
    ({"kind": "sometimes", "state": "active", "target": SERVER}, "kind"),
    ({"kind": "no_answer", "state": "active", "target": SERVER, "timer": 7}, "timer"),
    ({"kind": "no_answer", "state": "active", "target": SERVER, "timer": 35}, "timer"),
    ({"kind": "busy", "state": "active", "target": SERVER, "timer": 20}, "timer"),
    ({"kind": "always", "state": "active"}, "target"),
], ids=["unknown_kind", "timer_not_a_step", "timer_too_long", "timer_on_busy", "active_without_target"])
def test_a_wrong_forwarding_report_is_refused_with_the_field(handset_api, line, body, field):
    response = set_kind(handset_api, line, **body)
    assert response.status_code == 400
    assert error_code(response) == "invalid_input"
    assert field in response.json()["error"]["fields"]
    assert Line.objects.get(pk=line.pk).no_answer_state == "unverified"


def test_only_the_handset_reports_forwarding(tablet, line):
    from tests.conftest import client_for

    response = set_kind(client_for(tablet[1]), line, kind="always", state="active", target=SERVER)
    assert response.status_code == 403


def test_a_carrier_profile_gives_its_own_codes_and_lacks_the_kinds_it_cannot_set(handset_api, line):
    response = handset_api.patch(f"/api/v1/lines/{line.pk}", {"carrier_profile": "nanp_vsc"}, format="json")
    assert response.status_code == 200, response.content
    codes = response.json()["codes"]
    assert codes["always"] == {"register": "*725555550100", "interrogate": None, "erase": "*73"}
    assert codes["busy"]["register"] == "*905555550100" and codes["no_answer"]["erase"] == "*93"
    assert codes["unreachable"] is None and codes["conditional"] is None
    assert response.json()["mmi"]["register"] == f"**67*{SERVER}#"  # mmi stays the 3GPP busy set
    verizon = handset_api.patch(f"/api/v1/lines/{line.pk}", {"carrier_profile": "verizon_wireless"},
                                format="json").json()["codes"]
    assert verizon["always"]["register"] == "*725555550100"
    assert [kind for kind, found in verizon.items() if found is None] == ["busy", "no_answer", "unreachable",
                                                                         "conditional"]


def test_an_unknown_carrier_profile_is_refused(handset_api, line):
    response = handset_api.patch(f"/api/v1/lines/{line.pk}", {"carrier_profile": "acme"}, format="json")
    assert response.status_code == 400 and "carrier_profile" in response.json()["error"]["fields"]
    assert Line.objects.get(pk=line.pk).carrier_profile == "3gpp"


def test_every_profile_gives_every_kind_a_set_of_codes_or_none():
    for name in mmi.PROFILES:
        found = mmi.codes("+15555550100", profile=name, timer=25)
        assert set(found) == {"busy", "no_answer", "unreachable", "always", "conditional"}
        for value in found.values():
            assert value is None or (set(value) == {"register", "interrogate", "erase"} and value["register"])
    assert mmi.codes("+445555550100", timer=25)["no_answer"]["register"] == "**61*+445555550100**25#"


# Network-forwarded calls -------------------------------------------------------------

def test_a_forwarded_call_with_no_report_is_made_on_the_spot_and_rings_every_device(
        client, no_answer_line, tablet, online):
    socket = online(tablet[0])
    root = xml(forward(client, sid=SID, forwarded_from=None))
    call = Call.objects.get()
    assert conference_of(root) == f"callpull-{call.pk}"
    assert (call.state, call.provider_call_sid, call.reported_by_id, call.forwarding_kind) == (
        "forwarded", SID, None, "no_answer")
    assert call.caller == CALLER and call.answered_by_id is None
    [first, held] = call.timeline.all()
    assert (first.event, first.detail["kinds"], held.event) == ("forwarded_by_network", ["no_answer"], "caller_held")
    assert socket.types() == ["call.ringing"]


def test_a_line_with_several_network_kinds_records_network(client, no_answer_line, handset_api):
    set_kind(handset_api, no_answer_line, kind="unreachable", state="active", target=SERVER)
    forward(client, sid=SID)
    assert Call.objects.get().forwarding_kind == "network"


def test_the_call_shows_its_kind_and_no_reporter(client, no_answer_line, tablet):
    from tests.conftest import client_for

    forward(client, sid=SID)
    body = client_for(tablet[1]).get(f"/api/v1/calls/{Call.objects.get().pk}").json()
    assert body["forwarding_kind"] == "no_answer"
    assert body["timeline"][0]["event"] == "forwarded_by_network"
    assert body["timeline"][0]["detail"]["kinds"] == ["no_answer"]


def test_a_busy_only_line_keeps_todays_unmatched_answer(client, line, tablet, online):
    line.fallback_number = FALLBACK
    line.save()
    socket = online(tablet[0])
    root = xml(forward(client, sid=SID))
    assert root.find("Dial").text == FALLBACK and not Call.objects.exists()
    assert socket.types() == []


def test_a_retried_webhook_gets_the_same_call_and_rings_once(client, no_answer_line, tablet, online):
    socket = online(tablet[0])
    first = conference_of(xml(forward(client, sid=SID)))
    assert conference_of(xml(forward(client, sid=SID))) == first
    assert conference_of(xml(forward(client, sid=SID, forwarded_from=None))) == first
    assert Call.objects.count() == 1 and socket.types() == ["call.ringing"]


def test_the_first_device_to_answer_is_dialled_in(client, no_answer_line, tablet, tablet_api, fake_provider):
    forward(client, sid=SID)
    call = Call.objects.get()
    assert tablet_api.post(f"/api/v1/calls/{call.pk}/answer").status_code == 200
    assert ("add", f"callpull-{call.pk}", "client:tablet-1") in [action[:3] for action in fake_provider.actions]


def test_nobody_answering_sends_the_caller_to_the_fallback(client, no_answer_line, tablet, online, fake_provider):
    Line.objects.filter(pk=no_answer_line.pk).update(fallback_number=FALLBACK)
    socket = online(tablet[0])
    forward(client, sid=SID)
    call = Call.objects.get()
    assert call.expires_at > timezone.now() + timedelta(seconds=30)  # the ring window, CALL_RING_SECONDS
    Call.objects.filter(pk=call.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    calls_sweep(now=timezone.now())
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "no_answer")
    assert "redirect" in fake_provider.kinds()
    assert "call.ended" in socket.types()
    fallback = xml(signed_post(client, f"/telephony/twilio/fallback?call={call.pk}", {"CallSid": SID}))
    assert fallback.find("Dial").text == FALLBACK


@pytest.mark.parametrize("status", ["canceled", "completed"])
def test_the_carrier_hanging_up_the_forwarded_leg_ends_the_call(client, no_answer_line, tablet, online, status):
    """Simultaneous ring: the handset answered, the carrier cancels the leg to the server number."""
    forward(client, sid=SID)
    socket = online(tablet[0])
    assert signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": status}).status_code == 204
    call = Call.objects.get()
    assert (call.state, call.end_reason) == ("missed", "caller_hung_up")
    [ended] = [frame for frame in socket.frames() if frame["type"] == "call.ended"]
    assert ended["call"]["id"] == str(call.pk) and ended["reason"] == "caller_hung_up"


# Exactly once: a ring report and the network's forwarded call ------------------------

def test_a_report_after_the_network_forwarded_call_joins_it(client, handset_api, no_answer_line, tablet, online):
    forward(client, sid=SID)
    call = Call.objects.get()
    report_id = uuid.uuid4()
    response = report(handset_api, no_answer_line, report_id=report_id)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["call"]["id"] == str(call.pk)
    assert body["instruction"] == {"action": "keep_ringing", "reason": "forwarded_by_network"}
    assert Call.objects.count() == 1
    again = report(handset_api, no_answer_line, report_id=report_id)  # a retried report: the same answer
    assert again.status_code == 200 and again.json()["call"]["id"] == str(call.pk)
    assert again.json()["instruction"] == body["instruction"]
    stored = Call.objects.get()
    assert stored.forwarding_kind == "no_answer" and stored.reported_by_id is not None
    assert [e.event for e in stored.timeline.all()] == ["forwarded_by_network", "caller_held", "reported"]


def test_a_report_from_another_caller_is_a_call_of_its_own(client, handset_api, no_answer_line):
    forward(client, sid=SID)
    assert report(handset_api, no_answer_line, caller="+15550002222").status_code == 201
    assert Call.objects.count() == 2


def test_a_forwarded_call_after_a_report_matches_it_as_before(client, handset_api, no_answer_line):
    call_id = report(handset_api, no_answer_line).json()["call"]["id"]
    assert conference_of(xml(forward(client, sid=SID))) == f"callpull-{call_id}"
    call = Call.objects.get()
    assert (call.state, call.forwarding_kind) == ("forwarded", "busy")


def test_a_report_of_a_call_that_ended_is_a_new_call(client, handset_api, no_answer_line):
    forward(client, sid=SID)
    signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": "completed"})
    assert report(handset_api, no_answer_line).status_code == 201
    assert Call.objects.count() == 2


# A report on a line forwarded on no answer, not on busy --------------------------------

@pytest.fixture
def no_answer_only_line(line):
    """The conftest's line with busy forwarding off and forwarding on no answer active (T=15 s):
    the carrier forwards a ring the handset does not answer after 15 s, by itself."""
    now = timezone.now()
    line = line_services.line_forwarding_confirm(line=line, state="inactive", target="", now=now)
    return line_services.line_forwarding_confirm(line=line, kind="no_answer", state="active", target=SERVER,
                                                 timer=15, now=now)


@pytest.mark.parametrize("policy", ["on_answer", "immediate"])
def test_a_report_on_a_line_forwarded_on_no_answer_rings_the_devices_and_never_rejects(
        handset, handset_api, no_answer_only_line, tablet, online, policy, settings):
    settings.CALL_RING_SECONDS = 10  # shorter than T: the call must still be pending when the forward comes
    Line.objects.filter(pk=no_answer_only_line.pk).update(policy=policy)
    handset_socket, tablet_socket = online(handset[0]), online(tablet[0])
    response = report(handset_api, no_answer_only_line)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["instruction"] == {"action": "keep_ringing", "reason": "forwarded_on_no_answer"}
    frames = tablet_socket.frames()
    assert [frame["type"] for frame in frames] == ["call.ringing"]
    assert tablet_socket.ack(frames)  # a receipt (`immediate`) rejects nothing either
    assert handset_socket.frames() == []
    call = Call.objects.get()
    assert (call.state, call.forwarding_kind, call.reject_sent_at) == ("ringing", "no_answer", None)
    # It rings at least until the carrier's forward is due (T) and the usual wait for it.
    assert call.expires_at >= call.created_at + timedelta(seconds=15 + settings.CALL_FORWARD_WAIT_SECONDS)
    again = report(handset_api, no_answer_only_line, report_id=call.report_id)  # a repeat: the same answer
    assert (again.status_code, again.json()["instruction"]) == (200, body["instruction"])


def test_a_report_on_a_line_with_no_forwarding_at_all_still_rings_nobody(handset_api, line, tablet, online):
    line_services.line_forwarding_confirm(line=line, state="inactive", target="", now=timezone.now())
    socket = online(tablet[0])
    body = report(handset_api, line).json()
    assert body["instruction"] == {"action": "keep_ringing", "reason": "forwarding_not_active"}
    assert socket.frames() == []


def test_a_device_answering_before_the_forward_waits_for_the_carriers_timer_without_a_reject(
        client, handset, handset_api, no_answer_only_line, tablet, tablet_api, online, fake_provider, settings):
    handset_socket = online(handset[0])
    online(tablet[0])
    call_id = report(handset_api, no_answer_only_line).json()["call"]["id"]
    answered_at = timezone.now()
    response = tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "answering"
    call = Call.objects.get()
    assert call.reject_sent_at is None
    assert "call.reject" not in handset_socket.types(), "the handset keeps ringing: never told to reject"
    wait = settings.CALL_FORWARD_WAIT_SECONDS
    assert call.expires_at >= answered_at + timedelta(seconds=15 + wait)
    # The usual wait for a forward passes: the carrier's timer has not, the call waits on.
    calls_sweep(now=answered_at + timedelta(seconds=wait + 1))
    assert Call.objects.get().state == "answering"
    # The carrier forwards after T: the device that answered is dialled in, as on busy.
    assert conference_of(xml(forward(client, sid=SID))) == f"callpull-{call_id}"
    assert Call.objects.get().state == "forwarded"
    assert ("add", f"callpull-{call_id}", "client:tablet-1") in [action[:3] for action in fake_provider.actions]
    assert Call.objects.count() == 1


def test_an_answered_call_whose_forward_never_comes_fails_after_the_timer_and_the_wait(
        handset_api, no_answer_only_line, tablet, tablet_api, settings):
    call_id = report(handset_api, no_answer_only_line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    calls_sweep(now=timezone.now() + timedelta(seconds=15 + settings.CALL_FORWARD_WAIT_SECONDS + 1))
    call = Call.objects.get()
    assert (call.state, call.end_reason, call.reject_sent_at) == ("failed", "forwarded_call_never_arrived", None)


def test_the_forward_of_an_unanswered_report_holds_the_caller_and_the_devices_ring_on(
        client, handset_api, no_answer_only_line, tablet, tablet_api, online, fake_provider):
    socket = online(tablet[0])
    call_id = report(handset_api, no_answer_only_line).json()["call"]["id"]
    assert conference_of(xml(forward(client, sid=SID))) == f"callpull-{call_id}"
    call = Call.objects.get()
    assert (call.state, call.answered_by_id) == ("forwarded", None)
    assert socket.types() == ["call.ringing"]  # rung once, by the report
    assert tablet_api.post(f"/api/v1/calls/{call_id}/answer").status_code == 200
    assert ("add", f"callpull-{call_id}", "client:tablet-1") in [action[:3] for action in fake_provider.actions]


def test_the_handset_picking_up_ends_the_ring_for_the_others(handset_api, no_answer_only_line, tablet, online):
    socket = online(tablet[0])
    call_id = report(handset_api, no_answer_only_line).json()["call"]["id"]
    socket.frames()
    response = handset_api.post(f"/api/v1/calls/{call_id}/handset-events", {"event": "answered"}, format="json")
    assert response.status_code == 200, response.content
    assert Call.objects.get().state == "answered_on_handset"
    assert socket.types() == ["call.answered_elsewhere"]


def test_the_forward_of_a_ring_declined_everywhere_goes_to_the_fallback_not_a_new_call(
        client, handset, handset_api, no_answer_only_line, tablet, tablet_api, online):
    Line.objects.filter(pk=no_answer_only_line.pk).update(fallback_number=FALLBACK)
    handset_socket, socket = online(handset[0]), online(tablet[0])
    call_id = report(handset_api, no_answer_only_line).json()["call"]["id"]
    response = tablet_api.post(f"/api/v1/calls/{call_id}/decline", {"scope": "everywhere"}, format="json")
    assert response.status_code == 200, response.content
    assert "call.reject" not in handset_socket.types()
    socket.frames()
    # The handset was not told to reject, so the carrier forwards the ring after T.
    assert xml(forward(client, sid=SID)).find("Dial").text == FALLBACK
    assert Call.objects.count() == 1 and Call.objects.get().state == "declined"
    assert socket.frames() == []


def test_the_handset_answering_a_network_forwarded_call_it_joined_is_no_error(
        client, handset_api, no_answer_line, tablet):
    """Simultaneous ring: the report joined the network's call; the user picks up on the
    handset, and the carrier hangs up the forwarded leg (before or after the app says so)."""
    forward(client, sid=SID)
    call_id = report(handset_api, no_answer_line).json()["call"]["id"]
    url = f"/api/v1/calls/{call_id}/handset-events"
    response = handset_api.post(url, {"event": "answered"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "forwarded"
    assert [e["event"] for e in response.json()["timeline"]][-1] == "handset_answered"
    signed_post(client, "/telephony/twilio/status", {"CallSid": SID, "CallStatus": "canceled"})
    again = handset_api.post(url, {"event": "answered"}, format="json")
    assert again.status_code == 200 and again.json()["state"] == "missed"


# Exact attribution: never a guess ----------------------------------------------------

@pytest.fixture
def shared_lines(no_answer_line, stranger):
    """Two users' lines on the one server number, both accepting network forwarding."""
    other, _ = line_services.line_register(device=stranger[0], number="+15557654321", region=None,
                                           now=timezone.now())
    assert other.server_number.number == SERVER
    line_services.line_forwarding_confirm(line=other, kind="always", state="active", target=SERVER,
                                          now=timezone.now())
    return no_answer_line, other


def test_a_shared_number_without_forwarded_from_rings_nobody(client, shared_lines, tablet, online):
    socket = online(tablet[0])
    root = xml(forward(client, sid=SID, caller="anonymous", forwarded_from=None))
    assert root.find("Dial") is None and root.find("Hangup") is not None
    assert not Call.objects.exists() and socket.types() == []
    # A known caller may be a user dialling in: the PIN prompt, still no call.
    root = xml(forward(client, sid="CA" + "5" * 32, forwarded_from=None))
    assert root.find("Gather") is not None and not Call.objects.exists()


def test_a_shared_number_without_forwarded_from_goes_to_the_fallback_its_lines_share(client, shared_lines):
    Line.objects.filter(pk__in=[line.pk for line in shared_lines]).update(fallback_number=FALLBACK)
    root = xml(forward(client, sid=SID, caller="anonymous", forwarded_from=None))
    assert root.find("Dial").text == FALLBACK and not Call.objects.exists()


def test_a_shared_number_with_forwarded_from_naming_a_line_makes_that_lines_call(client, shared_lines):
    ours, theirs = shared_lines
    forward(client, sid=SID, forwarded_from=theirs.number)
    call = Call.objects.get()
    assert (call.line_id, call.forwarding_kind) == (theirs.pk, "always")


def test_the_users_own_device_calling_its_number_is_a_dial_in(client, user, no_answer_line):
    make_device(user, kind="tablet", phone_number="+15550003333")
    root = xml(forward(client, sid=SID, caller="+15550003333", forwarded_from=None))
    assert root.find("Gather") is not None and not Call.objects.exists()


def test_the_admin_says_how_many_lines_share_a_number(admin_client, shared_lines):
    for path in ("/admin/callpull/line/", "/admin/callpull/servernumber/"):
        response = admin_client.get(path)
        assert response.status_code == 200
        assert "2 lines, 2 share a server number" in response.content.decode()
