"""Voice access tokens: what lets a device's voice SDK register its `client` identity with
the provider and take the calls dialled to it (Twilio's Access Tokens,
https://www.twilio.com/docs/iam/access-tokens, minted in callpull/telephony/provider.py).

A tablet, desktop or web device has a voice identity from registration
(devices/models.py `voice_identity`); a handset has none and gets no token. The token
carries a Voice grant allowing incoming calls, the push credential of the device's
platform (so the SDK's own incoming-call push reaches a sleeping app; none for the web)
and, when TWILIO_TWIML_APP_SID is set, the TwiML application of outgoing calls. It lives
VOICE_TOKEN_TTL_SECONDS; the SDK fetches a new one before it expires. Fetching is
rate-limited per device (`RATE_LIMITS["voice_token"]`).
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from callpull.telephony import provider
from devices import ratelimit
from devices.errors import ServiceError
from devices.models import Device, Platform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceToken:
    token: str
    identity: str
    expires_at: datetime


def push_credential_for(platform: str) -> str | None:
    """The push credential (CR…) of the device's platform; None for the web and others."""
    return {Platform.ANDROID: settings.TWILIO_PUSH_CREDENTIAL_SID_ANDROID,
            Platform.IOS: settings.TWILIO_PUSH_CREDENTIAL_SID_IOS}.get(platform) or None


def voice_token_issue(*, device: Device, now: datetime) -> VoiceToken:
    """A new access token for `device`'s voice identity.

    403 `no_voice_identity` for a handset (it takes calls on its own line); 503
    `voice_tokens_not_configured` without TWILIO_API_KEY_SID / TWILIO_API_KEY_SECRET;
    429 past the per-device rate limit."""
    if not device.voice_identity:
        raise ServiceError("no_voice_identity", "Only a tablet, desktop or web device has a voice identity; "
                                                "a handset takes calls on its own line.")
    if not (settings.TWILIO_API_KEY_SID and settings.TWILIO_API_KEY_SECRET):
        raise ServiceError("voice_tokens_not_configured", "This server mints no voice tokens: "
                                                          "TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET are not set.")
    ratelimit.check_and_hit("voice_token", f"device:{device.pk}")
    issued_at = int(now.timestamp())
    ttl = settings.VOICE_TOKEN_TTL_SECONDS
    token = provider.voice_access_token(identity=device.voice_identity, issued_at=issued_at, ttl_seconds=ttl,
                                        push_credential_sid=push_credential_for(device.platform),
                                        outgoing_application_sid=settings.TWILIO_TWIML_APP_SID)
    log.info("voice token issued device=%s ttl=%s", device.pk, ttl)
    return VoiceToken(token=token, identity=device.voice_identity,
                      expires_at=datetime.fromtimestamp(issued_at + ttl, tz=UTC))
