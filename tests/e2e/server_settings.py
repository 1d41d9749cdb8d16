"""Django settings of the servers the end-to-end and browser tests start (support.Environment
.server_env): the product's settings, callpull/settings.py, read from the same environment
variables, with one difference: passwords are hashed with one round of a fast hasher instead
of Django's PBKDF2 with a million rounds.

Every e2e test signs a user up and registers devices with that user's password (and a browser
test signs in): each is one PBKDF2 hash, ~0.5 s of CPU on an idle core and over 1 s in CI,
where both passes share two cores; a test with a household of four devices spent more CPU on
hashing than on its call. What the hasher is does not change any behaviour these tests look at
(the API answers the same; the unit suite, tests/conftest.py, swaps the hasher the same way).
The product's own choice of hasher is Django's default, which nothing here replaces.
"""

from callpull.settings import *  # noqa: F403  (the product's settings, then the one override)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
