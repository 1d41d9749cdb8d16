"""Signals devices sends for the layers above it (which devices may not import)."""

from django.dispatch import Signal

# Sent on commit with `device`: its token is dead; open sockets must close.
device_revoked = Signal()
