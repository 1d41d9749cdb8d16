"""Signals notifications sends for callpull (which it may not import)."""

from django.dispatch import Signal

# Sent (in a worker thread) with `device` once its socket is open and joined to its
# groups: whatever is still pending for the device can be sent to it now.
device_connected = Signal()

# Sent (in a worker thread) when devices acknowledged events, with `receipts`: a list
# of notifications.fanout.Receipt (event_id, device_id, event_type, ref: the sender's
# reference, e.g. a call id), each new receipt once. Acks are recorded in batches.
deliveries_acked = Signal()
