"""`account.changed`: every device of the user hears of a sensitive change, over
WebSocket and FCM (issue 12: a change made with a stolen token is seen)."""

import pytest

from devices.models import Device
from notifications import fcm
from notifications.models import Delivery
from tests.callpull.conftest import Socket
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_a_new_pin_is_announced_to_every_device_of_the_user(user, tablet, tablet_api, handset, stranger,
                                                            django_capture_on_commit_callbacks, settings):
    phone, desk, mallory = Socket(handset[0]), Socket(tablet[0]), Socket(stranger[0])
    with django_capture_on_commit_callbacks(execute=True):
        response = tablet_api.patch("/api/v1/account", {"transfer_pin": "2468", "password": PASSWORD},
                                    format="json")
    assert response.status_code == 200
    entry = tablet_api.get("/api/v1/account/audit-log").json()[0]
    for socket in (phone, desk):  # the device that made the change hears it too
        frames = [f for f in socket.frames() if f["type"] == "account.changed"]
        assert len(frames) == 1
        assert frames[0]["change"]["action"] == "transfer_pin_changed"
        assert frames[0]["change"]["id"] == entry["id"]
        assert frames[0]["change"]["device"] == {"id": str(tablet[0].pk), "name": "Tablet", "kind": "tablet"}
        assert "2468" not in str(frames[0]) and PASSWORD not in str(frames[0])
    assert "account.changed" not in mallory.types()
    assert Delivery.objects.filter(event_type="account.changed").count() == 2


def test_a_refused_change_is_not_announced(tablet, tablet_api, handset, django_capture_on_commit_callbacks):
    phone = Socket(handset[0])
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = tablet_api.patch("/api/v1/account", {"transfer_pin": "0000"}, format="json")
    assert response.status_code == 403
    assert callbacks == [] and "account.changed" not in phone.types()


def test_the_device_that_made_the_change_gets_no_push(user, tablet, tablet_api, handset,
                                                      django_capture_on_commit_callbacks, settings, monkeypatch):
    """The actor knows from its answer; FCM pushes go to the user's other devices only."""
    Device.objects.filter(pk__in=[tablet[0].pk, handset[0].pk]).update(fcm_token="tok")
    pushed = []
    monkeypatch.setattr(fcm, "enabled", lambda: True)
    monkeypatch.setattr(fcm, "send_many", lambda pushes, on_result: pushed.extend(pushes))
    with django_capture_on_commit_callbacks(execute=True):
        assert tablet_api.patch("/api/v1/account", {"transfer_pin": "2468", "password": PASSWORD},
                                format="json").status_code == 200
    assert [push.device_id for push in pushed] == [str(handset[0].pk)]
    assert Device.objects.get(pk=tablet[0].pk).fcm_token == "tok"  # only the event's copy went without
