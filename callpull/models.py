"""The call workflow's data: server numbers, lines and their forwarding, calls and
their timelines, account settings."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class ServerNumber(models.Model):
    """A number of ours at the voice provider, where carriers forward calls.

    Rows are created from SERVER_NUMBERS; a number removed from that setting
    keeps its lines but gets no new ones.
    """

    number = models.CharField(max_length=20, unique=True)
    active = models.BooleanField(default=True)

    def __str__(self):
        return self.number


class Policy(models.TextChoices):
    ON_ANSWER = "on_answer"
    IMMEDIATE = "immediate"


class ForwardingState(models.TextChoices):
    UNVERIFIED = "unverified"
    ACTIVE = "active"
    INACTIVE = "inactive"
    MISMATCH = "mismatch"


class ForwardingKind(models.TextChoices):
    """When the carrier forwards the line's calls to its server number (3GPP TS 22.030
    service codes 67, 61, 62, 21; docs/FORWARDING.md)."""

    BUSY = "busy"                # the app-driven flow: the handset rejects, the carrier forwards
    NO_ANSWER = "no_answer"      # after the line's timer
    UNREACHABLE = "unreachable"  # handset off or out of coverage
    ALWAYS = "always"            # unconditional: the handset never rings


FORWARDING_KINDS = tuple(ForwardingKind.values)
# The kinds whose forwarded calls arrive with no ring report: a call made on the spot.
NETWORK_KINDS = (ForwardingKind.NO_ANSWER, ForwardingKind.UNREACHABLE, ForwardingKind.ALWAYS)
# A no-answer timer (3GPP TS 22.030 "T"): 5 to 30 seconds in steps of 5.
NO_ANSWER_TIMERS = (5, 10, 15, 20, 25, 30)


def forwarding_fields(kind: str) -> tuple[str, str, str]:
    """The line's (state, target, verified_at) columns of `kind`: the busy kind keeps the
    columns it had before the other kinds came (forwarding_state, …)."""
    prefix = "forwarding" if kind == ForwardingKind.BUSY else kind
    return f"{prefix}_state", f"{prefix}_target", f"{prefix}_verified_at"


def network_forwarding_q(prefix: str = "") -> Q:
    """Lines on which one of the network kinds is active (`prefix`: a relation path)."""
    q = Q()
    for kind in NETWORK_KINDS:
        q |= Q(**{f"{prefix}{forwarding_fields(kind)[0]}": ForwardingState.ACTIVE})
    return q


class Line(models.Model):
    """A handset's own phone number, and the forwarding rules that send its calls to our
    server number: on busy (the app-driven flow, `forwarding_*`), on no answer, when
    unreachable, always (docs/FORWARDING.md)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lines")
    number = models.CharField(max_length=20, unique=True)
    region = models.CharField(max_length=2, blank=True, default="")
    server_number = models.ForeignKey(ServerNumber, on_delete=models.PROTECT, related_name="lines")
    policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.ON_ANSWER)
    forwarding_state = models.CharField(max_length=16, choices=ForwardingState.choices,
                                        default=ForwardingState.UNVERIFIED)
    forwarding_target = models.CharField(max_length=20, blank=True, default="")
    forwarding_verified_at = models.DateTimeField(null=True, blank=True)
    no_answer_state = models.CharField(max_length=16, choices=ForwardingState.choices,
                                       default=ForwardingState.UNVERIFIED)
    no_answer_target = models.CharField(max_length=20, blank=True, default="")
    no_answer_verified_at = models.DateTimeField(null=True, blank=True)
    no_answer_timer = models.PositiveSmallIntegerField(null=True, blank=True,
                                                       help_text="Seconds before the carrier forwards (5 to 30).")
    unreachable_state = models.CharField(max_length=16, choices=ForwardingState.choices,
                                         default=ForwardingState.UNVERIFIED)
    unreachable_target = models.CharField(max_length=20, blank=True, default="")
    unreachable_verified_at = models.DateTimeField(null=True, blank=True)
    always_state = models.CharField(max_length=16, choices=ForwardingState.choices,
                                    default=ForwardingState.UNVERIFIED)
    always_target = models.CharField(max_length=20, blank=True, default="")
    always_verified_at = models.DateTimeField(null=True, blank=True)
    carrier_profile = models.CharField(max_length=32, default="3gpp",
                                       help_text="Whose forwarding codes the line's carrier uses (callpull.mmi).")
    fallback_number = models.CharField(max_length=20, blank=True, default="",
                                       help_text="Where an unmatched forwarded call goes, e.g. voicemail.")
    registered_by = models.ForeignKey("devices.Device", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at"]

    def __str__(self):
        return self.number

    def forwarding_state_of(self, kind: str) -> str:
        return getattr(self, forwarding_fields(kind)[0])

    def network_kinds_active(self) -> list[str]:
        """The network kinds (no_answer, unreachable, always) that are active."""
        return [str(kind) for kind in NETWORK_KINDS if self.forwarding_state_of(kind) == ForwardingState.ACTIVE]


class AccountSettings(models.Model):
    """Per-user choices about moving live calls."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="callpull_settings")
    pull_requires_approval = models.BooleanField(default=False)
    monitor_after_switch = models.BooleanField(default=False)
    transfer_allowlist = models.JSONField(default=list, blank=True)
    transfer_pin_hash = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        verbose_name = "account settings"
        verbose_name_plural = "account settings"


class CallState(models.TextChoices):
    RINGING = "ringing"
    ANSWERING = "answering"
    FORWARDED = "forwarded"
    CONNECTED = "connected"
    COMPLETED = "completed"
    MISSED = "missed"
    DECLINED = "declined"
    ANSWERED_ON_HANDSET = "answered_on_handset"
    FAILED = "failed"


TERMINAL_STATES = frozenset({CallState.COMPLETED, CallState.MISSED, CallState.DECLINED,
                             CallState.ANSWERED_ON_HANDSET, CallState.FAILED})


class Call(models.Model):
    """One call to a line, from the handset's ring report to its end.

    `expires_at` is the deadline of the current state (ring window, wait for the
    forwarded call, …); the sweeper ends calls whose deadline passed.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="calls")
    line = models.ForeignKey(Line, on_delete=models.CASCADE, related_name="calls")
    report_id = models.UUIDField()
    reported_by = models.ForeignKey("devices.Device", null=True, on_delete=models.SET_NULL, related_name="+")
    caller = models.CharField(max_length=20, blank=True, default="", help_text="E.164; empty when withheld")
    caller_name = models.CharField(max_length=100, blank=True, default="")
    state = models.CharField(max_length=24, choices=CallState.choices, default=CallState.RINGING)
    policy = models.CharField(max_length=16, choices=Policy.choices)
    forwarding_kind = models.CharField(
        max_length=16, default="busy",
        help_text="busy: a call a handset reported; for a call the network forwarded with no ring report, the "
                  "line's only active network kind, else `network` (the webhook does not say why).")
    keep_ringing_reason = models.CharField(max_length=40, blank=True, default="")
    answered_by = models.ForeignKey("devices.Device", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    reject_sent_at = models.DateTimeField(null=True, blank=True)
    provider_call_sid = models.CharField(max_length=64, null=True, blank=True, unique=True)
    conference_sid = models.CharField(
        max_length=34, blank=True, default="",
        help_text="The provider's SID of the call's conference (CF…), learnt from its callbacks or looked up by "
                  "friendly name: Twilio addresses participants by conference SID only.")
    held_by = models.ForeignKey("devices.Device", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                help_text="The device whose leg carries the conversation now.")
    transferred_to = models.CharField(max_length=20, blank=True, default="")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["user", "report_id"], name="call_report_once")]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            # The sweeper's scan: only calls still in flight carry a deadline.
            models.Index(fields=["expires_at"], condition=Q(expires_at__isnull=False), name="call_deadline_idx"),
            models.Index(fields=["line", "state", "-created_at"]),
        ]

    def __str__(self):
        return f"call {self.pk} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def conference_name(self) -> str:
        """The provider conference that anchors the caller's leg."""
        return f"callpull-{self.pk}"


class TimelineEntry(models.Model):
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="timeline")
    at = models.DateTimeField()
    event = models.CharField(max_length=40)
    device = models.ForeignKey("devices.Device", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]


class LegRole(models.TextChoices):
    DEVICE = "device"        # carries the conversation
    MONITOR = "monitor"      # the previous device, muted, after a switch (monitor_after_switch)
    TRANSFER = "transfer"    # a final number the call was handed to


class LegState(models.TextChoices):
    DIALING = "dialing"
    JOINED = "joined"
    LEFT = "left"
    FAILED = "failed"


class CallLeg(models.Model):
    """One participant of the call's conference other than the caller: a device
    (dialled by the provider, or dialled in) or a transfer target."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="legs")
    device = models.ForeignKey("devices.Device", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    number = models.CharField(max_length=20, blank=True, default="", help_text="For transfer legs.")
    role = models.CharField(max_length=16, choices=LegRole.choices, default=LegRole.DEVICE)
    state = models.CharField(max_length=16, choices=LegState.choices, default=LegState.DIALING)
    provider_call_sid = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField()
    joined_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        ordering = ["created_at"]


class PullState(models.TextChoices):
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"       # connecting the new device
    DENIED = "denied"
    COMPLETED = "completed"
    FAILED = "failed"


PULL_FINAL_STATES = frozenset({PullState.DENIED, PullState.COMPLETED, PullState.FAILED})


class Pull(models.Model):
    """A request to move a live call to another device of the same user."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="pulls")
    requested_by = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    from_device = models.ForeignKey("devices.Device", null=True, on_delete=models.SET_NULL, related_name="+")
    method = models.CharField(max_length=16, default="app", help_text="app, or dial_in (by calling the server number)")
    state = models.CharField(max_length=24, choices=PullState.choices)
    leg = models.ForeignKey(CallLeg, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one pull in flight per call.
            models.UniqueConstraint(fields=["call"], condition=Q(state__in=["awaiting_approval", "approved"]),
                                    name="one_open_pull_per_call"),
        ]
        indexes = [models.Index(fields=["expires_at"], condition=Q(expires_at__isnull=False),
                                name="pull_deadline_idx")]
