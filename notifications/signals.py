"""Signals notifications sends for callpull (which it may not import)."""

from django.dispatch import Signal

# Sent (in a worker thread) with `device` once its socket is open and joined to its
# groups: whatever is still pending for the device can be sent to it now.
device_connected = Signal()

# Sent (in a worker thread) when a device acknowledged an event, once per event and
# device, with `event_type`, `ref` (the sender's reference, e.g. a call id) and
# `device_id`.
delivery_acked = Signal()
