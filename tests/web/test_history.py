"""Call history: each call's timeline drawn on a time axis from the handset's report."""

import re
import time
from datetime import datetime

import pytest
from playwright.sync_api import expect

from tests.e2e.support import eventually
from tests.web.support import household

pytestmark = pytest.mark.e2e


def offset_ms(text: str) -> float:
    """"+12 ms", "+3.5 ms", "+1.25 s" → milliseconds."""
    match = re.fullmatch(r"\+([\d.]+) (ms|s)", text.strip())
    assert match, text
    return float(match[1]) * (1000 if match[2] == "s" else 1)


def test_the_history_shows_a_calls_timeline_on_a_time_axis(open_page, web_server):
    home = household(web_server)
    companion = open_page()
    page = companion.page
    me = companion.join(home)

    ring = home.ring(caller_name="Ada Lovelace")
    companion.incoming(ring.id).get_by_role("button", name="Answer").click()
    expect(companion.incoming(ring.id)).to_contain_text("Answered here")
    home.handset_rejects(ring)
    home.wait_state(ring.id, "connected")
    time.sleep(1)  # a second of conversation, so the talking phase shows on the axis
    home.caller_hangs_up(ring)
    final = home.wait_state(ring.id, "completed")

    item = page.locator(f'.history-item[data-call-id="{ring.id}"]')
    expect(item).to_contain_text("Completed")
    toggle = item.get_by_role("button")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")

    rows = item.locator(".tl-item")
    expect(rows.first).to_be_visible()
    # Every step of the API's timeline, in its order, with its offset from `reported`. (Acks
    # of the call.ended notices may still land: the page reloads what it shows on events.)
    def same_steps():
        timeline = home.get_call(ring.id)["timeline"]
        shown_events = rows.evaluate_all("rows => rows.map(row => row.dataset.event)")
        assert shown_events == [entry["event"] for entry in timeline]
        return timeline, shown_events
    final["timeline"], page_events = eventually(same_steps, timeout=5)
    reported = datetime.fromisoformat(final["timeline"][0]["at"].replace("Z", "+00:00"))
    for index, entry in enumerate(final["timeline"]):
        expected = (datetime.fromisoformat(entry["at"].replace("Z", "+00:00")) - reported).total_seconds() * 1000
        shown = offset_ms(rows.nth(index).locator(".tl-ms").inner_text())
        assert abs(shown - expected) <= max(1.0, expected * 0.01), (entry["event"], shown, expected)

    # The steps a user needs to see where the seconds went, per device.
    def row(event: str, text: str):
        return item.locator(f'.tl-item[data-event="{event}"]', has_text=text).first

    expect(row("reported", "Handset reported the call")).to_be_visible()
    expect(row("notification_sent", "Ring sent over WebSocket")).to_contain_text("this browser")
    expect(row("notification_delivered", "Ring delivered")).to_contain_text("this browser")
    expect(row("answered", "Answered")).to_contain_text("this browser")
    expect(row("reject_instructed", "Handset told to reject")).to_be_visible()
    expect(row("handset_rejected", "Handset rejected the call")).to_be_visible()
    expect(row("forwarded_call_arrived", "Forwarded call reached the server number")).to_be_visible()
    expect(row("connected", "Connected")).to_be_visible()
    assert {"ended", "caller_hung_up"} & set(page_events), page_events
    assert any(entry["event"] == "notification_delivered" and entry.get("device") == me.id
               for entry in final["timeline"]), "the page acked call.ringing"

    # The axis: a lane for the call and one for this browser, and the three phases.
    chart = item.locator(".tl-chart")
    expect(chart.locator(".tl-lane .tl-lane-name", has_text="Call")).to_have_count(1)
    expect(chart.locator(".tl-lane .tl-lane-name", has_text="this browser")).to_have_count(1)
    # Each phase a band on the axis, named in full in the legend beneath (never cut to "Con").
    legend = item.locator(".tl-legend")
    for kind, phase in (("ringing", "Ringing"), ("connecting", "Connecting"), ("talking", "Talking")):
        expect(chart.locator(f".tl-phase-{kind}")).to_have_count(1)
        label = legend.locator(f'.tl-legend-item[data-phase="{kind}"] .tl-phase-label')
        expect(label).to_have_text(phase)
        assert label.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), f"{phase} is not cut"
    talking = chart.locator(".tl-phase-talking").bounding_box()
    axis = chart.locator(".tl-axis .tl-track").bounding_box()
    assert talking["width"] > axis["width"] * 0.2, "a second of talk is a visible share of the axis"
    item.scroll_into_view_if_needed()
    companion.shot("history-timeline")
