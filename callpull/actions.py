"""Provider actions: REST requests to the voice provider about a live call, off the
request thread, tried again while they fail for a while.

Provider REST calls run off the request thread (`run_provider_action`), so a
webhook answers at once and a slow provider never holds a user's request. One
that fails for a while is tried again within its deadline, one that fails for
good is written on the call's timeline, and one about a call already over is
harmless (`provider_request`; docs/MOVING.md, "Provider actions that fail").
Participants are updated and removed under the conference's SID, which Twilio
requires (`Call.conference_sid`, `_conference_sid`). The actions themselves:
`redirect`, `hangup`, `remove`, `mute`, `hold`.
"""

import functools
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from callpull.models import Call, CallLeg
from callpull.statemachine import Step, record
from callpull.telephony import provider
from notifications import metrics

log = logging.getLogger(__name__)

class ThreadRunner:
    """Where provider actions run: a small pool of this worker's own (so a webhook answers at
    once and a slow provider holds no request), and timers for the tries after a failure (a
    request waiting to be tried again holds no pool thread). Unit tests put a runner that runs
    everything at once in its place (`runner`)."""

    def __init__(self, workers: int = 4):
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provider")

    def run(self, fn, *args, **kwargs) -> None:
        def task():
            close_old_connections()
            try:
                fn(*args, **kwargs)
            except Exception:
                log.exception("provider action %s failed", getattr(fn, "__name__", fn))
            finally:
                close_old_connections()

        self.executor.submit(task)

    def later(self, delay: float, fn, *args) -> None:
        timer = threading.Timer(delay, self.run, args=(fn, *args))
        timer.daemon = True
        timer.start()


runner = ThreadRunner()


def run_provider_action(fn, *args, **kwargs) -> None:
    """Run a provider REST action in the background."""
    runner.run(fn, *args, **kwargs)


# A provider request is tried at most this many times (and only while its budget lasts).
RETRY_ATTEMPTS = 6
_CONFERENCE_SID = re.compile(r"CF[0-9a-fA-F]{32}")


def _later(delay: float, fn, *args) -> None:
    """`fn(*args)` on the provider pool after `delay` seconds."""
    runner.later(delay, fn, *args)


def provider_request(action: str, request, *, budget: float, call_id=None, call_sid: str | None = None,
                     moot_when_gone: bool = True, on_failure=None, tries: int = 1, started: float | None = None,
                     waited: float = 0.0) -> None:
    """Make one provider request, `request(elapsed, tries)`, for the call `call_id` (or the
    call or leg whose CallSid is `call_sid`).

    - A transient failure (no answer, a timeout, HTTP 5xx or 429) is tried again after a
      backoff (PROVIDER_RETRY_BACKOFF_SECONDS, doubling), while the next try starts within
      `budget` seconds of the first and at most RETRY_ATTEMPTS times.
    - A request about something already over (the provider answers 404 / 20404, or 21220:
      the call is not in progress) is moot: logged once at INFO, nothing else
      (`moot_when_gone`).
    - Any other failure, or the last transient one, is final: logged, written on the
      call's timeline (`provider_action_failed {action, error, code?, attempts}`), and
      `on_failure(error)` is called."""
    started = time.monotonic() if started is None else started
    elapsed = max(time.monotonic() - started, waited)
    try:
        request(elapsed, tries)
        return
    except provider.ProviderError as exc:
        error = exc
    if error.gone and moot_when_gone:
        log.info("provider %s moot, the provider says it is over (call=%s sid=%s): %s",
                 action, call_id, call_sid, error)
        return
    metrics.provider_error(action)
    delay = settings.PROVIDER_RETRY_BACKOFF_SECONDS * 2 ** (tries - 1)
    if error.transient and tries < RETRY_ATTEMPTS and elapsed + delay <= budget:
        log.warning("provider %s failed (try %d), trying again in %.1f s (call=%s sid=%s): %s",
                    action, tries, delay, call_id, call_sid, error)
        _later(delay, functools.partial(
            provider_request, action, request, budget=budget, call_id=call_id, call_sid=call_sid,
            moot_when_gone=moot_when_gone, on_failure=on_failure, tries=tries + 1, started=started,
            waited=waited + delay))
        return
    log.warning("provider %s failed for good after %d tries (call=%s sid=%s): %s",
                action, tries, call_id, call_sid, error)
    _provider_failed(action, error, tries=tries, call_id=call_id, call_sid=call_sid)
    if on_failure is not None:
        on_failure(error)


def _provider_failed(action: str, error: provider.ProviderError, *, tries: int, call_id, call_sid) -> None:
    if call_id is None and call_sid:
        call_id = (Call.objects.filter(provider_call_sid=call_sid).values_list("pk", flat=True).first()
                   or CallLeg.objects.filter(provider_call_sid=call_sid).values_list("call_id", flat=True).first())
    call = Call.objects.filter(pk=call_id).first() if call_id else None
    if call is None:
        return
    detail = {"action": action, "error": error.kind, "attempts": tries}
    if error.code:
        detail["code"] = error.code
    record(call, now=timezone.now(), step=Step("provider_action_failed", detail=detail))


def conference_sid_learnt(call_id, conference_sid: str | None) -> bool:
    """Keep the provider's SID of the call's conference (from a conference callback or a
    participant just added), once: Twilio addresses participants only under it. True
    when this stored it."""
    if not conference_sid or not _CONFERENCE_SID.fullmatch(conference_sid):
        return False
    return bool(Call.objects.filter(pk=call_id, conference_sid="").update(conference_sid=conference_sid))


def _conference_sid(call_id) -> str | None:
    """The SID of the call's conference: the one learnt, else looked up by its friendly
    name (and kept). None when the provider has no live conference of that name."""
    call = Call.objects.filter(pk=call_id).only("id", "conference_sid").first()
    if call is None:
        return None
    if call.conference_sid:
        return call.conference_sid
    found = provider.conference_sid_for(call.conference_name)
    if found:
        conference_sid_learnt(call_id, found)
    return found


def _participant_request(action: str, call_id, call_sid: str, update) -> None:
    """`update(conference_sid)` on the participant `call_sid` of the call's conference."""
    def request(elapsed: float, tries: int) -> None:
        conference_sid = _conference_sid(call_id)
        if conference_sid is None:
            log.info("provider %s moot, no live conference (call=%s sid=%s)", action, call_id, call_sid)
            return
        update(conference_sid)

    provider_request(action, request, budget=settings.PROVIDER_RETRY_SECONDS, call_id=call_id, call_sid=call_sid)


# The actions --------------------------------------------------------------------

def remove(call_id, sid: str) -> None:
    """Take the participant `sid` out of the call's conference (by the conference's SID)."""
    _participant_request("remove", call_id, sid, lambda conference_sid: provider.participant_remove(
        conference_sid=conference_sid, call_sid=sid))


def mute(call_id, sid: str) -> None:
    _participant_request("mute", call_id, sid, lambda conference_sid: provider.participant_mute(
        conference_sid=conference_sid, call_sid=sid, muted=True))


def hold(call_id, sid: str, hold: bool, hold_url: str | None) -> None:
    _participant_request("hold" if hold else "unhold", call_id, sid, lambda conference_sid: provider.participant_hold(
        conference_sid=conference_sid, call_sid=sid, hold=hold, hold_url=hold_url))


def redirect(sid: str, url: str, call_id=None) -> None:
    """Make the live call `sid` (a caller's, or a leg's) fetch new TwiML from `url`."""
    provider_request("redirect", lambda elapsed, tries: provider.call_redirect(sid, url),
                     budget=settings.PROVIDER_RETRY_SECONDS, call_id=call_id, call_sid=sid)


def hangup(sid: str, call_id=None) -> None:
    """Hang up the live call `sid`; one that already ended is no failure."""
    provider_request("hangup", lambda elapsed, tries: provider.call_hangup(sid),
                     budget=settings.PROVIDER_RETRY_SECONDS, call_id=call_id, call_sid=sid)
