"""The bundled carrier and voice-provider simulator.

It plays the two outside parties of a call so the whole flow runs on one
machine: a GSM carrier with call forwarding (3GPP TS 22.030 MMI codes: on busy 67, on
no answer 61 with its timer, when unreachable 62, always 21, the groups 004 and 002) and
simultaneous ring, and a Twilio-compatible voice provider that posts signed webhooks to the backend,
follows the TwiML it answers and takes Twilio-shaped REST updates of live calls.

It talks to the backend only over HTTP, never through the ORM, and never
imports the twilio SDK: its signature code is an independent implementation
that cross-checks the product's adapter. See docs/SIMULATOR.md.

Modules: `config` (what it needs to know), `signature`, `twiml` (the subset it
follows), `outbound` (every HTTP request it makes), `common` (errors, steps,
times shared by the next three), `legs` (a call or leg, a simulated device's behaviour, a
<Gather> collecting keys), `provider` (calls and the TwiML engine), `conference`
(conferences and their participants), `carrier`
(forwarding codes and handset calls), `app` (the ASGI application and its routes).
"""
