"""Provider REST actions: participants addressed by their conference's SID (learnt
from callbacks, from the participant create's answer, or looked up by friendly
name), transient failures tried again within their deadline, final failures on
the call's timeline, requests about calls already over harmless.

Most tests use the fake provider (conftest); the last ones drive the real
provider module against the bundled simulator (tests/simulator's stack)."""

import logging

import pytest

from callpull.models import Call, CallLeg
from callpull.telephony import provider
from callpull.telephony.provider import ProviderError
from callpull.telephony.provider import conference_sid_for as real_conference_sid_for
from callpull.telephony.provider import participant_add as real_participant_add
from callpull.telephony.provider import participant_mute as real_participant_mute
from callpull.telephony.provider import participant_remove as real_participant_remove
from tests.callpull.conftest import conference, conference_sid, forward, join_leg, leg_status, report, signed_post
from tests.simulator.conftest import sim, stack  # noqa: F401 (fixtures)
from tests.simulator.support import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, SERVER_NUMBER, until

pytestmark = pytest.mark.django_db

OTHER_SID = "CF" + "ab" * 16


def timeline(call_id, event):
    return [entry.detail for entry in Call.objects.get(pk=call_id).timeline.filter(event=event).order_by("at", "pk")]


def pull_and_join(client, call_id, desktop_api, fake_provider):
    """The desktop pulls the call and its leg joins: the tablet's leg is removed."""
    assert desktop_api.post(f"/api/v1/calls/{call_id}/pull").status_code == 202
    join_leg(client, call_id, fake_provider)


def removals(fake_provider):
    return [action for action in fake_provider.actions if action[0] == "remove"]


def transient(status=503):
    return ProviderError("busy provider", status=status, code=20500 if status >= 500 else 20429, transient=True)


# Learning the conference SID ---------------------------------------------------------

def test_the_sid_in_the_participant_create_answer_is_kept(client, handset_api, line, tablet, tablet_api, online,
                                                          fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    forward(client, sid="CA" + "1" * 32)  # the tablet is dialled; no conference callback came yet
    assert [action[0] for action in fake_provider.actions] == ["add"]
    assert Call.objects.get(pk=call_id).conference_sid == conference_sid(call_id)


def test_the_sid_of_a_conference_callback_is_kept_once_and_participants_are_removed_under_it(
        client, live_call, desktop_api, fake_provider):
    Call.objects.filter(pk=live_call).update(conference_sid="")
    conference(client, live_call, "participant-join", label="", sid="CA" + "7" * 32)  # the caller's own join
    assert Call.objects.get(pk=live_call).conference_sid == conference_sid(live_call)
    params = {"StatusCallbackEvent": "participant-leave", "CallSid": "CA" + "7" * 32, "ConferenceSid": OTHER_SID}
    signed_post(client, f"/telephony/twilio/conference?call={live_call}", params)
    assert Call.objects.get(pk=live_call).conference_sid == conference_sid(live_call)  # set once

    Call.objects.filter(pk=live_call).update(conference_sid=OTHER_SID)  # say Twilio had named it so
    fake_provider.actions.clear()
    pull_and_join(client, live_call, desktop_api, fake_provider)
    assert [action[1] for action in removals(fake_provider)] == [OTHER_SID]
    assert "lookup" not in fake_provider.kinds()


def test_an_unknown_sid_is_looked_up_by_friendly_name_once_and_kept(client, live_call, user, desktop_api, tablet,
                                                                   fake_provider):
    assert desktop_api.post(f"/api/v1/calls/{live_call}/pull").status_code == 202
    label = list(fake_provider.sids)[-1]
    Call.objects.filter(pk=live_call).update(conference_sid="")  # as if neither an answer nor a callback said
    fake_provider.actions.clear()
    leg = CallLeg.objects.get(pk=label)
    params = {"StatusCallbackEvent": "participant-join", "CallSid": fake_provider.sids[label],
              "ParticipantLabel": label}  # a callback without ConferenceSid
    signed_post(client, f"/telephony/twilio/conference?call={live_call}", params)
    tablet_leg = CallLeg.objects.get(device=tablet[0])
    assert fake_provider.actions == [("lookup", f"callpull-{live_call}"),
                                     ("remove", conference_sid(live_call), tablet_leg.provider_call_sid)]
    assert Call.objects.get(pk=live_call).conference_sid == conference_sid(live_call)
    assert CallLeg.objects.get(pk=leg.pk).state == "joined"


def test_no_live_conference_makes_the_action_moot(client, live_call, desktop_api, fake_provider, caplog):
    pull_and_join(client, live_call, desktop_api, fake_provider)
    Call.objects.filter(pk=live_call).update(conference_sid="")
    fake_provider.ended_conferences.add(f"callpull-{live_call}")
    fake_provider.actions.clear()
    caplog.set_level(logging.INFO, logger="callpull.actions")
    from callpull import actions

    actions.run_provider_action(actions.remove, live_call, "CA" + "9" * 32)
    assert fake_provider.actions == [("lookup", f"callpull-{live_call}")]
    moot = [record for record in caplog.records if record.name == "callpull.actions" and "moot" in record.message]
    assert [record.levelno for record in moot] == [logging.INFO]
    assert timeline(live_call, "provider_action_failed") == []


# Transient failures, final failures, requests about calls already over ---------------

def test_a_removal_that_fails_for_a_while_is_tried_again_until_it_goes_through(client, live_call, desktop_api,
                                                                               fake_provider):
    fake_provider.fail("remove", transient(503), transient(429))
    pull_and_join(client, live_call, desktop_api, fake_provider)
    assert len(removals(fake_provider)) == 3
    assert timeline(live_call, "provider_action_failed") == []


def test_a_removal_that_keeps_failing_is_given_up_within_its_budget_and_shown_on_the_timeline(
        client, live_call, desktop_api, fake_provider, settings):
    # Tries at 0 s, then after 1 s and 2 s more (3 s in all); the next would start at 7 s.
    settings.PROVIDER_RETRY_BACKOFF_SECONDS, settings.PROVIDER_RETRY_SECONDS = 1, 3
    fake_provider.fail("remove", *[transient(503) for _ in range(10)])
    pull_and_join(client, live_call, desktop_api, fake_provider)
    assert len(removals(fake_provider)) == 3
    assert timeline(live_call, "provider_action_failed") == [
        {"action": "remove", "error": "http_503", "code": 20500, "attempts": 3}]


def test_an_unreachable_provider_is_tried_at_most_a_few_times(client, live_call, desktop_api, fake_provider,
                                                            settings):
    settings.PROVIDER_RETRY_SECONDS = 3600
    fake_provider.fail("remove", *[ProviderError("no answer", transient=True) for _ in range(20)])
    pull_and_join(client, live_call, desktop_api, fake_provider)
    from callpull.actions import RETRY_ATTEMPTS

    assert len(removals(fake_provider)) == RETRY_ATTEMPTS
    assert timeline(live_call, "provider_action_failed") == [
        {"action": "remove", "error": "unreachable", "attempts": RETRY_ATTEMPTS}]


def test_a_dial_that_fails_for_a_while_is_tried_again_and_rings(client, handset_api, line, tablet, tablet_api,
                                                                online, fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    fake_provider.fail("add", transient(502))
    forward(client, sid="CA" + "1" * 32)
    assert fake_provider.kinds() == ["add", "add"]
    leg = CallLeg.objects.get()
    assert (leg.state, leg.provider_call_sid) == ("dialing", fake_provider.sids[str(leg.pk)])
    assert Call.objects.get().state == "forwarded"
    assert timeline(call_id, "provider_action_failed") == []


def test_a_dial_refused_for_good_fails_its_leg_and_the_timeline_says_why(client, handset_api, line, tablet,
                                                                        tablet_api, online, fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    fake_provider.fail("add", ProviderError("bad To", status=400, code=21201))
    forward(client, sid="CA" + "1" * 32)
    assert fake_provider.kinds()[:1] == ["add"] and fake_provider.kinds().count("add") == 1  # never tried again
    assert timeline(call_id, "provider_action_failed") == [
        {"action": "dial", "error": "http_400", "code": 21201, "attempts": 1}]
    assert CallLeg.objects.get().end_reason == "provider_error"


def test_a_retried_dial_whose_first_try_got_through_keeps_its_leg(client, handset_api, line, tablet, tablet_api,
                                                                  online, fake_provider):
    online(tablet[0])
    call_id = report(handset_api, line).json()["call"]["id"]
    tablet_api.post(f"/api/v1/calls/{call_id}/answer")
    fake_provider.fail("add", ProviderError("timed out", transient=True),
                       ProviderError("label taken", status=400, code=provider.LABEL_TAKEN))
    forward(client, sid="CA" + "1" * 32)
    leg = CallLeg.objects.get()
    assert leg.state == "dialing" and timeline(call_id, "provider_action_failed") == []
    conference(client, call_id, "participant-join", label=str(leg.pk), sid="CA" + "5" * 32)
    assert CallLeg.objects.get().provider_call_sid == "CA" + "5" * 32
    assert Call.objects.get().state == "connected"


@pytest.mark.parametrize("error", [
    ProviderError("gone", status=404, code=20404, gone=True),
    ProviderError("not in progress", status=400, code=21220, gone=True),
], ids=["404", "21220"])
def test_hanging_up_a_caller_who_already_hung_up_is_harmless(client, live_call, tablet, fake_provider, caplog,
                                                             error):
    fake_provider.fail("hangup", error)
    caplog.set_level(logging.INFO, logger="callpull.actions")
    tablet_leg = CallLeg.objects.get(device=tablet[0])
    leg_status(client, live_call, tablet_leg.pk, "completed", sid=tablet_leg.provider_call_sid)  # the holder hangs up
    # ("status": is the caller still there? docs/MOVING.md, "Callbacks: order, repeats, lateness")
    assert [kind for kind in fake_provider.kinds() if kind != "status"] == ["hangup"]
    assert Call.objects.get().state == "completed"
    assert timeline(live_call, "provider_action_failed") == []
    said = [record for record in caplog.records if record.name == "callpull.actions" and record.levelno >= logging.INFO
            and "hangup" in record.getMessage()]
    assert [record.levelno for record in said] == [logging.INFO]


def test_removing_a_participant_that_already_left_is_harmless(client, live_call, desktop_api, fake_provider,
                                                              caplog):
    fake_provider.fail("remove", ProviderError("gone", status=404, code=20404, gone=True))
    caplog.set_level(logging.INFO, logger="callpull.actions")
    pull_and_join(client, live_call, desktop_api, fake_provider)
    assert len(removals(fake_provider)) == 1
    assert timeline(live_call, "provider_action_failed") == []
    said = [record for record in caplog.records
            if record.name == "callpull.actions" and "remove" in record.getMessage()]
    assert [record.levelno for record in said] == [logging.INFO]


# The real provider module against the simulator --------------------------------------

@pytest.fixture
def real_provider(settings):
    """provider's SDK client pointed at the bundled simulator (`api_base`)."""
    def point(api_base):
        settings.TWILIO_API_BASE = api_base
        settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT_SID, AUTH_TOKEN
        provider._client.cache_clear()
    yield point
    provider._client.cache_clear()


def add_to(room: str, label: str):
    return real_participant_add(
        conference=room, kind="client", address=f"tablet-{label}", caller_id=SERVER_NUMBER, label=label,
        status_url=PUBLIC_URL + "/telephony/twilio/status", conference_status_url=PUBLIC_URL + "/conference",
        timeout=10)


def test_the_provider_addresses_participants_by_conference_sid_and_a_friendly_name_is_refused(
        sim, real_provider):  # noqa: F811
    real_provider(sim.base_url + "/simulator")
    added = add_to("callpull-walk", "leg-1")  # a create may name the conference
    assert added.conference_sid.startswith("CF") and len(added.conference_sid) == 34
    until(sim, added.call_sid, activity="conference-waiting")

    with pytest.raises(ProviderError) as refused:
        real_participant_remove(conference_sid="callpull-walk", call_sid=added.call_sid)
    assert (refused.value.status, refused.value.code, refused.value.transient) == (404, 20404, False)

    assert real_conference_sid_for("callpull-walk") == added.conference_sid
    assert real_conference_sid_for("callpull-nothing") is None
    real_participant_mute(conference_sid=added.conference_sid, call_sid=added.call_sid)
    real_participant_remove(conference_sid=added.conference_sid, call_sid=added.call_sid)
    with pytest.raises(ProviderError) as again:  # it already left: moot
        real_participant_remove(conference_sid=added.conference_sid, call_sid=added.call_sid)
    assert again.value.gone and not again.value.transient


def test_a_provider_out_of_reach_is_a_transient_failure(real_provider):
    real_provider("http://127.0.0.1:9/simulator")  # discard port: nothing listens
    with pytest.raises(ProviderError) as failed:
        real_participant_remove(conference_sid=OTHER_SID, call_sid="CA" + "1" * 32)
    assert failed.value.transient and not failed.value.gone and failed.value.kind == "unreachable"
