"""Shapes of lines and account settings on the wire."""

from rest_framework import serializers

from callpull import mmi
from callpull.models import (
    FORWARDING_KINDS,
    AccountSettings,
    CallState,
    ForwardingKind,
    ForwardingState,
    Line,
    Policy,
    PullState,
    forwarding_fields,
)


class LineOutput(serializers.ModelSerializer):
    server_number = serializers.CharField(source="server_number.number")
    forwarding = serializers.SerializerMethodField(help_text="The busy kind (as forwarding_kinds.busy).")
    mmi = serializers.SerializerMethodField(help_text="The busy kind's 3GPP codes (67).")
    forwarding_kinds = serializers.SerializerMethodField(help_text=(
        "{busy, no_answer, unreachable, always}: each {state, target, verified_at}; no_answer also `timer` "
        "(seconds, null when unknown)."))
    codes = serializers.SerializerMethodField(help_text=(
        "{busy, no_answer, unreachable, always, conditional}: {register, interrogate, erase} to dial for this "
        "line's server number on its carrier profile, or null where the profile has none (docs/FORWARDING.md)."))

    class Meta:
        model = Line
        fields = ["id", "number", "server_number", "policy", "fallback_number", "forwarding", "mmi",
                  "carrier_profile", "forwarding_kinds", "codes", "created_at"]

    def get_forwarding(self, line) -> dict:
        return _kind(line, ForwardingKind.BUSY)

    def get_mmi(self, line) -> dict:
        return {"register": mmi.cfb_register(line.server_number.number), "interrogate": mmi.cfb_interrogate(),
                "erase": mmi.cfb_erase()}

    def get_forwarding_kinds(self, line) -> dict:
        kinds = {str(kind): _kind(line, kind) for kind in FORWARDING_KINDS}
        kinds[ForwardingKind.NO_ANSWER]["timer"] = line.no_answer_timer
        return kinds

    def get_codes(self, line) -> dict:
        return mmi.codes(line.server_number.number, profile=line.carrier_profile, timer=line.no_answer_timer)


def _kind(line, kind: str) -> dict:
    state, target, verified_at = (getattr(line, field) for field in forwarding_fields(kind))
    return {"state": state, "target": target or None,
            "verified_at": serializers.DateTimeField().to_representation(verified_at) if verified_at else None}


class LineCreateInput(serializers.Serializer):
    number = serializers.CharField(max_length=32)
    region = serializers.CharField(max_length=2, min_length=2, required=False)


class LineUpdateInput(serializers.Serializer):
    policy = serializers.ChoiceField(choices=Policy.choices, required=False)
    fallback_number = serializers.CharField(max_length=32, required=False, allow_blank=True)
    carrier_profile = serializers.CharField(max_length=32, required=False,
                                            help_text="A profile of callpull.mmi (docs/FORWARDING.md).")


class ForwardingInput(serializers.Serializer):
    # A string checked by the service (not a ChoiceField: its enum would collide with the
    # devices' `kind` in the OpenAPI schema's component names).
    kind = serializers.CharField(max_length=16, default=ForwardingKind.BUSY, help_text=(
        f"One of {', '.join(mmi.CODE_KINDS)}; conditional: busy, no_answer and unreachable at once."))
    state = serializers.ChoiceField(choices=[ForwardingState.ACTIVE, ForwardingState.INACTIVE])
    target = serializers.CharField(max_length=32, required=False, allow_blank=True, allow_null=True)
    timer = serializers.IntegerField(required=False, allow_null=True, min_value=5, max_value=30, help_text=(
        "The no-answer timer in seconds (5 to 30, steps of 5): no_answer and conditional only."))


class AccountOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    transfer_pin_set = serializers.SerializerMethodField()

    class Meta:
        model = AccountSettings
        fields = ["username", "pull_requires_approval", "monitor_after_switch", "transfer_allowlist",
                  "transfer_pin_set"]

    def get_transfer_pin_set(self, account) -> bool:
        return bool(account.transfer_pin_hash)


class AccountUpdateInput(serializers.Serializer):
    pull_requires_approval = serializers.BooleanField(required=False)
    monitor_after_switch = serializers.BooleanField(required=False)
    transfer_allowlist = serializers.ListField(child=serializers.CharField(max_length=32), max_length=50,
                                               required=False)
    transfer_pin = serializers.RegexField(r"^\d{4,12}$", required=False, allow_null=True, allow_blank=True,
                                          write_only=True,
                                          error_messages={"invalid": "A PIN is 4 to 12 digits."})
    password = serializers.CharField(max_length=128, required=False, write_only=True, trim_whitespace=False,
                                     help_text="The account password: needed to change the PIN or allow-list.")
    current_pin = serializers.CharField(max_length=32, required=False, write_only=True, trim_whitespace=False,
                                        help_text="The current transfer PIN, instead of the password.")


class CallReportInput(serializers.Serializer):
    report_id = serializers.UUIDField()
    line = serializers.CharField(max_length=64, help_text="The line's id, or its number.")
    caller = serializers.CharField(max_length=32, allow_null=True, allow_blank=True,
                                   help_text="E.164 or national; null or empty when withheld.")
    caller_name = serializers.CharField(max_length=100, required=False, allow_blank=True, allow_null=True)


class DeclineInput(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["device", "everywhere"], default="device")


class HandsetEventInput(serializers.Serializer):
    event = serializers.ChoiceField(choices=["rejected", "answered", "caller_hung_up", "reject_failed"])


class CallListQuery(serializers.Serializer):
    state = serializers.ChoiceField(choices=CallState.choices, required=False)
    limit = serializers.IntegerField(min_value=1, max_value=200, default=50)


class CallOutput(serializers.Serializer):
    """Documents the shape produced by callpull.representations."""

    id = serializers.UUIDField()
    line = serializers.CharField()
    line_id = serializers.UUIDField()
    caller = serializers.CharField(allow_null=True)
    caller_name = serializers.CharField(allow_null=True)
    state = serializers.ChoiceField(choices=CallState.choices)
    policy = serializers.ChoiceField(choices=Policy.choices)
    forwarding_kind = serializers.CharField(help_text=(
        "busy: reported by the handset; no_answer, unreachable or always: forwarded by the network with no ring "
        "report, the line's only active network kind; network: forwarded by the network, kind unknown."))
    reported_by = serializers.UUIDField(allow_null=True, help_text=(
        "The handset that reported the ring; null for a call the network forwarded with no ring report."))
    answered_by = serializers.UUIDField(allow_null=True)
    held_by = serializers.UUIDField(allow_null=True, help_text="The device carrying the call now.")
    transferred_to = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    end_reason = serializers.CharField(allow_null=True)
    timeline = serializers.ListField(child=serializers.DictField(), required=False)
    devices = serializers.ListField(child=serializers.DictField(), required=False, help_text=(
        "With the timeline: every device the call names, {id, name, kind, removed}, removed ones too."))


class InstructionOutput(serializers.Serializer):
    action = serializers.ChoiceField(choices=["keep_ringing", "reject"])
    reason = serializers.CharField(required=False)


class CallReportOutput(serializers.Serializer):
    call = CallOutput()
    instruction = InstructionOutput()


class PullOutput(serializers.Serializer):
    id = serializers.UUIDField()
    call = serializers.UUIDField()
    state = serializers.ChoiceField(choices=PullState.choices)
    method = serializers.ChoiceField(choices=["app", "dial_in"])
    requested_by = serializers.UUIDField()
    from_device = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField(allow_null=True)


class PullEnvelope(serializers.Serializer):
    pull = PullOutput()


class TransferInput(serializers.Serializer):
    number = serializers.CharField(max_length=32)
    pin = serializers.CharField(max_length=32, trim_whitespace=False)
