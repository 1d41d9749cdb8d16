"""Matching a forwarded call to a pending ring without leaning on ForwardedFrom
(docs/CALLS.md, "Matching a forwarded call"), and server numbers of their own for
lines while the pool lasts. The provider's REST side is the fake in conftest; the
same rules run end to end in tests/e2e/test_forwarding_match.py."""

import logging
import threading
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from django.db import connections
from django.utils import timezone

from callpull import services as line_services
from callpull import startup
from callpull.models import Call, Line
from callpull.sweeper import calls_sweep
from tests.callpull.conftest import forward, report
from tests.conftest import make_device, make_user

pytestmark = pytest.mark.django_db
SID = "CA" + "3" * 32
SERVER = "+15555550100"
CALLER = "+15550009999"
OTHER_LINE = "+15557654321"


def xml(response):
    assert response.status_code == 200, response.content
    return ElementTree.fromstring(response.content)


def connected_to_conference(root) -> str | None:
    room = root.find("Dial/Conference")
    return room.text if room is not None else None


@pytest.fixture
def other_line(stranger):
    """Another user's line on the same (only) server number."""
    line, _ = line_services.line_register(device=stranger[0], number=OTHER_LINE, region=None, now=timezone.now())
    assert line.server_number.number == SERVER
    return line_services.line_forwarding_confirm(line=line, state="active", target=SERVER, now=timezone.now())


def pending(call_id) -> tuple[str, str | None]:
    call = Call.objects.get(pk=call_id)
    return call.state, call.provider_call_sid


# ForwardedFrom never spoils a match ----------------------------------------------

@pytest.mark.parametrize("forwarded_from", [SERVER, "+15550000000"], ids=["the_server_number", "an_unknown_number"])
def test_a_forwarded_from_that_names_no_line_is_ignored(client, handset_api, line, forwarded_from):
    call_id = report(handset_api, line).json()["call"]["id"]
    root = xml(forward(client, sid=SID, forwarded_from=forwarded_from))
    assert connected_to_conference(root) == f"callpull-{call_id}"
    assert pending(call_id) == ("forwarded", SID)


def test_a_forwarded_from_naming_a_line_narrows_the_match_to_it(client, handset_api, line, stranger, other_line):
    ours = report(handset_api, line).json()["call"]["id"]
    theirs = report(stranger[1], other_line).json()["call"]["id"]  # newer, same caller
    assert connected_to_conference(xml(forward(client, sid=SID, forwarded_from=line.number))) == f"callpull-{ours}"
    assert pending(theirs) == ("ringing", None)


def test_a_forwarded_from_naming_a_line_without_a_pending_call_takes_no_other_lines_call(
        client, handset_api, line, stranger, other_line):
    line.fallback_number = "+15550007777"
    line.save()
    theirs = report(stranger[1], other_line).json()["call"]["id"]
    root = xml(forward(client, sid=SID, forwarded_from=line.number))
    assert root.find("Dial").text == "+15550007777"
    assert pending(theirs) == ("ringing", None)


def test_a_call_forwarded_as_from_the_server_number_is_a_dial_in_when_it_matches_nothing(client, line):
    root = xml(forward(client, sid=SID, caller="+15550004444", forwarded_from=SERVER))
    assert root.find("Gather") is not None and "Enter your PIN" in root.find("Gather/Say").text


# Ambiguity goes to neither ---------------------------------------------------------

@pytest.mark.parametrize("forwarded_from", [None, SERVER, "+15550000000"], ids=["absent", "server", "unknown"])
def test_two_users_pending_calls_from_one_caller_go_to_neither(client, handset_api, line, stranger, other_line,
                                                               caplog, forwarded_from):
    ours = report(handset_api, line).json()["call"]["id"]
    theirs = report(stranger[1], other_line).json()["call"]["id"]
    with caplog.at_level(logging.WARNING, logger="callpull.telephony.services"):
        root = xml(forward(client, sid=SID, forwarded_from=forwarded_from))
    assert root.find("Dial") is None and root.find("Gather") is None
    assert root.find("Say").text.startswith("Sorry") and root.find("Hangup") is not None
    assert pending(ours) == ("ringing", None) and pending(theirs) == ("ringing", None)
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    message = warning.getMessage()
    assert "2 pending calls of 2 users" in message and "…9999" in message
    assert "5550009999" not in message and "5555550100" not in message
    # Each call then ends as its own rules say: nobody answered within the ring window.
    calls_sweep(now=timezone.now() + timedelta(hours=1))
    assert pending(ours)[0] == "missed" and pending(theirs)[0] == "missed"


def test_an_ambiguous_call_goes_to_the_fallback_all_its_lines_share(client, handset_api, line, stranger, other_line):
    Line.objects.filter(pk__in=[line.pk, other_line.pk]).update(fallback_number="+15550007777")
    report(handset_api, line)
    report(stranger[1], other_line)
    assert xml(forward(client, sid=SID, forwarded_from=None)).find("Dial").text == "+15550007777"


def test_an_ambiguous_call_whose_lines_have_other_fallbacks_hears_a_goodbye(client, handset_api, line, stranger,
                                                                           other_line):
    Line.objects.filter(pk=line.pk).update(fallback_number="+15550007777")
    report(handset_api, line)
    report(stranger[1], other_line)
    root = xml(forward(client, sid=SID, forwarded_from=None))
    assert root.find("Dial") is None and root.find("Hangup") is not None


def test_a_retried_webhook_keeps_its_first_answer_when_the_match_turned_ambiguous(
        client, handset_api, line, stranger, other_line):
    ours = report(handset_api, line).json()["call"]["id"]
    first = forward(client, sid=SID, forwarded_from="+15550000000").content
    report(stranger[1], other_line)  # the same caller now rings another user too
    report(handset_api, line)  # and this line again
    assert forward(client, sid=SID, forwarded_from="+15550000000").content == first
    assert pending(ours) == ("forwarded", SID)


def test_a_caller_matches_only_its_own_calls_not_another_lines_call_without_caller_id(
        client, handset_api, line, stranger, other_line):
    theirs = report(stranger[1], other_line, caller="").json()["call"]["id"]
    root = xml(forward(client, sid=SID, forwarded_from=None))  # from CALLER: a dial-in, as far as we know
    assert root.find("Gather") is not None
    assert pending(theirs) == ("ringing", None)


def test_more_pending_calls_than_are_read_go_to_nobody(client, handset_api, line):
    for _ in range(21):
        report(handset_api, line)
    root = xml(forward(client, sid=SID))
    assert root.find("Dial") is None and root.find("Hangup") is not None
    assert not Call.objects.filter(provider_call_sid=SID).exists()


# Withheld callers ------------------------------------------------------------------

def test_a_withheld_caller_matches_the_only_pending_call_without_caller_id(client, handset_api, line, stranger,
                                                                           other_line):
    theirs = report(stranger[1], other_line, caller="").json()["call"]["id"]
    report(handset_api, line)  # newer, from CALLER: a withheld From is not CALLER
    root = xml(forward(client, sid=SID, caller="anonymous", forwarded_from=None))
    assert connected_to_conference(root) == f"callpull-{theirs}"


def test_a_withheld_caller_does_not_match_a_call_reported_with_a_caller_id(client, handset_api, line):
    call_id = report(handset_api, line).json()["call"]["id"]
    root = xml(forward(client, sid=SID, caller="anonymous", forwarded_from=None))
    assert root.find("Dial") is None and root.find("Hangup") is not None
    assert pending(call_id) == ("ringing", None)


@pytest.mark.parametrize("same_user", [True, False])
def test_a_withheld_caller_with_two_pending_calls_without_caller_id_goes_to_neither(
        client, handset_api, line, stranger, other_line, same_user):
    first = report(handset_api, line, caller="").json()["call"]["id"]
    second = report(handset_api if same_user else stranger[1], line if same_user else other_line,
                    caller="").json()["call"]["id"]
    root = xml(forward(client, sid=SID, caller="anonymous", forwarded_from=None))
    assert root.find("Dial") is None and root.find("Hangup") is not None
    assert pending(first) == ("ringing", None) and pending(second) == ("ringing", None)


def test_an_unmatched_call_without_forwarded_from_goes_to_the_fallback_of_the_only_line_on_its_number(client, line):
    line.fallback_number = "+15550007777"
    line.save()
    root = xml(forward(client, sid=SID, caller="anonymous", forwarded_from=None))
    assert root.find("Dial").text == "+15550007777"


# Server numbers of their own --------------------------------------------------------

POOL = ["+15555550100", "+15555550101", "+15555550102"]


def _register(number):
    handset, _ = make_device(make_user(), kind="handset")
    return line_services.line_register(device=handset, number=number, region=None, now=timezone.now())[0]


def test_lines_get_a_server_number_of_their_own_while_the_pool_lasts(settings, caplog):
    settings.SERVER_NUMBERS = POOL
    with caplog.at_level(logging.WARNING, logger="callpull.services"):
        first = [_register(f"+1555123400{i}").server_number.number for i in range(3)]
        assert not caplog.records
        shared = _register("+15551234009").server_number.number
    assert sorted(first) == POOL and shared == POOL[0]
    [warning] = caplog.records
    assert "shares +15555550100 with 1 other line" in warning.getMessage()
    assert startup.server_numbers() == ("server numbers: 4 lines, 2 share a number (3 in SERVER_NUMBERS)", 2)


def test_the_start_up_summary_says_how_many_lines_share_a_number(settings, caplog):
    settings.SERVER_NUMBERS = POOL[:1]
    for i in range(2):
        _register(f"+1555123400{i}")
    with caplog.at_level(logging.INFO, logger="callpull"):
        startup.announce_server_numbers()
    [record] = [r for r in caplog.records if "server numbers:" in r.getMessage()]
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING, "  server numbers: 2 lines, 2 share a number (1 in SERVER_NUMBERS)")


@pytest.mark.django_db(transaction=True)
def test_lines_registered_at_once_get_numbers_of_their_own(settings, monkeypatch):
    """The first registration stops right after picking its number and lets the second run
    meanwhile (for up to a second): picking outside the line's transaction, both took
    the same free number."""
    settings.SERVER_NUMBERS = POOL[:2]
    real = line_services.server_number_pick
    second_done = threading.Event()

    def pick():
        picked = real()
        if threading.current_thread().name == "first":
            threading.Thread(target=run, args=("+15551234002", second_done), name="second").start()
            second_done.wait(timeout=1.0)
        return picked

    lines = {}

    def run(number, done=None):
        try:
            lines[number] = _register(number).server_number.number
        finally:
            connections.close_all()
            if done is not None:
                done.set()

    monkeypatch.setattr(line_services, "server_number_pick", pick)
    first = threading.Thread(target=run, args=("+15551234001",), name="first")
    first.start()
    first.join(10)
    assert second_done.wait(10)
    assert sorted(lines.values()) == POOL[:2]
