"""Conferences: a caller's leg stays in its conference while device legs join and leave.

<Dial><Conference> with its attributes, the Participants REST API (add, mute,
hold, remove), conference status callbacks, the wait audio, and how a
conference ends (endConferenceOnExit, the last participant, REST).
"""

import pytest
from twilio.rest import Client

from callpull.telephony.provider import ApiBaseHttpClient
from tests.simulator.support import ACCOUNT_SID, AUTH_TOKEN, CALLER, SERVER_NUMBER, eventually, leg, until, until_event

VOICE = "/telephony/twilio/voice"
STATUS = "/telephony/twilio/status"
CONFERENCE_STATUS = "/telephony/twilio/conference-status"
DEVICE_STATUS = "/telephony/twilio/participant-status"
RINGBACK = "https://callpull.example.test/static/ringback.wav"
ROOM = "call-42"
CONFERENCES = f"/simulator/2010-04-01/Accounts/{ACCOUNT_SID}/Conferences"
CALLS = f"/simulator/2010-04-01/Accounts/{ACCOUNT_SID}/Calls"
PUBLIC = "https://callpull.example.test"


def caller_twiml(room=ROOM, dial="", after="", **attributes):
    values = {"startConferenceOnEnter": "true", "endConferenceOnExit": "true", "waitUrl": RINGBACK,
              "waitMethod": "GET", "beep": "false", "statusCallback": CONFERENCE_STATUS,
              "statusCallbackEvent": "start end join leave mute hold", "participantLabel": "caller"}
    values.update(attributes)
    attrs = " ".join(f'{name}="{value}"' for name, value in values.items() if value is not None)
    return f"<Response><Dial{dial}><Conference {attrs}>{room}</Conference></Dial>{after}</Response>"


def rest(sim, method, path, *, auth=(ACCOUNT_SID, AUTH_TOKEN), **kwargs):
    return sim.http.request(method, path, auth=auth, **kwargs)


def incoming(sim, caller=CALLER):
    response = sim.http.post("/simulator/calls", json={"from": caller, "to": SERVER_NUMBER})
    assert response.status_code == 201, response.text
    return response.json()["sid"]




def room(sim, key=ROOM):
    response = sim.http.get(f"/simulator/conferences/{key}")
    assert response.status_code == 200, response.text
    return response.json()


def participant(sim, who, key=ROOM):
    """A participant's REST path: Twilio names the conference by its SID there (only a create may
    use the friendly name)."""
    return f"{CONFERENCES}/{room(sim, key)['sid']}/Participants/{who}.json"


def add(sim, room_key=ROOM, **form):
    data = {"From": SERVER_NUMBER, "StatusCallback": PUBLIC + DEVICE_STATUS,
            "StatusCallbackEvent": "initiated ringing answered completed"} | form
    response = rest(sim, "POST", f"{CONFERENCES}/{room_key}/Participants.json", data=data)
    assert response.status_code == 201, response.text
    return response.json()


def conference_callbacks(sim):
    return [request.params for request in sim.backend.to(CONFERENCE_STATUS)]


def summary(sim):
    """(StatusCallbackEvent, label) of every conference callback so far."""
    return [(params["StatusCallbackEvent"], params.get("ParticipantLabel")) for params in conference_callbacks(sim)]


def expect_callbacks(sim, expected):
    def check():
        assert summary(sim) == expected
        return conference_callbacks(sim)
    return eventually(check)


def named(record, event):
    return [entry for entry in record["events"] if entry["event"] == event]


def caller_waiting(sim, **attributes):
    """A caller in conference ROOM, alone, hearing the ringback."""
    sim.backend.answers[VOICE] = lambda params: caller_twiml(**attributes)
    sid = incoming(sim)
    until(sim, sid, activity="conference-waiting")
    until_event(sim, sid, "wait_audio")
    return sid


def caller_with_device(sim, label="device-1", address="client:tablet", **attributes):
    sid = caller_waiting(sim, **attributes)
    device = add(sim, To=address, Label=label)["call_sid"]
    until(sim, device, activity="conference")
    return sid, device


def test_the_caller_stays_while_device_legs_join_and_leave(sim):
    sid = caller_waiting(sim)
    caller = leg(sim, sid)
    assert [entry["url"] for entry in named(caller, "wait_audio")] == [RINGBACK]
    assert caller["status"] == "in-progress" and caller["conference"]["label"] == "caller"
    assert room(sim)["status"] == "init"
    assert not any(r.url.endswith(".wav") for r in sim.backend.received)  # audio is never fetched

    first = add(sim, To="client:tablet", Label="device-1")
    assert first["status"] == "queued" and first["label"] == "device-1"
    assert first["conference_sid"] == room(sim)["sid"] and first["call_sid"].startswith("CA")
    assert first["account_sid"] == ACCOUNT_SID and first["muted"] is False and first["hold"] is False
    assert first["start_conference_on_enter"] is True and first["end_conference_on_exit"] is False
    callbacks = expect_callbacks(sim, [("participant-join", "caller"), ("participant-join", "device-1"),
                                       ("conference-start", None)])
    until(sim, sid, activity="conference")
    assert named(leg(sim, sid), "wait_ended")[0]["reason"] == "conference started"

    second = add(sim, To="client:phone", Label="device-2")["call_sid"]
    until(sim, second, activity="conference")
    assert rest(sim, "DELETE", participant(sim, "device-1")).status_code == 204

    callbacks = expect_callbacks(sim, [
        ("participant-join", "caller"), ("participant-join", "device-1"), ("conference-start", None),
        ("participant-join", "device-2"), ("participant-leave", "device-1")])
    until(sim, first["call_sid"], status="completed")
    caller = leg(sim, sid)
    assert caller["ended_at"] is None and caller["status"] == "in-progress"  # the caller never noticed
    assert named(caller, "ended") == [] and named(caller, "conference_left") == []
    assert [entry["event"] for entry in caller["events"] if entry["event"].startswith("conference")] == [
        "conference_joined", "conference_started"]

    sid_of_room = room(sim)["sid"]
    for params in callbacks:
        assert params["ConferenceSid"] == sid_of_room and params["FriendlyName"] == ROOM
        assert params["AccountSid"] == ACCOUNT_SID and params["Timestamp"]
    assert [params["SequenceNumber"] for params in callbacks] == ["1", "2", "3", "4", "5"]
    assert all(request.signature_valid for request in sim.backend.received)
    join = callbacks[1]
    assert (join["CallSid"], join["Muted"], join["Hold"], join["EndConferenceOnExit"],
            join["StartConferenceOnEnter"]) == (first["call_sid"], "false", "false", "false", "true")
    leave = callbacks[4]
    assert (leave["CallSid"], leave["ReasonParticipantLeft"], leave["ParticipantCallStatus"]) == (
        first["call_sid"], "participant_updated_via_api", "in-progress")
    assert "CallSid" not in callbacks[2]  # conference-start

    device_progress = eventually(lambda: _n(device_progress_of(sim, first["call_sid"]), 4))
    assert [p["CallStatus"] for p in device_progress] == ["initiated", "ringing", "in-progress", "completed"]
    assert device_progress[0]["To"] == "client:tablet" and device_progress[0]["From"] == SERVER_NUMBER

    record = room(sim)
    assert record["status"] == "in-progress" and record["current_participants"] == [sid, second]
    assert [(p["label"], p["status"], p["reason_left"]) for p in record["participants"]] == [
        ("caller", "connected", None), ("device-1", "complete", "participant_updated_via_api"),
        ("device-2", "connected", None)]
    assert all(p["joined_at"] for p in record["participants"])
    listed = rest(sim, "GET", f"{CONFERENCES}/{sid_of_room}/Participants.json").json()["participants"]
    assert [p["label"] for p in listed] == ["caller", "device-2"]
    assert {p["status"] for p in listed} == {"connected"}
    assert leg(sim, first["call_sid"])["conferences"][0]["left_at"] is not None


def device_progress_of(sim, call_sid):
    return [r.params for r in sim.backend.to(DEVICE_STATUS) if r.params["CallSid"] == call_sid]


def _n(items, count):
    assert len(items) == count, items
    return items


def test_muting_and_holding_a_participant(sim):
    sid, device = caller_with_device(sim)
    path = participant(sim, "device-1")

    muted = rest(sim, "POST", path, data={"Muted": "true"})
    assert muted.status_code == 200 and muted.json()["muted"] is True
    assert rest(sim, "GET", path).json()["muted"] is True
    rest(sim, "POST", path, data={"Hold": "true", "HoldUrl": "https://assets.example.test/hold.mp3"})
    rest(sim, "POST", participant(sim, device), data={"Muted": "false", "Hold": "false"})

    callbacks = expect_callbacks(sim, [
        ("participant-join", "caller"), ("participant-join", "device-1"), ("conference-start", None),
        ("participant-mute", "device-1"), ("participant-hold", "device-1"), ("participant-unmute", "device-1"),
        ("participant-unhold", "device-1")])
    assert [(c["Muted"], c["Hold"]) for c in callbacks[3:]] == [
        ("true", "false"), ("true", "true"), ("false", "true"), ("false", "false")]
    record = leg(sim, device)
    assert [e["event"] for e in record["events"] if e["event"] in ("muted", "unmuted", "hold", "unhold")] == [
        "muted", "hold", "unmuted", "unhold"]
    assert named(record, "hold")[0]["hold_url"] == "https://assets.example.test/hold.mp3"
    assert record["conference"]["muted"] is False and record["activity"] == "conference"
    assert leg(sim, sid)["ended_at"] is None


def test_the_caller_leaving_with_end_conference_on_exit_ends_everything(sim):
    sid, device = caller_with_device(sim)

    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"}).raise_for_status()

    callbacks = expect_callbacks(sim, [
        ("participant-join", "caller"), ("participant-join", "device-1"), ("conference-start", None),
        ("participant-leave", "caller"), ("participant-leave", "device-1"), ("conference-end", None)])
    assert (callbacks[3]["ReasonParticipantLeft"], callbacks[3]["ParticipantCallStatus"]) == (
        "participant_hung_up", "completed")
    assert callbacks[4]["ReasonParticipantLeft"] == "moderator_ended_conference"
    end = callbacks[5]
    assert end["ReasonConferenceEnded"] == "participant-with-end-conference-on-exit-left"
    assert end["CallSidEndingConference"] == sid and end["ParticipantLabelEndingConference"] == "caller"
    until(sim, sid, status="completed")
    device_leg = until(sim, device, status="completed")
    assert device_leg["hung_up_by"] == "conference"
    record = room(sim)
    assert (record["status"], record["reason_conference_ended"], record["call_sid_ending_conference"]) == (
        "completed", "participant-with-end-conference-on-exit-left", sid)
    assert record["current_participants"] == [] and record["ended_at"]
    assert eventually(lambda: sim.backend.to(STATUS)[0]).params["CallStatus"] == "completed"
    resource = rest(sim, "GET", f"{CONFERENCES}/{record['sid']}.json").json()
    assert (resource["status"], resource["reason_conference_ended"]) == (
        "completed", "participant-with-end-conference-on-exit-left")


def test_a_participant_that_does_not_answer_leaves_the_conference_going_on(sim):
    sim.http.post("/simulator/devices", json={"address": "client:away", "behaviour": "no-answer"})
    sid = caller_waiting(sim)

    device = add(sim, To="client:away", Label="away", Timeout="1")["call_sid"]

    until(sim, device, status="no-answer")
    assert [p["CallStatus"] for p in eventually(lambda: _n(device_progress_of(sim, device), 3))] == [
        "initiated", "ringing", "no-answer"]
    callbacks = expect_callbacks(sim, [("participant-join", "caller"), ("participant-leave", "away")])
    assert (callbacks[1]["ReasonParticipantLeft"], callbacks[1]["ParticipantCallStatus"]) == (
        "participant_add_failed", "no-answer")
    caller = until(sim, sid, activity="conference-waiting")
    assert caller["ended_at"] is None
    record = room(sim)
    assert record["status"] == "init" and record["current_participants"] == [sid]
    assert record["participants"][1]["status"] == "failed" and record["participants"][1]["joined_at"] is None

    # The next device answers and the conference starts.
    add(sim, To="client:tablet", Label="device-2")
    expect_callbacks(sim, [("participant-join", "caller"), ("participant-leave", "away"),
                           ("participant-join", "device-2"), ("conference-start", None)])


def test_a_ringing_participant_removed_by_rest_is_canceled(sim):
    sim.http.post("/simulator/devices", json={"address": "client:slow", "behaviour": "no-answer"})
    caller_waiting(sim)
    device = add(sim, To="client:slow", Label="slow")["call_sid"]
    until(sim, device, status="ringing")
    assert rest(sim, "GET", participant(sim, "slow")).json()["status"] == "ringing"

    assert rest(sim, "DELETE", participant(sim, "slow")).status_code == 204

    until(sim, device, status="canceled")
    assert [p["CallStatus"] for p in eventually(lambda: _n(device_progress_of(sim, device), 3))][-1] == "canceled"
    assert rest(sim, "GET", participant(sim, "slow")).status_code == 404


def test_a_rest_update_takes_the_caller_out_of_the_conference(sim):
    sid, device = caller_with_device(sim, endConferenceOnExit="false")

    rest(sim, "POST", f"{CALLS}/{sid}.json",
         data={"Twiml": "<Response><Say>Moved</Say><Play loop=\"0\">hold.mp3</Play></Response>"}).raise_for_status()

    caller = until(sim, sid, activity="held")
    assert caller["said"] == ["Moved"] and caller["ended_at"] is None
    assert named(caller, "conference_left")[0]["reason"] == "participant_updated_via_api"
    assert caller["conference"] is None and caller["conferences"][0]["left_at"]
    callbacks = expect_callbacks(sim, [("participant-join", "caller"), ("participant-join", "device-1"),
                                       ("conference-start", None), ("participant-leave", "caller")])
    assert callbacks[3]["ReasonParticipantLeft"] == "participant_updated_via_api"
    assert room(sim)["status"] == "in-progress" and leg(sim, device)["ended_at"] is None


def test_a_device_hanging_up_leaves_and_the_last_participant_ends_the_conference(sim):
    sim.http.post("/simulator/devices", json={"address": "client:brief", "hangup_after": 0.1})
    sid, device = caller_with_device(sim, address="client:brief", endConferenceOnExit="false")

    until(sim, device, status="completed")
    assert leg(sim, device)["hung_up_by"] == "device"
    assert leg(sim, sid)["ended_at"] is None
    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"})
    callbacks = expect_callbacks(sim, [
        ("participant-join", "caller"), ("participant-join", "device-1"), ("conference-start", None),
        ("participant-leave", "device-1"), ("participant-leave", "caller"), ("conference-end", None)])
    assert callbacks[3]["ReasonParticipantLeft"] == "participant_hung_up"
    assert callbacks[5]["ReasonConferenceEnded"] == "last-participant-left"


def test_ending_the_conference_by_rest_sends_twiml_callers_to_their_dial_action(sim):
    sim.backend.answers["/after"] = lambda params: "<Response><Say>The call has ended.</Say></Response>"
    sid, device = caller_with_device(sim, dial=' action="/after"')
    conference_sid = room(sim)["sid"]

    response = rest(sim, "POST", f"{CONFERENCES}/{conference_sid}.json", data={"Status": "completed"})

    assert response.status_code == 200 and response.json()["status"] == "completed"
    caller = until(sim, sid, status="completed")
    [action] = [r.params for r in sim.backend.to("/after")]
    assert action["DialCallStatus"] == "answered" and "DialCallSid" not in action
    assert action["CallSid"] == sid and action["CallStatus"] == "in-progress"
    assert caller["said"] == ["The call has ended."]
    until(sim, device, status="completed")
    callbacks = expect_callbacks(sim, [
        ("participant-join", "caller"), ("participant-join", "device-1"), ("conference-start", None),
        ("participant-leave", "caller"), ("participant-leave", "device-1"), ("conference-end", None)])
    assert {c["ReasonParticipantLeft"] for c in callbacks[3:5]} == {"conference_ended_via_api"}
    assert callbacks[5]["ReasonConferenceEnded"] == "conference-ended-via-api"
    assert "CallSidEndingConference" not in callbacks[5]


def test_the_participants_api_creates_an_unknown_conference_and_removing_the_last_one_ends_it(sim):
    created = add(sim, room_key="fresh-room", To="+15550007777", Label="phone", WaitUrl=RINGBACK,
                  ConferenceStatusCallback=PUBLIC + CONFERENCE_STATUS,
                  ConferenceStatusCallbackEvent="start end join leave")
    device = created["call_sid"]
    until(sim, device, activity="conference-waiting")
    until_event(sim, device, "wait_audio")
    record = room(sim, "fresh-room")
    assert created["conference_sid"] == record["sid"] and record["sid"].startswith("CF") and len(record["sid"]) == 34
    assert record["status_callback"]["events"] == ["start", "end", "join", "leave"]
    assert [e["url"] for e in named(leg(sim, device), "wait_audio")] == [RINGBACK]

    assert rest(sim, "DELETE", participant(sim, "phone", "fresh-room")).status_code == 204

    callbacks = expect_callbacks(sim, [("participant-join", "phone"), ("participant-leave", "phone"),
                                       ("conference-end", None)])
    assert callbacks[2]["ReasonConferenceEnded"] == "last-participant-kicked"
    device_leg = until(sim, device, status="completed")
    assert device_leg["hung_up_by"] == "api"


def test_two_callers_meet_in_a_twiml_conference_and_a_withheld_caller_dials_in(sim):
    sim.backend.answers[VOICE] = lambda params: caller_twiml(
        endConferenceOnExit="false", participantLabel=None, waitUrl="",
        startConferenceOnEnter="true" if params["From"] == "anonymous" else "false")
    first = incoming(sim)
    until(sim, first, activity="conference-waiting")
    assert named(until_event(sim, first, "wait_audio"), "wait_audio")[0]["silence"] is True

    second = incoming(sim, caller="anonymous")

    until(sim, second, activity="conference")
    until(sim, first, activity="conference")
    assert leg(sim, second)["from"] == "anonymous"
    assert sim.backend.to(VOICE)[1].params["From"] == "anonymous"
    expect_callbacks(sim, [("participant-join", None), ("participant-join", None), ("conference-start", None)])


def test_a_twiml_wait_url_is_fetched_and_followed(sim):
    sim.backend.answers["/wait"] = lambda params: (
        '<Response><Say>Please wait.</Say><Play>https://assets.example.test/tone.mp3</Play></Response>')
    sid = caller_waiting(sim, waitUrl="/wait", waitMethod="POST")

    def heard():
        record = leg(sim, sid)
        assert record["said"] == ["Please wait."], record
        return record

    record = eventually(heard)
    [fetched] = sim.backend.to("/wait")
    assert fetched.method == "POST" and fetched.params["CallSid"] == sid and fetched.signature_valid
    assert [e["url"] for e in named(record, "wait_audio")] == ["https://assets.example.test/tone.mp3"]


def test_a_duplicate_label_is_refused(sim):
    caller_waiting(sim)
    response = rest(sim, "POST", f"{CONFERENCES}/{ROOM}/Participants.json",
                    data={"From": SERVER_NUMBER, "To": "client:x", "Label": "caller"})
    assert response.status_code == 400 and response.json()["code"] == 16025


def test_conference_lists_and_filters(sim):
    caller_waiting(sim)
    listed = rest(sim, "GET", f"{CONFERENCES}.json", params={"FriendlyName": ROOM, "Status": "init"}).json()
    assert [c["friendly_name"] for c in listed["conferences"]] == [ROOM]
    assert rest(sim, "GET", f"{CONFERENCES}.json", params={"Status": "completed"}).json()["conferences"] == []
    assert rest(sim, "GET", f"{CONFERENCES}/CF{'0' * 32}.json").json()["code"] == 20404
    assert rest(sim, "POST", f"{CONFERENCES}/CF{'0' * 32}/Participants.json",
                data={"From": SERVER_NUMBER, "To": "client:x"}).status_code == 404
    assert rest(sim, "GET", participant(sim, "nobody")).json()["code"] == 20404
    assert sim.http.get("/simulator/conferences/nothing-here").status_code == 404
    assert [c["friendly_name"] for c in sim.http.get("/simulator/conferences").json()] == [ROOM]


def test_the_twilio_sdk_drives_conferences(sim):
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=ApiBaseHttpClient(sim.base_url + "/simulator"))
    sid = caller_waiting(sim)

    participant = client.conferences(ROOM).participants.create(
        from_=SERVER_NUMBER, to="client:tablet", label="device-1", status_callback=PUBLIC + DEVICE_STATUS,
        status_callback_event=["initiated", "answered"], timeout=10)
    assert participant.label == "device-1" and participant.status == "queued"
    until(sim, participant.call_sid, activity="conference")
    [conference] = client.conferences.list(friendly_name=ROOM, status="in-progress")
    assert conference.sid == participant.conference_sid
    assert client.conferences(conference.sid).participants("device-1").update(muted=True).muted is True
    assert [p.label for p in client.conferences(conference.sid).participants.list()] == ["caller", "device-1"]
    assert client.conferences(conference.sid).participants(participant.call_sid).delete() is True
    until(sim, participant.call_sid, status="completed")
    assert [p["CallStatus"] for p in device_progress_of(sim, participant.call_sid)] == ["initiated", "in-progress"]
    assert client.conferences(conference.sid).update(status="completed").status == "completed"
    until(sim, sid, status="completed")


@pytest.mark.parametrize("auth", [None, (ACCOUNT_SID, "wrong")])
def test_conference_rest_needs_the_account_basic_auth(sim, auth):
    caller_waiting(sim)
    conference_sid = room(sim)["sid"]
    for method, path, data in [
        ("GET", f"{CONFERENCES}.json", None),
        ("GET", f"{CONFERENCES}/{conference_sid}.json", None),
        ("POST", f"{CONFERENCES}/{conference_sid}.json", {"Status": "completed"}),
        ("GET", f"{CONFERENCES}/{conference_sid}/Participants.json", None),
        ("POST", f"{CONFERENCES}/{ROOM}/Participants.json", {"From": SERVER_NUMBER, "To": "client:tablet"}),
        ("GET", f"{CONFERENCES}/{conference_sid}/Participants/caller.json", None),
        ("POST", f"{CONFERENCES}/{conference_sid}/Participants/caller.json", {"Muted": "true"}),
        ("DELETE", f"{CONFERENCES}/{conference_sid}/Participants/caller.json", None),
    ]:
        response = rest(sim, method, path, auth=auth, data=data)
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == 20003
    record = room(sim)
    assert record["status"] == "init" and len(record["participants"]) == 1
    assert not record["participants"][0]["muted"]


def test_a_participant_call_ended_by_rest_leaves_and_the_caller_hanging_up_still_gets_the_action(sim):
    sid, device = caller_with_device(sim, dial=' action="/after"', endConferenceOnExit="false")

    rest(sim, "POST", f"{CALLS}/{device}.json", data={"Status": "completed"}).raise_for_status()

    device_leg = until(sim, device, status="completed")
    assert device_leg["hung_up_by"] == "api"
    assert named(device_leg, "conference_left")[0]["reason"] == "participant_hung_up"
    assert leg(sim, sid)["ended_at"] is None and room(sim)["status"] == "in-progress"
    sim.http.post(f"/simulator/calls/{sid}/hangup", json={"party": "caller"})
    until(sim, sid, status="completed")
    [action] = [r.params for r in sim.backend.to("/after")]
    assert (action["DialCallStatus"], action["CallStatus"]) == ("answered", "completed")
    assert room(sim)["reason_conference_ended"] == "last-participant-left"
