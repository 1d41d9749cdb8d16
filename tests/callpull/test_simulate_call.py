"""`manage.py simulate_call`: how it tells a call's outcome, and its exit status for a real
failure. The whole command against a real server, with a browser tab answering, moving,
hanging up and declining, is played in tests/web/test_walkthrough.py."""

import socket

import pytest
from django.core.management import CommandError, call_command

from callpull.management.commands.simulate_call import LEGITIMATE, how_it_ended, pushes

NAMES = {"tab": "Work laptop", "tablet": "Demo tablet"}.get


def test_every_legitimate_end_is_told_with_who_ended_it():
    def ended(state, reason, *timeline):
        return how_it_ended({"state": state, "end_reason": reason}, list(timeline), NAMES)

    assert ended("completed", "completed", {"event": "connected", "device": "tab"},
                 {"event": "ended", "device": "tab", "detail": {"by": "device"}}) == "completed: hung up on Work laptop"
    assert ended("completed", "completed", {"event": "caller_hung_up"}) == "completed: the caller hung up"
    assert ended("declined", "declined", {"event": "declined", "device": "tab"}) == \
        "declined everywhere on Work laptop"
    assert ended("missed", "no_answer") == "missed (no_answer)"
    assert ended("missed", "caller_hung_up") == "missed (caller_hung_up): the caller hung up first"
    assert ended("answered_on_handset", "answered_on_handset") == "answered on the handset"
    assert ended("failed", "forwarded_call_never_arrived") == "failed (forwarded_call_never_arrived)"
    assert "failed" not in LEGITIMATE and {"completed", "declined", "missed", "answered_on_handset"} == set(LEGITIMATE)


def test_a_sleeping_device_is_reached_only_by_a_push():
    timeline = [{"event": "notification_sent", "device": "sofa",
                 "detail": {"transport": "fcm", "type": "call.ringing"}},
                {"event": "notification_sent", "device": "tablet",
                 "detail": {"transport": "websocket", "type": "call.ringing"}}]
    assert pushes(timeline, "sofa") == "pushed over FCM: call.ringing sent"
    assert pushes(timeline, "tablet").startswith("no FCM push reached it")


def test_a_server_that_is_not_running_is_a_plain_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CommandError, match=r"cannot reach http://127\.0\.0\.1:\d+/.*Is the server running"):
        call_command("simulate_call", base=f"http://127.0.0.1:{port}", state_file=str(tmp_path / "state.json"),
                     timeout=2)
