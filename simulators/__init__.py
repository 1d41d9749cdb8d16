"""Stand-ins for the outside world: the carrier and voice provider (`simulators.telephony`)
and FCM (`simulators.fcm`). Nothing in the product (callpull, notifications, devices)
imports this package; the development entry point mounts it (docs/ARCHITECTURE.md)."""
