"""Shapes of lines and account settings on the wire."""

from rest_framework import serializers

from callpull import mmi
from callpull.models import AccountSettings, ForwardingState, Line, Policy


class LineOutput(serializers.ModelSerializer):
    server_number = serializers.CharField(source="server_number.number")
    forwarding = serializers.SerializerMethodField()
    mmi = serializers.SerializerMethodField()

    class Meta:
        model = Line
        fields = ["id", "number", "server_number", "policy", "fallback_number", "forwarding", "mmi", "created_at"]

    def get_forwarding(self, line) -> dict:
        return {"state": line.forwarding_state, "target": line.forwarding_target or None,
                "verified_at": serializers.DateTimeField().to_representation(line.forwarding_verified_at)
                if line.forwarding_verified_at else None}

    def get_mmi(self, line) -> dict:
        return {"register": mmi.cfb_register(line.server_number.number), "interrogate": mmi.cfb_interrogate(),
                "erase": mmi.cfb_erase()}


class LineCreateInput(serializers.Serializer):
    number = serializers.CharField(max_length=32)
    region = serializers.CharField(max_length=2, min_length=2, required=False)


class LineUpdateInput(serializers.Serializer):
    policy = serializers.ChoiceField(choices=Policy.choices, required=False)
    fallback_number = serializers.CharField(max_length=32, required=False, allow_blank=True)


class ForwardingInput(serializers.Serializer):
    state = serializers.ChoiceField(choices=[ForwardingState.ACTIVE, ForwardingState.INACTIVE])
    target = serializers.CharField(max_length=32, required=False, allow_blank=True, allow_null=True)


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
