"""What the provider and its conferences share: errors, steps, times, sids."""

from __future__ import annotations

import asyncio
import email.utils
import uuid
from dataclasses import dataclass
from datetime import datetime

from simulators.telephony import twiml

API_VERSION = "2010-04-01"


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def new_conference_sid() -> str:
    return "CF" + uuid.uuid4().hex


def rfc2822(moment: datetime | None) -> str | None:
    return email.utils.format_datetime(moment) if moment else None


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


class SimulatorError(Exception):
    """A request the simulator refuses; `status` and `code` shape the HTTP answer."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass(frozen=True)
class Callback:
    url: str
    method: str
    events: tuple[str, ...]


@dataclass(frozen=True)
class Fetch:
    """Continue the call with the TwiML at `url`."""

    url: str
    method: str = "POST"
    label: str = "redirect"
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Inline:
    """Continue the call with this TwiML (REST `Twiml=`, or a dial action's answer)."""

    document: twiml.Document
    url: str | None  # what relative URLs in it resolve against


class _Stop:
    def __repr__(self):
        return "STOP"


STOP = _Stop()  # the call is over
CONTINUE = object()  # go on with the next verb


async def wait_any(events: list[asyncio.Event], timeout: float | None = None) -> None:
    """Until one of `events` is set, or `timeout` seconds (None: no limit)."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
