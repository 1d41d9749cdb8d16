"""Signals devices sends for the layers above it (which devices may not import)."""

from django.dispatch import Signal

# Sent on commit with `device`: its token is dead; open sockets must close.
device_revoked = Signal()

# Sent on commit with `entry` (a devices.models.AuditEntry): a sensitive change to the
# user's account was made; every device of the user should hear of it.
account_changed = Signal()

# Sent (synchronously) with `user` and `pin` when a sensitive change offers the account's
# transfer PIN as proof. The layer that keeps the PIN answers: None when the user has no
# PIN set, else whether `pin` is it (a `pin` of None is never it).
transfer_pin_check = Signal()
