"""Twilio's published API description, reduced to what the simulator serves.

`twilio_api_v2010.subset.json` is written by `extract.py` (see docs/SIMULATOR.md,
"The API description") and read by `simulators.telephony.strict`.
"""
